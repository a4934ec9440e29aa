"""Augmentation of training chunks: tempo in the feature domain (resampling a batch's time axis on the training
device), pitch roll and random erase (before the tempo resampling).

Pitch roll first, then random erase, each behind its own probability per chunk. :class:`SpecAugment` works on a
whole batch ``[B, T, F]`` at once (the ``default`` and ``flex_melody`` rolls and the erase are array operations over
the batch; only ``low_melody``, whose noise fill depends on each chunk's content, loops over the chunks it rolls).
Only the first ``length`` frames of a chunk are real content: padding frames are never shifted, filled or erased.
Randomness comes solely from the passed generator (no global seeding, no folders created), so the training run's
seed decides every draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from csi_model.hparams import RandomEraseHParams, RollPitchHParams, SpecAugHParams

# The reference's fill for vacated bins in flex_melody and the scale of the random-erase value.
ERASE_FLOOR_DB = -128.0


def roll_default(valid: np.ndarray, shift_num: int, rng: np.random.Generator) -> np.ndarray:
    """Shift by −shift_num, 0 or +shift_num bins with wrap-around (an octave transposition for 12)."""
    return roll_batch(valid[None], rng.integers(-1, 2, size=1) * shift_num, None)[0]


def roll_low_melody(valid: np.ndarray, shift_num: int, rng: np.random.Generator) -> np.ndarray:
    """Shift up 1…shift_num bins without wrap and fill the vacated low bins with plausible noise.

    The fill follows each frame's reference band just above the shift (mean μ_t, std σ_t), bounded to
    [μ_t − σ_t, μ_t + σ_t], fades toward the quietest bin's level, and blends into mirrored content at the seam.
    """
    n_frames, n_bins = valid.shape
    shift = int(rng.integers(1, shift_num + 1))
    if shift >= n_bins or n_frames == 0:
        return valid
    target = valid.mean(axis=0).min()
    out = np.empty_like(valid)
    out[:, shift:] = valid[:, : n_bins - shift]
    band = out[:, shift : shift + 6 + int(rng.integers(0, 3))]  # [T, b]
    mu, sigma = band.mean(axis=1, keepdims=True), band.std(axis=1, keepdims=True)  # [T, 1]
    fill = np.maximum(rng.normal(mu, 0.5 * sigma, size=(n_frames, shift)), mu - sigma)  # [T, s]
    if shift > 2:
        weight = 0.5 * (1 - np.cos(np.pi * np.arange(shift) / (shift - 1)))  # [s], 0 at bin 0 → 1 at the seam
        fill -= (mu - target) * (1 - weight)
    fill = np.minimum(fill, mu + sigma)
    n_blend = min(5, shift)
    blend = np.linspace(0.1, 0.6, n_blend)  # rising toward the seam at bin ``shift``
    seam = np.arange(shift - n_blend, shift)  # the top filled bins
    mirror = np.minimum(2 * shift - 1 - seam, n_bins - 1)  # bin shift−1−k mirrors bin shift+k
    fill[:, seam] = (1 - blend) * fill[:, seam] + blend * out[:, mirror]
    out[:, :shift] = fill
    return out


def roll_flex_melody(valid: np.ndarray, shift_num: int, rng: np.random.Generator) -> np.ndarray:
    """Shift around the tonal centre without wrap, staying inside the bins; vacated bins get −128."""
    shifts = flex_melody_shifts(valid[None], np.ones((1, len(valid)), dtype=bool), shift_num, rng)
    return roll_batch(valid[None], shifts, ERASE_FLOOR_DB)[0]


def random_erase(valid: np.ndarray, hp: RandomEraseHParams, rng: np.random.Generator) -> np.ndarray:
    """Set ``erase_num`` full-size blocks to one shared value U·(−128); block starts are drawn so blocks fit."""
    return erase_batch(valid[None], np.array([len(valid)]), hp, rng)[0]


def roll_batch(feats: np.ndarray, shifts: np.ndarray, fill: float | None) -> np.ndarray:
    """Shift each chunk of ``feats [B, T, F]`` by its own ``shifts [B]`` bins: with wrap-around when ``fill`` is
    None, else vacated bins get ``fill``."""
    n_bins = feats.shape[2]
    source = np.arange(n_bins)[None, :] - shifts[:, None]  # [B, F]: the bin each output bin comes from
    out = np.take_along_axis(feats, (source % n_bins)[:, None, :], axis=2)
    if fill is not None:
        out = np.where(((source >= 0) & (source < n_bins))[:, None, :], out, np.float32(fill))
    return out


def flex_melody_shifts(feats: np.ndarray, valid: np.ndarray, shift_num: int, rng: np.random.Generator
                       ) -> np.ndarray:
    """Per chunk, a shift around its tonal centre (the mean bin of its values above its own 90th percentile,
    linear interpolation as ``np.percentile``) that stays inside the bins; ``valid [B, T]`` marks real frames."""
    n_batch, _, n_bins = feats.shape
    flat = np.where(valid[..., None], feats, np.inf).reshape(n_batch, -1)
    ranked = np.sort(flat, axis=1)
    count = valid.sum(axis=1) * n_bins  # [B] real values
    position = 0.9 * np.maximum(count - 1, 0)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, np.maximum(count - 1, 0))
    lo_v = np.take_along_axis(ranked, low[:, None], 1)[:, 0]
    hi_v = np.take_along_axis(ranked, high[:, None], 1)[:, 0]
    threshold = lo_v + (hi_v - lo_v) * (position - low)
    loud = (feats > threshold[:, None, None]) & valid[..., None]  # [B, T, F]
    n_loud = loud.sum(axis=(1, 2))
    bin_sum = (loud.sum(axis=1) * np.arange(n_bins)[None, :]).sum(axis=1)
    centre = np.where(n_loud > 0, bin_sum // np.maximum(n_loud, 1), n_bins // 2)
    return rng.integers(-np.minimum(shift_num, centre), np.minimum(shift_num, n_bins - centre) + 1)


def erase_batch(feats: np.ndarray, lengths: np.ndarray, hp: RandomEraseHParams, rng: np.random.Generator
                ) -> np.ndarray:
    """Per chunk, ``erase_num`` blocks of ``region_size`` of its valid frames × bins set to one value U·(−128) of
    its own; block starts are drawn so blocks fit inside the valid frames. ``[B, T, F] -> [B, T, F]``."""
    n_batch, n_frames, n_bins = feats.shape
    width = (lengths * hp.region_size[0]).astype(np.int64)[:, None]  # [B, 1]
    height = int(n_bins * hp.region_size[1])
    value = (rng.random(n_batch) * ERASE_FLOOR_DB).astype(np.float32)
    t0 = np.floor(rng.random((n_batch, hp.erase_num)) * (lengths[:, None] - width + 1)).astype(np.int64)  # [B, n]
    f0 = rng.integers(0, n_bins - height + 1, size=(n_batch, hp.erase_num))
    t, f = np.arange(n_frames), np.arange(n_bins)
    rows = (t >= t0[..., None]) & (t < (t0 + width)[..., None])  # [B, n, T]
    cols = (f >= f0[..., None]) & (f < (f0 + height)[..., None])  # [B, n, F]
    erased = np.einsum("bnt,bnf->btf", rows.astype(np.uint8), cols.astype(np.uint8)) > 0
    return np.where(erased, value[:, None, None], feats)


class SpecAugment:
    """Pitch roll then random erase over a batch; :meth:`batch` is the ``ChunkDataset`` augment."""

    def __init__(self, hp: SpecAugHParams) -> None:
        self.roll: RollPitchHParams | None = hp.roll_pitch
        self.erase: RandomEraseHParams | None = hp.random_erase

    def __call__(self, feat: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
        """One chunk ``[T, F]`` with ``length`` valid frames: a batch of one."""
        return self.batch(feat[None], np.array([length]), rng)[0]

    def batch(self, feats: np.ndarray, lengths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augmented copy of ``feats [B, T, F]`` whose chunk ``b`` has ``lengths[b]`` valid frames."""
        valid = np.arange(feats.shape[1])[None, :] < lengths[:, None]  # [B, T]
        out = feats
        if self.roll is not None:
            chosen = rng.random(len(feats)) < self.roll.prob
            out = np.where((chosen[:, None] & valid)[..., None], self._roll(out, valid, chosen, rng), out)
        if self.erase is not None:
            chosen = rng.random(len(feats)) < self.erase.prob
            out = np.where(chosen[:, None, None], erase_batch(out, lengths, self.erase, rng), out)
        return out.astype(np.float32, copy=out is feats)

    def _roll(self, feats: np.ndarray, valid: np.ndarray, chosen: np.ndarray, rng: np.random.Generator
              ) -> np.ndarray:
        method, shift_num = self.roll.method, self.roll.shift_num
        if method == "default":
            return roll_batch(feats, rng.integers(-1, 2, size=len(feats)) * shift_num, None)
        if method == "flex_melody":
            return roll_batch(feats, flex_melody_shifts(feats, valid, shift_num, rng), ERASE_FLOOR_DB)
        out = feats.copy()  # low_melody: the fill depends on each chunk's content
        for b in np.flatnonzero(chosen):
            n = int(valid[b].sum())
            out[b, :n] = roll_low_melody(feats[b, :n], shift_num, rng)
        return out


