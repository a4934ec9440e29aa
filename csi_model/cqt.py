"""CQT features: one ``[T, n_bins]`` array of dB values per signal, computed in batches with nnAudio.

The recipe follows the reference tool (see docs/reference_tool.md): peak-normalise, magnitude CQT from ``fmin`` with
``bins_per_octave`` bins per octave, then amplitude to dB relative to the track maximum with no floor.

Choices and why:

* **One CQT class for every device** (``CQT1992v2``). The reference used ``CQT1992v2`` on MPS and
  ``CQT2010v2`` on CUDA, so its features depended on the machine. ``CQT1992v2`` is a single strided
  convolution with full-length kernels: exact (no octave-wise down-sampling, so no aliasing of the low
  octaves) and faster on CPU: ``bench/features.py`` measured CQT2010v2 at 0.34-0.56x its throughput on
  this 2-core machine (environment.md: ~1,000-1,400x vs ~100-220x real time). The class is part of
  :class:`CqtSettings`, hence of :meth:`CqtSettings.settings_hash`, so features from different settings never
  share a cache key.
* **Batches equal single files.** The reference centres frames with reflect padding of half the longest
  kernel. Here each signal gets its *own* reflected tail before the batch is zero-padded to its longest member,
  and the layer then reflect-pads the (common) start. Every kept frame therefore sees exactly the samples it
  would see alone, and each result is cut back to its own ``N // hop + 1`` frames.
* **Stored as float16.** Values lie in about [-200, 0] dB. float16 spacing is 1/16 dB from 64 to 128 dB in
  magnitude and 1/8 dB from 128 to 256, so rounding moves a value by at most 0.03 dB where the music is
  (the top ~100 dB) and 0.06 dB in near-silence, far below any difference a model can use; the files are
  half the size of float32 and memory-mapped chunks load twice as fast. The largest float16 (65504) is far
  beyond -200 dB, so nothing overflows.
* **fps is derived** (``sample_rate / hop``), never hard-coded to 25.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import nnAudio.features
import numpy as np
import torch

from csi_model.atomic import atomic_path
from csi_model.audio import SAMPLE_RATE
from csi_model.hparams import DataPrepHParams, cqt_range_problem

FORMULA = "peak0.999|cqt-magnitude-librosa-norm|db-rel-max-eps1e-9|nofloor"
"""The post-processing recipe, hashed with the settings so a change of recipe invalidates cached features."""

PEAK_FLOOR = 0.001
PEAK_TARGET = 0.999
MAGNITUDE_EPS = 1e-9
DEFAULT_BATCH_SAMPLES = 16 * 60 * SAMPLE_RATE
"""Padded samples per forward pass (about 16 one-minute tracks): bounds memory, amortises the call."""


@dataclass(frozen=True)
class CqtSettings:
    """Everything that changes a feature's values; the cache key of a feature is (audio hash, settings hash)."""

    sample_rate: int = SAMPLE_RATE
    hop: int = 640
    fmin: float = 32.0
    n_bins: int = 96
    bins_per_octave: int = 12
    cqt_class: str = "CQT1992v2"
    dtype: str = "float16"

    def __post_init__(self) -> None:
        # 32 and 32.0 must hash alike: normalise types before anything reads them.
        kinds = {"sample_rate": int, "hop": int, "fmin": float, "n_bins": int, "bins_per_octave": int}
        for name, kind in kinds.items():
            object.__setattr__(self, name, kind(getattr(self, name)))
        if not hasattr(nnAudio.features, self.cqt_class):
            raise ValueError(f"unknown nnAudio CQT class {self.cqt_class!r}")
        if self.hop < 1:
            raise ValueError(f"hop must be at least one sample, got {self.hop}")
        problem = cqt_range_problem(self.fmin, self.n_bins, self.bins_per_octave, self.sample_rate)
        if problem:
            raise ValueError(problem)
        np.dtype(self.dtype)  # raises TypeError on a bad dtype name

    @property
    def fps(self) -> float:
        return self.sample_rate / self.hop

    def n_frames(self, n_samples: int) -> int:
        """Frames of a centred CQT of ``n_samples`` samples: one per hop plus the frame at t = 0."""
        return n_samples // self.hop + 1

    @property
    def half_window(self) -> int:
        """Half of the power-of-two window that holds the longest (lowest) CQT filter.

        This is how far a centred frame reaches past its centre, and the reflect padding nnAudio's
        ``CQT1992v2`` applies on each side (8192 samples for the default settings).
        """
        quality = 1.0 / (2 ** (1.0 / self.bins_per_octave) - 1)
        longest_filter = math.ceil(quality * self.sample_rate / self.fmin)
        return 2 ** math.ceil(math.log2(longest_filter)) // 2

    def settings_hash(self) -> str:
        payload = json.dumps({**asdict(self), "formula": FORMULA}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


def settings_for(hp: DataPrepHParams) -> CqtSettings:
    """The CQT settings a dataset's data-preparation hparams ask for (the hop from ``hop_size`` seconds)."""
    return CqtSettings(sample_rate=SAMPLE_RATE, hop=int(round(hp.hop_size * SAMPLE_RATE)), fmin=hp.fmin,
                       n_bins=hp.n_bins, bins_per_octave=hp.bins_per_octave)


@functools.lru_cache(maxsize=8)
def cqt_layer(settings: CqtSettings, device: torch.device) -> torch.nn.Module:
    """The nnAudio layer, built once per (settings, device) per process: kernel construction is not free."""
    layer_class = getattr(nnAudio.features, settings.cqt_class)
    layer = layer_class(
        sr=settings.sample_rate,
        hop_length=settings.hop,
        fmin=settings.fmin,
        n_bins=settings.n_bins,
        bins_per_octave=settings.bins_per_octave,
        verbose=False,
    )
    return layer.to(device).eval()


def compute_cqt(
    signals: Sequence[np.ndarray],
    settings: CqtSettings,
    device: torch.device,
    batch_samples: int = DEFAULT_BATCH_SAMPLES,
) -> list[np.ndarray]:
    """CQT dB features ``[T_i, n_bins]`` (time first, low to high frequency) of 1-D signals at ``sample_rate``.

    Signals are grouped by length so that padding wastes little, and each group of at most ``batch_samples``
    padded samples is one forward pass. Results come back in input order.
    """
    lengths = np.array([len(signal) for signal in signals])
    if (lengths == 0).any():
        raise ValueError(f"empty signal(s) at index {np.flatnonzero(lengths == 0).tolist()}: nothing to transform")
    features: list[np.ndarray] = [np.empty(0)] * len(signals)
    for batch in _length_batches(lengths, settings.half_window, batch_samples):
        for index, feature in zip(batch, _cqt_batch([signals[i] for i in batch], settings, device)):
            features[index] = feature
    return features


def _length_batches(lengths: np.ndarray, tail: int, batch_samples: int) -> list[list[int]]:
    """Indices grouped in length order; a group's padded size (members x longest) stays within budget."""
    batches: list[list[int]] = []
    for index in np.argsort(lengths, kind="stable")[::-1]:
        padded = (len(batches[-1]) + 1) * (lengths[batches[-1][0]] + tail) if batches else math.inf
        if padded > batch_samples:
            batches.append([])
        batches[-1].append(int(index))
    return batches


def _cqt_batch(signals: Sequence[np.ndarray], settings: CqtSettings, device: torch.device) -> list[np.ndarray]:
    tail = settings.half_window
    frames = torch.tensor([settings.n_frames(len(signal)) for signal in signals], device=device)
    waves = torch.from_numpy(_pad_batch(signals, tail)).to(device)  # [B, N_max + tail]
    waves = waves / waves.abs().amax(dim=1, keepdim=True).clamp(min=PEAK_FLOOR) * PEAK_TARGET
    with torch.inference_mode():
        magnitude = cqt_layer(settings, device)(waves) + MAGNITUDE_EPS  # [B, F, T_max]
    decibels = _decibels_relative_to_max(magnitude, frames)  # [B, F, T_max]
    stored = decibels.transpose(1, 2).to(getattr(torch, settings.dtype)).cpu().numpy()  # [B, T_max, F]
    return [np.ascontiguousarray(feature[:count]) for feature, count in zip(stored, frames.tolist())]


def _pad_batch(signals: Sequence[np.ndarray], tail: int) -> np.ndarray:
    """``[B, N_max + tail]`` float32: each signal with its own reflected tail, then zeros to the longest."""
    batch = np.zeros((len(signals), max(len(signal) for signal in signals) + tail), dtype=np.float32)
    for row, signal in zip(batch, signals):
        row[: len(signal) + tail] = np.pad(np.asarray(signal, dtype=np.float32), (0, tail), mode="reflect")
    return batch


def _decibels_relative_to_max(magnitude: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """20 log10(S) - 20 log10(max S), the maximum taken over each signal's own frames only (not padding)."""
    own = torch.arange(magnitude.shape[-1], device=magnitude.device) < frames[:, None]  # [B, T_max]
    peak = torch.where(own[:, None, :], magnitude, 0.0).amax(dim=(1, 2))  # [B]
    return 20.0 * (torch.log10(magnitude) - torch.log10(peak)[:, None, None])


def save_feature(path: str | os.PathLike[str], feature: np.ndarray) -> None:
    """Write a ``.npy`` atomically (temporary file in the same folder, then ``os.replace``)."""
    with atomic_path(path) as tmp:
        np.save(tmp, feature)


def load_feature(path: str | os.PathLike[str]) -> np.ndarray:
    """Memory-map a feature: training reads random chunks, so only the touched pages are loaded."""
    return np.load(path, mmap_mode="r")


def content_hash(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """sha256 of a file's bytes, streamed in 1 MiB chunks (cache key of the source audio)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
