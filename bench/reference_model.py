"""The reference tool's network (CoverHunterMPS ``src/model.py`` with its conformer), re-enacted for the training
benchmark so the reference side runs the reference's own computation rather than the product's module.

Written from a description of what the reference computes, not from its code. Parameter names and shapes are
the reference checkpoint's (``tests/fixtures/reference/checkpoint_layout.tsv``), so one state dict loads into
this network, into ``csi_model.model.CoverHunter`` and into a reference ``g_`` file alike.

What the reference does, and so what this does:

- input: BatchNorm1d over the F bins of ``[B, T, F]`` (``_global_cmvn``), statistics over every frame, padding
  included (the reference pads short chunks with −100 and passes no lengths).
- encoder: two unpadded 3×3 stride-2 Conv2d + ReLU (``embed.conv``), a linear map of ``D·F''`` to ``D``
  (``embed.out.0``); the result scaled by √D, with dropout 0.1 on it and, separately, on the sinusoidal table rows
  0..L-1 (a fixed 5000-row table; longer inputs fail). Each block, pre-norm and residual: ½·macaron feed-forward
  (Linear, SiLU, dropout, Linear), relative-position self-attention, convolution module, ½·feed-forward, then a
  final LayerNorm; residual branches get dropout 0.1. After the blocks, ``after_norm``.
- attention: scores ``((q + u)·kᵀ + (q + v)·(W_pos p)ᵀ) / √d_k`` per head, **no relative shift** (the position
  term scores each key's absolute index), softmax, no attention dropout (rate 0), ``linear_out``. The reference builds
  full-length masks (it always passes every frame as valid), so every mask it applies is all-true and is left out.
- convolution module: pointwise Conv1d to 2D channels, GLU, depthwise Conv1d (kernel 15, zero padding 7),
  BatchNorm1d, SiLU, pointwise Conv1d.
- optional ``_embed_lo`` Linear when the encoder width differs from the embedding width.
- pooling: per-channel attentive statistics over all L frames: plain mean and std (variance clamped at 1e-12
  before the root) appended to every frame, Linear(3C→C), tanh, kernel-1 Conv1d, softmax over time, weighted
  mean ⊕ weighted std, Linear(2C→E) without bias: the embedding.
- heads: the training loss sees ``logits = _ce_layer(_bottleneck(embedding))`` (BN-neck with a frozen bias,
  classifier without bias); the centres (``_center_loss.centers``) always exist, whatever the centre weight.

Shape letters: B batch, T input frames, F bins, L encoder frames, D encoder width, E embedding width, H heads,
K classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csi_model.model import ModelConfig

TABLE_ROWS = 5000  # the reference's fixed positional table; it refuses L + 0 ≥ this


class FeedForward(nn.Module):
    def __init__(self, d: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w_1, self.w_2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(F.silu(self.w_1(x))))  # [B, L, D]


class RelativeAttention(nn.Module):
    """Multi-head attention with content bias u and position bias v, without the relative shift."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.h, self.d_k = heads, d // heads
        for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
            setattr(self, name, nn.Linear(d, d))
        self.linear_pos = nn.Linear(d, d, bias=False)
        self.pos_bias_u = nn.Parameter(nn.init.xavier_uniform_(torch.empty(heads, self.d_k)))
        self.pos_bias_v = nn.Parameter(nn.init.xavier_uniform_(torch.empty(heads, self.d_k)))

    def heads_first(self, x: Tensor) -> Tensor:
        return x.reshape(x.size(0), x.size(1), self.h, self.d_k).permute(0, 2, 1, 3)  # [B, H, L, d_k]

    def forward(self, x: Tensor, table: Tensor) -> Tensor:
        q = self.heads_first(self.linear_q(x))
        k, v = self.heads_first(self.linear_k(x)), self.heads_first(self.linear_v(x))
        p = self.heads_first(self.linear_pos(table))  # [1, H, L, d_k]
        u, w = self.pos_bias_u[None, :, None, :], self.pos_bias_v[None, :, None, :]
        scores = (torch.matmul(q + u, k.transpose(2, 3)) + torch.matmul(q + w, p.transpose(2, 3))) / math.sqrt(self.d_k)
        out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, H, L, d_k]
        return self.linear_out(out.permute(0, 2, 1, 3).reshape(x.shape))


class ConvModule(nn.Module):
    def __init__(self, d: int, kernel: int) -> None:
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(d, 2 * d, 1)
        self.depthwise_conv = nn.Conv1d(d, d, kernel, padding=(kernel - 1) // 2, groups=d)
        self.norm = nn.BatchNorm1d(d)
        self.pointwise_conv2 = nn.Conv1d(d, d, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)  # [B, D, L]
        return self.pointwise_conv2(F.silu(self.norm(self.depthwise_conv(y)))).transpose(1, 2)  # [B, L, D]


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.self_attn = RelativeAttention(d, cfg.heads)
        self.feed_forward = FeedForward(d, cfg.ff_dim, cfg.dropout)
        self.feed_forward_macaron = FeedForward(d, cfg.ff_dim, cfg.dropout)
        self.conv_module = ConvModule(d, cfg.conv_kernel)
        for name in ("norm_ff", "norm_mha", "norm_ff_macaron", "norm_conv", "norm_final"):
            setattr(self, name, nn.LayerNorm(d, eps=1e-5))
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, table: Tensor) -> Tensor:
        x = x + 0.5 * self.dropout(self.feed_forward_macaron(self.norm_ff_macaron(x)))
        x = x + self.dropout(self.self_attn(self.norm_mha(x), table))
        x = x + self.dropout(self.conv_module(self.norm_conv(x)))
        x = x + 0.5 * self.dropout(self.feed_forward(self.norm_ff(x)))
        return self.norm_final(x)


