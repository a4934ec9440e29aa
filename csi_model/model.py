"""The CoverHunter embedding model (arXiv 2306.09025): CQT frames -> Conformer -> attentive pooling -> embedding.

Blocks appear in the order data flows through them. Attribute names follow the reference implementation's
state_dict (`_global_cmvn`, `_encoder.encoders.N.self_attn.linear_q`, ...) so a CoverHunterMPS `g_` checkpoint
loads unchanged; the arithmetic is the reference's, including relative-position attention without `rel_shift`.

Beyond the reference: every block takes a padding mask (`lengths`), so padded frames never reach the attention
keys, the depthwise convolution, the pooling or the batch statistics of the two frame-level BatchNorms; and the
positional table is a buffer that follows the model's device and grows on demand.

Shape letters: B batch, T pooled input frames, F frequency bins, L encoder frames (≈ T/4), D model width,
E embedding width, H heads, K classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from csi_model.checkpoint import CENTRES_KEY, CLASSIFIER_KEY

if TYPE_CHECKING:
    from csi_model.hparams import TrainingHParams


@dataclass(frozen=True)
class ModelConfig:
    """Architecture sizes; the defaults are the reference's shipped configuration."""

    input_dim: int = 96  # CQT bins F
    embed_dim: int = 128  # embedding width E
    d_model: int = 128  # Conformer width D (hparam `encoder.output_dims`)
    num_blocks: int = 6
    ff_dim: int = 256  # feed-forward hidden width (hparam `encoder.attention_dim`)
    heads: int = 4
    conv_kernel: int = 15
    dropout: float = 0.1
    num_classes: int = 30000  # classifier outputs K (hparam `foc.output_dims`)
    with_centres: bool = True  # centre vectors for the center loss

    def __post_init__(self) -> None:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by heads {self.heads}")
        if self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd to keep the length, got {self.conv_kernel}")
        if self.input_dim < 7:
            raise ValueError(f"input_dim must be at least 7 for the ×4 subsampling, got {self.input_dim}")

    @classmethod
    def from_hparams(cls, hp: TrainingHParams, num_classes: int) -> ModelConfig:
        """`num_classes` (the training data's number of works) is used when `foc.output_dims` is unset.

        Centres are only built when the center loss is on (the reference always carried 30000 of them)."""
        return cls(
            input_dim=hp.input_dim,
            embed_dim=hp.embed_dim,
            d_model=hp.encoder.output_dims,
            num_blocks=hp.encoder.num_blocks,
            ff_dim=hp.encoder.attention_dim,
            num_classes=hp.foc.output_dims if hp.foc.output_dims is not None else num_classes,
            with_centres=hp.center.weight > 0,
        )


_SHAPE_OF = {  # config field -> (tensor name, dimension whose size it is)
    "input_dim": ("_global_cmvn.weight", 0),
    "d_model": ("_encoder.embed.conv.0.weight", 0),
    "ff_dim": ("_encoder.encoders.0.feed_forward.w_1.weight", 0),
    "heads": ("_encoder.encoders.0.self_attn.pos_bias_u", 0),
    "conv_kernel": ("_encoder.encoders.0.conv_module.depthwise_conv.weight", -1),
    "embed_dim": ("_bottleneck.weight", 0),
    "num_classes": (CLASSIFIER_KEY, 0),
}
_BLOCK_KEY = "_encoder.encoders."


def config_from_state(state: Mapping[str, Tensor]) -> tuple[ModelConfig, list[str]]:
    """The architecture a state dict (a g_ file's ``generator``) was saved from, as far as its tensor shapes say.

    Returns the config and the fields read from the shapes; every other field keeps the reference default
    (``dropout`` never shows in a shape). Centres are present exactly when the file holds them."""
    found: dict[str, object] = {}
    for name, (key, dim) in _SHAPE_OF.items():
        if key in state and state[key].dim() > 0:
            found[name] = int(state[key].shape[dim])
    blocks = {k[len(_BLOCK_KEY):].split(".", 1)[0] for k in state if k.startswith(_BLOCK_KEY)}
    if blocks and all(b.isdigit() for b in blocks):
        found["num_blocks"] = max(int(b) for b in blocks) + 1
    found["with_centres"] = CENTRES_KEY in state
    return ModelConfig(**found), sorted(found)