# ---------------------------------------------------------------------------------------------------------------
# Tempo in the feature domain


@dataclass(frozen=True)
class TempoRange:
    """Tempo factors drawn uniformly from ``[low, high]`` per training chunk; ``copies`` keeps epochs comparable.

    A tempo change with pitch kept only moves CQT frames in time, so a chunk played ``k`` times faster is the
    ``k``-times longer stretch of the original's frames resampled to the chunk length. The factor is drawn from the
    whole interval the data hparams' ``aug_speed_mode`` spans rather than only its listed values: the listed values
    exist because audio copies are rendered one per factor, and a continuous draw shows the model every tempo in
    between. ``copies`` is the number of distinct factors: each recording is visited that many times per epoch,
    as it would be with one audio copy per factor, so epochs, patience and step budgets keep their meaning.
    """

    low: float
    high: float
    copies: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise ValueError(f"tempo range [{self.low}, {self.high}] is not 0 < low <= high")
        if self.copies < 1:
            raise ValueError(f"tempo copies {self.copies} is not >= 1")

    @classmethod
    def from_factors(cls, factors: Sequence[float]) -> TempoRange | None:
        """The range of ``aug_speed_mode``; None when it holds only the identity (no tempo augmentation)."""
        distinct = sorted({1.0 if abs(k - 1.0) < 0.01 else round(float(k), 6) for k in factors})
        if distinct == [1.0]:
            return None
        return cls(distinct[0], distinct[-1], len(distinct))

    def draw(self, rng: np.random.Generator) -> float:
        return float(self.draws(rng, 1)[0])

    def draws(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` factors, one per chunk of a batch."""
        return rng.uniform(self.low, self.high, size=n) if self.high > self.low else np.full(n, self.low)

    def describe(self) -> str:
        return f"tempo factor uniform in [{self.low:g}, {self.high:g}], each recording {self.copies}x per epoch"


def tempo_resample(
    feats: torch.Tensor, lengths: torch.Tensor, scales: torch.Tensor, out_frames: int, pad_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample each chunk's time axis by its own factor, batched on the chunks' device.

    ``feats [B, L, F]`` holds ``lengths [B]`` valid frames each; output frame ``j`` of chunk ``b`` is the linear
    interpolation at source position ``(j + 0.5) * scales[b] - 0.5`` (centre-aligned, clamped to the valid frames so
    padding never bleeds in). Returns ``(feats [B, out_frames, F], valid lengths [B])``; frames past a chunk's
    resampled content are ``pad_value``. A scale of 1 with ``lengths == out_frames`` returns the input unchanged.
    """
    n_batch, _, n_bins = feats.shape
    scales = scales.to(device=feats.device, dtype=torch.float32)[:, None]  # [B, 1]
    last = (lengths.to(feats.device)[:, None] - 1).clamp(min=0).float()  # [B, 1]
    j = torch.arange(out_frames, device=feats.device, dtype=torch.float32)[None, :]  # [1, T]
    src = ((j + 0.5) * scales - 0.5).clamp(min=0.0)
    src = torch.minimum(src, last)  # [B, T]
    i0 = src.floor().long()
    i1 = torch.minimum(i0 + 1, last.long())
    w = (src - i0.float())[..., None].to(feats.dtype)  # [B, T, 1]
    a = feats.gather(1, i0[..., None].expand(n_batch, out_frames, n_bins))
    b = feats.gather(1, i1[..., None].expand(n_batch, out_frames, n_bins))
    out = a + (b - a) * w
    new_lengths = torch.round(lengths.to(feats.device).float() / scales[:, 0]).long().clamp(1, out_frames)
    valid = j < new_lengths[:, None]  # [B, T]
    return torch.where(valid[..., None], out, torch.full_like(out, pad_value)), new_lengths


def tempo_spans(chunk_frames: int, factors: np.ndarray) -> np.ndarray:
    """Raw frames of original content a chunk of ``chunk_frames`` covers at each tempo of ``factors`` (at least 1)."""
    return np.maximum(1, np.round(chunk_frames * np.asarray(factors))).astype(np.int64)


def max_tempo_span(chunk_frames: int, tempo: TempoRange) -> int:
    """The longest of ``tempo_spans`` the range can draw: the padded length of a batch before resampling."""
    return math.ceil(chunk_frames * tempo.high)


def masked_mean_pool(feats: torch.Tensor, lengths: torch.Tensor, mean_size: int, pad_value: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Average ``mean_size`` frames of ``feats [B, T, F]`` over the valid ones (a partial last group is averaged
    over what exists, as ``csi_model.dataset.pool_and_pad`` does per item). Returns ``([B, T // m, F], lengths)``;
    groups without valid frames are ``pad_value``."""
    n_batch, n_frames, n_bins = feats.shape
    n_out = n_frames // mean_size
    valid = (torch.arange(n_out * mean_size, device=feats.device)[None, :] < lengths[:, None]).to(feats.dtype)
    groups = (feats[:, : n_out * mean_size] * valid[..., None]).reshape(n_batch, n_out, mean_size, n_bins).sum(2)
    counts = valid.reshape(n_batch, n_out, mean_size).sum(2)[..., None]  # [B, T', 1]
    pooled = torch.where(counts > 0, groups / counts.clamp(min=1), torch.full_like(groups, pad_value))
    return pooled, torch.div(lengths + mean_size - 1, mean_size, rounding_mode="floor").clamp(max=n_out)