class Subsampling(nn.Module):
    """``[B, T, F]`` -> ``[B, L, D]`` with L = ⌊(⌊(T−1)/2⌋ − 1)/2⌋, then √D scaling and the table rows."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.conv = nn.Sequential(nn.Conv2d(1, d, 3, 2), nn.ReLU(), nn.Conv2d(d, d, 3, 2), nn.ReLU())
        self.out = nn.Sequential(nn.Linear(d * (((cfg.input_dim - 1) // 2 - 1) // 2), d))
        self.dropout = nn.Dropout(cfg.dropout)
        position = torch.arange(TABLE_ROWS, dtype=torch.float32)[:, None]
        rate = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(10000.0) / d))
        table = torch.stack([torch.sin(position * rate), torch.cos(position * rate)], dim=-1).reshape(TABLE_ROWS, d)
        self.register_buffer("table", table, persistent=False)  # even columns sin, odd cos; not in checkpoints

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.conv(x[:, None])  # [B, D, L, F'']
        b, d, length, f = y.shape
        if length >= TABLE_ROWS:
            raise ValueError(f"{length} encoder frames: the reference's positional table has {TABLE_ROWS} rows")
        y = self.out(y.permute(0, 2, 1, 3).reshape(b, length, d * f))
        return self.dropout(y * math.sqrt(d)), self.dropout(self.table[None, :length])


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = Subsampling(cfg)
        self.encoders = nn.ModuleList(Block(cfg) for _ in range(cfg.num_blocks))
        self.after_norm = nn.LayerNorm(cfg.d_model, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        x, table = self.embed(x)
        for block in self.encoders:
            x = block(x, table)
        return self.after_norm(x)  # [B, L, D]


class XavierLinear(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear_layer = nn.Linear(n_in, n_out)
        nn.init.xavier_uniform_(self.linear_layer.weight)


class XavierConv(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 1)
        nn.init.xavier_uniform_(self.conv.weight)


class StatisticsPooling(nn.Module):
    """``[B, L, C]`` -> ``[B, E]``: attentive mean ⊕ std over every frame."""

    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self._linear = XavierLinear(3 * channels, channels)
        self._conv = XavierConv(channels)
        self._final_layer = nn.Linear(2 * channels, out, bias=False)

    @staticmethod
    def moments(x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Weighted mean and std over the last axis of ``[B, C, L]``; ``weights`` sum to 1 along it."""
        mean = (weights * x).sum(2)
        return mean, ((weights * (x - mean[..., None]) ** 2).sum(2).clamp(min=1e-12)).sqrt()  # [B, C] each

    def forward(self, x: Tensor) -> Tensor:
        x = x.transpose(1, 2)  # [B, C, L]
        mean, std = self.moments(x, torch.full_like(x[:, :1], 1.0 / x.size(2)))
        context = torch.cat([x, mean[..., None].expand_as(x), std[..., None].expand_as(x)], dim=1)  # [B, 3C, L]
        hidden = torch.tanh(self._linear.linear_layer(context.transpose(1, 2))).transpose(1, 2)
        weights = torch.softmax(self._conv.conv(hidden), dim=2)  # [B, C, L]
        return self._final_layer(torch.cat(self.moments(x, weights), dim=1))


class Centres(nn.Module):
    def __init__(self, classes: int, dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(classes, dim))


class ReferenceNetwork(nn.Module):
    """The reference's network for ``cfg``'s sizes; ``forward`` is what its training loss sees.

    The reference fixes 4 heads, kernel 15 and dropout 0.1 (``ModelConfig``'s defaults); other values only serve
    tiny test networks. ``cfg.with_centres`` is ignored: the reference always builds the centres."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self._global_cmvn = nn.BatchNorm1d(cfg.input_dim)
        self._encoder = Encoder(cfg)
        self._embed_lo = nn.Linear(cfg.d_model, cfg.embed_dim) if cfg.d_model != cfg.embed_dim else None
        self._bottleneck = nn.BatchNorm1d(cfg.embed_dim)
        self._bottleneck.bias.requires_grad_(False)
        self._pool_layer = StatisticsPooling(cfg.embed_dim, cfg.embed_dim)
        self._ce_layer = nn.Linear(cfg.embed_dim, cfg.num_classes, bias=False)
        self._center_loss = Centres(cfg.num_classes, cfg.embed_dim)

    @property
    def centres(self) -> Tensor:
        return self._center_loss.centers  # [K, E]

    def embed(self, x: Tensor) -> Tensor:
        """``[B, T, F]`` float32 -> ``[B, E]``: the reference's ``forward``."""
        if x.dtype != torch.float32:
            raise TypeError(f"the reference network takes float32 input, got {x.dtype}")
        h = self._encoder(self._global_cmvn(x.transpose(1, 2)).transpose(1, 2))
        return self._pool_layer(h if self._embed_lo is None else self._embed_lo(h))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """-> (embedding [B, E], logits [B, K] through the BN-neck), as the reference's loss computes them."""
        embedding = self.embed(x)
        return embedding, self._ce_layer(self._bottleneck(embedding))