def padding_mask(lengths: Tensor | None, max_len: int) -> Tensor | None:
    """[B] valid counts -> [B, max_len] bool, True on real frames; None stays None (nothing padded)."""
    if lengths is None:
        return None
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over [B, C, L] whose training statistics come from real frames only.

    The reference pads short chunks with −100 and lets those frames into the batch mean and variance (and so
    into the running statistics used at inference). Same parameters and buffers as nn.BatchNorm1d."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if mask is None or not self.training:
            return super().forward(x)
        x = x.float()  # statistics in float32 also under bf16/fp16 autocast, as nn.BatchNorm1d keeps them
        valid = mask[:, None, :].to(x.dtype)  # [B, 1, L]
        count = valid.sum()
        mean = (x * valid).sum(dim=(0, 2)) / count  # [C]
        var = ((x - mean[:, None]).pow(2) * valid).sum(dim=(0, 2)) / count  # [C], biased as in BatchNorm
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.item()
            self.running_mean.lerp_(mean.detach(), momentum)
            self.running_var.lerp_(var.detach() * count / (count - 1).clamp(min=1), momentum)  # unbiased
        x = (x - mean[:, None]) * torch.rsqrt(var[:, None] + self.eps)
        return x * self.weight[:, None] + self.bias[:, None]


class InputNorm(MaskedBatchNorm1d):
    """BatchNorm over frequency bins: a learned, running-statistics CMVN of the CQT."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return super().forward(x.transpose(1, 2), mask).transpose(1, 2)  # [B, T, F] -> [B, T, F]


class Conv2dSubsampling4(nn.Module):
    """Two stride-2 3×3 convolutions cut time (and frequency) by 4 before the quadratic-cost attention."""

    def __init__(self, input_dim: int, d_model: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, d_model, 3, 2), nn.ReLU(), nn.Conv2d(d_model, d_model, 3, 2), nn.ReLU()
        )
        self.out = nn.Sequential(nn.Linear(d_model * self.output_length(input_dim), d_model))

    @staticmethod
    def output_length(n: int | Tensor) -> int | Tensor:
        """Frames (or bins) left after the two unpadded stride-2 convolutions; valid outputs only see valid input."""
        return ((n - 1) // 2 - 1) // 2

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x.unsqueeze(1))  # [B, T, F] -> [B, 1, T, F] -> [B, D, L, F'']
        b, d, length, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, length, d * f))  # [B, L, D·F''] -> [B, L, D]


class RelativePositionalEncoding(nn.Module):
    """Scales the input by √D and supplies the sinusoidal table rows 0..L-1 for the attention's position term."""

    def __init__(self, d_model: int, dropout: float, initial_len: int = 5000) -> None:
        super().__init__()
        self.d_model = d_model
        self.dropout = nn.Dropout(dropout)
        # Not persistent: reference checkpoints carry no table, and it is a pure function of the length.
        self.register_buffer("table", self.sinusoids(initial_len, d_model), persistent=False)

    @staticmethod
    def sinusoids(length: int, d_model: int) -> Tensor:
        position = torch.arange(length, dtype=torch.float32)[:, None]  # [L, 1]
        inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        table = torch.zeros(length, d_model)
        table[:, 0::2] = torch.sin(position * inv_freq)
        table[:, 1::2] = torch.cos(position * inv_freq)
        return table  # [L, D]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        length = x.size(1)
        if length > self.table.size(0):  # grow once, on the table's own device, instead of failing past 5000
            self.table = self.sinusoids(2 * length, self.d_model).to(self.table.device)
        pos = self.table[:length].to(x.dtype).unsqueeze(0)  # [1, L, D]
        return self.dropout(x * math.sqrt(self.d_model)), self.dropout(pos)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(d_model, ff_dim)
        self.activation = nn.SiLU()
        self.dropout = nn.Dropout(dropout)
        self.w_2 = nn.Linear(ff_dim, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_2(self.dropout(self.activation(self.w_1(x))))  # [B, L, D] -> [B, L, ff] -> [B, L, D]


class RelPositionMultiHeadedAttention(nn.Module):
    """Self-attention with learned content (u) and position (v) biases: ((q+u)kᵀ + (q+v)pᵀ)/√d_k.

    As in the reference there is no relative shift, so the position term scores each key's absolute index;
    keeping that makes reference weights compute the same function."""

    def __init__(self, d_model: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.d_k = d_model // heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def split_heads(self, x: Tensor) -> Tensor:
        return x.view(x.size(0), x.size(1), self.heads, self.d_k).transpose(1, 2)  # [B, L, D] -> [B, H, L, d_k]

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor | None) -> Tensor:
        q = self.linear_q(x).view(x.size(0), x.size(1), self.heads, self.d_k)  # [B, L, H, d_k]
        k, v = self.split_heads(self.linear_k(x)), self.split_heads(self.linear_v(x))  # [B, H, L, d_k]
        p = self.split_heads(self.linear_pos(pos))  # [1, H, L, d_k]
        content = (q + self.pos_bias_u).transpose(1, 2) @ k.transpose(-2, -1)  # [B, H, L, L]
        position = (q + self.pos_bias_v).transpose(1, 2) @ p.transpose(-2, -1)  # [B, H, L, L]
        scores = (content + position) / math.sqrt(self.d_k)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))  # padded keys get no weight
        context = scores.softmax(dim=-1) @ v  # [B, H, L, d_k]
        return self.linear_out(context.transpose(1, 2).reshape(x.shape))  # [B, L, D]


