"""Augmentation of training chunks ``[T, F]``: tempo in the feature domain (resampling a batch's time axis on the
training device), pitch roll and random erase (per chunk, before the tempo resampling).

Pitch roll first, then random erase, each behind its own probability. Only the first ``length`` frames are real
content: padding frames are never shifted, filled or erased. Randomness comes solely from the passed generator
(no global seeding, no folders created), so the training run's seed decides every draw.
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
    shift = int(rng.integers(-1, 2)) * shift_num
    return np.roll(valid, shift, axis=1)


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
    n_bins = valid.shape[1]
    loud_bins = np.nonzero(valid > np.percentile(valid, 90))[1]
    centre = int(loud_bins.mean()) if loud_bins.size else n_bins // 2
    shift = int(rng.integers(-min(shift_num, centre), min(shift_num, n_bins - centre) + 1))
    out = np.full_like(valid, ERASE_FLOOR_DB)
    if shift >= 0:
        out[:, shift:] = valid[:, : n_bins - shift]
    else:
        out[:, :shift] = valid[:, -shift:]
    return out


ROLL_METHODS = {"default": roll_default, "low_melody": roll_low_melody, "flex_melody": roll_flex_melody}


def random_erase(valid: np.ndarray, hp: RandomEraseHParams, rng: np.random.Generator) -> np.ndarray:
    """Set ``erase_num`` full-size blocks to one shared value U·(−128); block starts are drawn so blocks fit."""
    n_frames, n_bins = valid.shape
    width, height = int(n_frames * hp.region_size[0]), int(n_bins * hp.region_size[1])
    value = rng.random() * ERASE_FLOOR_DB
    t0 = rng.integers(0, n_frames - width + 1, size=hp.erase_num)[:, None]  # [n, 1]
    f0 = rng.integers(0, n_bins - height + 1, size=hp.erase_num)[:, None]
    t, f = np.arange(n_frames), np.arange(n_bins)
    rows = (t >= t0) & (t < t0 + width)  # [n, T]
    cols = (f >= f0) & (f < f0 + height)  # [n, F]
    erased = (rows[:, :, None] & cols[:, None, :]).any(axis=0)  # [T, F]
    return np.where(erased, np.float32(value), valid)


class SpecAugment:
    """Callable ``(pooled [T', F], valid length, rng) -> augmented copy``, as ``ChunkDataset`` expects."""

    def __init__(self, hp: SpecAugHParams) -> None:
        self.roll: RollPitchHParams | None = hp.roll_pitch
        self.erase: RandomEraseHParams | None = hp.random_erase

    def __call__(self, feat: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
        valid = feat[:length]
        if self.roll is not None and rng.random() < self.roll.prob:
            valid = ROLL_METHODS[self.roll.method](valid, self.roll.shift_num, rng)
        if self.erase is not None and rng.random() < self.erase.prob:
            valid = random_erase(valid, self.erase, rng)
        out = feat.copy()
        out[:length] = valid
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
    def from_factors(cls, factors: Sequence[float]) -> "TempoRange | None":
        """The range of ``aug_speed_mode``; None when it holds only the identity (no tempo augmentation)."""
        distinct = sorted({1.0 if abs(k - 1.0) < 0.01 else round(float(k), 6) for k in factors})
        if distinct == [1.0]:
            return None
        return cls(distinct[0], distinct[-1], len(distinct))

    def draw(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high)) if self.high > self.low else self.low

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


def tempo_span(chunk_frames: int, factor: float) -> int:
    """Raw frames of original content a chunk of ``chunk_frames`` covers at tempo ``factor`` (at least 1)."""
    return max(1, int(round(chunk_frames * factor)))


def max_tempo_span(chunk_frames: int, tempo: TempoRange) -> int:
    """The longest ``tempo_span`` the range can draw: the padded length of a batch before resampling."""
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
