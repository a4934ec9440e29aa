"""Tempo ("speed") augmentation: copies of each performance played faster or slower at the same pitch.

Cover versions differ in tempo; training on tempo-changed copies teaches the model to ignore it. The stretch is
Rubber Band through pedalboard's ``time_stretch`` (a pip wheel, no sox binary). A factor k makes the audio k
times faster, so its duration becomes 1/k of the original.

Quality vs speed, measured on a 30 s harmonic melody (60 notes, 5 partials) at 16 kHz on this machine:

============  =====  ===========  =====================  ==========================
high_quality  k      x real time  pitch error (cents)    energy on the harmonics
============  =====  ===========  =====================  ==========================
False         0.8    153          median 10.5, max 67    0.898
False         1.2    287          median 5.8,  max 84    0.826
True          0.8    39           median 0.5,  max 1.7   0.985
True          1.2    55           median 0.5,  max 2.2   0.935
============  =====  ===========  =====================  ==========================

The default is ``high_quality=True``: the fast mode misplaces some notes by most of a semitone, which is one
CQT bin (the feature's resolution), and smears energy between partials; the careful mode keeps pitch within
a few cents. At ~40-55x real time a 4-minute track costs ~5 s per variant, paid once because rendered
variants are cached on disk.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pedalboard

from csi_model.audio import SAMPLE_RATE, load_audio, write_wav
from csi_model.identifiers import TEMPO_COPY_ID, id_path, is_original_speed

HIGH_QUALITY = True


class Performance(Protocol):
    """What the planner needs of a catalog row (``catalog.CatalogRow`` or any row-like object)."""

    perf: str
    wav: Path
    dur_s: float


@dataclass(frozen=True)
class TempoVariant:
    """One training item: the original (``factor`` 1.0) or a tempo-changed copy of it."""

    perf: str
    original_perf: str
    factor: float
    wav: Path
    source_wav: Path
    dur_s: float

    @property
    def is_original(self) -> bool:
        return self.perf == self.original_perf


def variant_perf_id(perf: str, factor: float) -> str:
    """``sp_<k>-<perf>``, with k printed as Python prints the float, so ids match the reference tool's.

    Raises ``ValueError`` for a factor Python prints in exponent form (``1e-05``): its id would fall outside
    :data:`TEMPO_COPY_ID`, the namespace user ids cannot take."""
    variant = f"sp_{float(factor)}-{perf}"
    if not TEMPO_COPY_ID.match(variant):
        raise ValueError(f"tempo factor {factor!r} cannot name a copy (its id {variant!r} is not sp_<digits.digits>-)")
    return variant


def plan_variants(
    performances: Sequence[Performance], factors: Sequence[float], out_dir: str | os.PathLike[str]
) -> list[TempoVariant]:
    """All (performance, factor) items, performance-major and factor-minor like the reference tool.

    Identity factors yield the original itself (its own id, file and a duration of ``round(dur_s, 2)``);
    they are not divided by a factor like 1.005, because the audio is not changed. Variant files are
    ``<out_dir>/<file name of the variant id>.wav`` (``csi_model.identifiers.id_file_name``: inside ``out_dir``,
    unique per id, bounded length). Factors that name the same item (1.0 and 1.005, or a repeated 0.8) give
    it once, so perf ids stay unique downstream. Nothing is written.
    """
    folder = Path(out_dir)
    unique: dict[str, TempoVariant] = {}
    for performance in performances:
        for factor in factors:
            variant = _plan_one(performance, float(factor), folder)
            unique.setdefault(variant.perf, variant)
    return list(unique.values())


def _plan_one(performance: Performance, factor: float, folder: Path) -> TempoVariant:
    if is_original_speed(factor):
        source = Path(performance.wav)
        return TempoVariant(performance.perf, performance.perf, 1.0, source, source, round(performance.dur_s, 2))
    perf = variant_perf_id(performance.perf, factor)
    return TempoVariant(
        perf=perf,
        original_perf=performance.perf,
        factor=factor,
        wav=id_path(folder, perf, ".wav"),
        source_wav=Path(performance.wav),
        dur_s=round(performance.dur_s / factor, 2),
    )


def time_stretch(y: np.ndarray, factor: float, high_quality: bool = HIGH_QUALITY) -> np.ndarray:
    """Play a 16 kHz mono signal ``factor`` times faster at the same pitch: ``[N] -> [~N/factor]``."""
    stretched = pedalboard.time_stretch(
        np.asarray(y, dtype=np.float32), SAMPLE_RATE, stretch_factor=float(factor), high_quality=high_quality
    )
    return stretched.reshape(-1)


def render_variant(variant: TempoVariant, high_quality: bool = HIGH_QUALITY) -> bool:
    """Write ``variant.wav`` (16 kHz mono) from ``variant.source_wav``; return whether a file was written.

    Originals and variants whose file already exists are skipped, so an interrupted run resumes where it
    stopped (files are written atomically, so an existing file is a complete one).
    Raises :class:`csi_model.audio.AudioError` when the source cannot be decoded.
    """
    if variant.is_original or variant.wav.exists():
        return False
    stretched = time_stretch(load_audio(variant.source_wav), variant.factor, high_quality)
    write_wav(variant.wav, stretched, SAMPLE_RATE)
    return True