class ConvolutionModule(nn.Module):
    """Pointwise conv + GLU, depthwise conv over time, BatchNorm, SiLU, pointwise conv: local context."""

    def __init__(self, d_model: int, kernel: int) -> None:
        super().__init__()
        self.pointwise_conv1 = nn.Conv1d(d_model, 2 * d_model, 1)
        self.depthwise_conv = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.norm = MaskedBatchNorm1d(d_model)
        self.activation = nn.SiLU()
        self.pointwise_conv2 = nn.Conv1d(d_model, d_model, 1)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = F.glu(self.pointwise_conv1(x.transpose(1, 2)), dim=1)  # [B, D, L] -> [B, 2D, L] -> [B, D, L]
        if mask is not None:  # padded frames must look like the zero padding of the depthwise conv
            x = x.masked_fill(~mask[:, None, :], 0.0)
        x = self.activation(self.norm(self.depthwise_conv(x), mask))  # [B, D, L]
        return self.pointwise_conv2(x).transpose(1, 2)  # [B, L, D]


class ConformerBlock(nn.Module):
    """Macaron FF (½), self-attention, convolution, FF (½), each pre-normed and residual; then a final norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.feed_forward_macaron = FeedForward(d, cfg.ff_dim, cfg.dropout)
        self.self_attn = RelPositionMultiHeadedAttention(d, cfg.heads)
        self.conv_module = ConvolutionModule(d, cfg.conv_kernel)
        self.feed_forward = FeedForward(d, cfg.ff_dim, cfg.dropout)
        self.norm_ff_macaron = nn.LayerNorm(d)
        self.norm_mha = nn.LayerNorm(d)
        self.norm_conv = nn.LayerNorm(d)
        self.norm_ff = nn.LayerNorm(d)
        self.norm_final = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor | None) -> Tensor:  # [B, L, D] throughout
        x = x + 0.5 * self.dropout(self.feed_forward_macaron(self.norm_ff_macaron(x)))
        x = x + self.dropout(self.self_attn(self.norm_mha(x), pos, mask))
        x = x + self.dropout(self.conv_module(self.norm_conv(x), mask))
        x = x + 0.5 * self.dropout(self.feed_forward(self.norm_ff(x)))
        return self.norm_final(x)


class ConformerEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = Conv2dSubsampling4(cfg.input_dim, cfg.d_model)
        self.pos_enc = RelativePositionalEncoding(cfg.d_model, cfg.dropout)
        self.encoders = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.num_blocks))
        self.after_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = self.embed(x)  # [B, T, F] -> [B, L, D]
        if mask is not None:  # keep padded states finite and inert whatever garbage the padding held
            x = x.masked_fill(~mask[..., None], 0.0)
        x, pos = self.pos_enc(x)  # [B, L, D], [1, L, D]
        for block in self.encoders:
            x = block(x, pos, mask)
        return self.after_norm(x)  # [B, L, D]


class XavierLinear(nn.Module):
    """Linear layer with Xavier-uniform weights (the pooling's attention MLP)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_layer = nn.Linear(in_dim, out_dim)
        nn.init.xavier_uniform_(self.linear_layer.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_layer(x)


class XavierPointwiseConv(nn.Module):
    """Kernel-1 Conv1d with Xavier-uniform weights (the pooling's per-channel attention scores)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 1)
        nn.init.xavier_uniform_(self.conv.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class AttentiveStatisticsPooling(nn.Module):
    """Per-channel attention over time, conditioned on global mean/std, then weighted mean ⊕ std -> embedding.

    This turns a variable-length encoding into one vector; masked frames get zero attention and do not enter
    the global statistics."""

    eps = 1e-12

    def __init__(self, channels: int, out_dim: int) -> None:
        super().__init__()
        self._linear = XavierLinear(3 * channels, channels)
        self._conv = XavierPointwiseConv(channels)
        self._final_layer = nn.Linear(2 * channels, out_dim, bias=False)

    def statistics(self, h: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """Weighted mean and std over time; `weights` sum to 1 along the last axis."""
        mean = (weights * h).sum(-1, keepdim=True)  # [B, C, 1]
        var = (weights * (h - mean).pow(2)).sum(-1, keepdim=True)
        return mean, var.clamp(min=self.eps).sqrt()

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        h = x.transpose(1, 2)  # [B, L, C] -> [B, C, L]
        valid = torch.ones_like(h[:, :1]) if mask is None else mask[:, None, :].to(h.dtype)  # [B, 1, L]
        h = h * valid
        mean, std = self.statistics(h, valid / valid.sum(-1, keepdim=True))
        context = torch.cat([h, mean.expand_as(h), std.expand_as(h)], dim=1)  # [B, 3C, L]
        scores = self._conv(torch.tanh(self._linear(context.transpose(1, 2)).transpose(1, 2)))  # [B, C, L]
        scores = scores.masked_fill(valid == 0, float("-inf"))
        mean, std = self.statistics(h, scores.softmax(dim=-1))  # [B, C, 1] each
        return self._final_layer(torch.cat([mean, std], dim=1).squeeze(-1))  # [B, 2C] -> [B, E]


class ClassCentres(nn.Module):
    """One learnable centre per class, pulled towards its embeddings by the center loss."""

    def __init__(self, num_classes: int, embed_dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, embed_dim))


class CoverHunter(nn.Module):
    """Embedding network plus the training heads (BN-neck, classifier, centres)."""

    #: Shortest input (pooled frames) that leaves one encoder frame after the ×4 subsampling.
    min_input_frames = 7

    @classmethod
    def min_raw_frames(cls, mean_size: int) -> int:
        """Shortest track (raw CQT frames) the model accepts when ``mean_size`` frames are pooled into one: it
        pools to ``min_input_frames`` (the last group may be partial). The one rule training, embedding,
        evaluation and identification share."""
        return (cls.min_input_frames - 1) * mean_size + 1

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self._global_cmvn = InputNorm(cfg.input_dim)
        self._encoder = ConformerEncoder(cfg)
        self._embed_lo = nn.Linear(cfg.d_model, cfg.embed_dim) if cfg.d_model != cfg.embed_dim else None
        self._pool_layer = AttentiveStatisticsPooling(cfg.embed_dim, cfg.embed_dim)
        self._bottleneck = nn.BatchNorm1d(cfg.embed_dim)
        self._bottleneck.bias.requires_grad_(False)  # BN-neck: scale only, no shift
        self._ce_layer = nn.Linear(cfg.embed_dim, cfg.num_classes, bias=False)
        self._center_loss = ClassCentres(cfg.num_classes, cfg.embed_dim) if cfg.with_centres else None

    @property
    def centres(self) -> Tensor | None:
        return None if self._center_loss is None else self._center_loss.centers

    def embed(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """[B, T, F] pooled CQT frames (+ [B] valid frame counts) -> [B, E] embedding e, before the BN-neck."""
        lengths = None if lengths is None else lengths.to(x.device)
        shortest = x.size(1) if lengths is None else int(lengths.min())
        if shortest < self.min_input_frames:
            raise ValueError(f"an item has {shortest} frames, the model needs at least {self.min_input_frames}")
        encoder_lengths = None if lengths is None else Conv2dSubsampling4.output_length(lengths)
        x = self._global_cmvn(x, padding_mask(lengths, x.size(1)))  # [B, T, F]
        mask = padding_mask(encoder_lengths, Conv2dSubsampling4.output_length(x.size(1)))  # [B, L] or None
        h = self._encoder(x, mask)  # [B, L, D]
        if self._embed_lo is not None:
            h = self._embed_lo(h)  # [B, L, D] -> [B, L, E]
        return self._pool_layer(h, mask)  # [B, E]

    def classify(self, embedding: Tensor) -> Tensor:
        return self._ce_layer(self._bottleneck(embedding))  # [B, E] -> [B, K]

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """-> (embedding [B, E], logits [B, K]); the logits go through the BN-neck (the reference skipped it
        at inference)."""
        embedding = self.embed(x, lengths)
        return embedding, self.classify(embedding)


def parameter_counts(model: CoverHunter) -> dict[str, int]:
    """Parameter totals per part; `embedding_network` is what inference needs (2,230,720 by default)."""

    def count(module: nn.Module | None) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    total = count(model)
    heads = {
        "bn_neck": count(model._bottleneck),
        "classifier": count(model._ce_layer),
        "centres": count(model._center_loss),
    }
    return {"embedding_network": total - sum(heads.values()), **heads, "total": total}
