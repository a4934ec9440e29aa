"""Audio in and out: any file libsndfile reads becomes 16 kHz mono float32, the one signal format of the stage.

Decoding goes through soundfile (libsndfile: WAV, FLAC, OGG, MP3, AIFF, ...) and resampling through soxr, so
nothing depends on a system binary or on FFmpeg. Bad inputs raise :class:`AudioError`, which names the file and
the reason, so a caller that processes thousands of files can catch it per file, record it and go on.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from csi_model.atomic import atomic_path

SAMPLE_RATE = 16000
"""Every feature of the toolkit is computed from 16 kHz mono audio (the reference tool's rate)."""

SILENCE_PEAK_DBFS = -80.0
"""A mono mix whose peak is below this level is treated as silent.

Its CQT would be quantisation or dither noise, normalised up to 0 dB by the relative-to-max dB step, which
teaches the model nothing and poisons nearest-neighbour search; better to reject it with a reason.
"""

CANCELLATION_DB = 20.0
"""A mono mix whose RMS is this far below its loudest channel's means the channels cancel (e.g. one channel
phase-inverted): such a file is read from its loudest channel instead.

Ordinary recordings never come near it: channels that are equal give 0 dB, independent ones -3 dB, one silent
channel -6 dB; an inverted copy gives minus infinity, and a copy inverted with a 10 % level difference -26 dB.
"""

_log = logging.getLogger(__name__)


class AudioError(Exception):
    """A file that cannot serve as audio input: unreadable, corrupt, empty, silent or non-finite."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def load_audio(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode ``path`` to a 16 kHz mono float32 signal ``[N]``.

    Channels are averaged (the reference tool's mono mix), unless they cancel in the mix (see
    :data:`CANCELLATION_DB`): then the loudest channel is used, with a warning. soxr's default "HQ" quality is
    used: it is far faster than real time (~18,000x here) and its passband is flat to well above the top CQT bin
    (7.7 kHz).
    """
    source = Path(path)
    signal, rate = _decode(source)
    mono = _mono_mix(source, signal)
    _check_content(source, mono)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    return np.ascontiguousarray(mono, dtype=np.float32)


def check_audio_file(path: str | os.PathLike[str]) -> None:
    """Raise :class:`AudioError` unless ``path`` is a file whose audio header libsndfile can read.

    Cheap (the header only), so a command can screen all its inputs before loading a model; the samples
    themselves can still be corrupt, which :func:`load_audio` reports."""
    source = Path(path)
    _check_file(source)
    try:
        sf.info(str(source))
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioError(source, f"cannot decode audio: {error}") from error


def _check_file(path: Path) -> None:
    """Missing, a directory or empty: the failures that need no decoder."""
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """Read every channel as float32 ``[N, C]``, turning libsndfile's failures into an :class:`AudioError`."""
    _check_file(path)
    try:
        signal, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioError(path, f"cannot decode audio: {error}") from error
    return signal, int(rate)


def _mono_mix(path: Path, signal: np.ndarray) -> np.ndarray:
    """The channel average of ``signal`` ``[N, C]`` -> ``[N]``, or its loudest channel when the channels cancel."""
    mono = signal.mean(axis=1, dtype=np.float32)
    if signal.shape[1] < 2 or mono.size == 0 or not np.isfinite(signal).all():
        return mono  # nothing to fall back to; _check_content names the fault
    channel_rms = np.sqrt(np.mean(np.square(signal, dtype=np.float64), axis=0))  # [C]
    loudest = int(np.argmax(channel_rms))
    mix_rms = float(np.sqrt(np.mean(np.square(mono, dtype=np.float64))))
    if channel_rms[loudest] == 0 or mix_rms > channel_rms[loudest] * 10 ** (-CANCELLATION_DB / 20):
        return mono
    mix_db = 20 * np.log10(mix_rms / channel_rms[loudest]) if mix_rms > 0 else -np.inf
    _log.warning("%s: the channels cancel in the mono mix (%.1f dB below channel %d, e.g. one is phase-inverted); "
                 "using channel %d alone", path, mix_db, loudest + 1, loudest + 1)
    return np.ascontiguousarray(signal[:, loudest])


def _check_content(path: Path, mono: np.ndarray) -> None:
    """Reject signals whose CQT would be meaningless: no samples, NaN/inf, or (near) silence."""
    if mono.size == 0:
        raise AudioError(path, "no audio samples (0 frames decoded)")
    if not np.isfinite(mono).all():
        raise AudioError(path, "audio contains NaN or infinite samples")
    peak = float(np.abs(mono).max())
    if peak <= 10 ** (SILENCE_PEAK_DBFS / 20):
        level = "digital silence" if peak == 0 else f"peak {20 * np.log10(peak):.1f} dBFS"
        raise AudioError(path, f"silent audio ({level}, threshold {SILENCE_PEAK_DBFS:.0f} dBFS)")


def write_wav(path: str | os.PathLike[str], y: np.ndarray, sr: int) -> None:
    """Write a mono signal atomically as 16-bit PCM WAV.

    Why PCM_16: these files are intermediate tempo variants; 16 bits give 96 dB of dynamic range, the same as
    the reference tool's sox output, at half the disk of float32 (a Covers80-sized set with four variants is
    ~5 GB instead of ~10 GB). The only hazard of integer PCM is clipping when a time-stretch overshoots 1.0, so
    a signal that exceeds full scale is scaled down to peak 1.0 first; the level is irrelevant downstream
    because the CQT is peak-normalised and expressed in dB relative to the track maximum.
    """
    samples = np.asarray(y, dtype=np.float32).reshape(-1)
    peak = float(np.abs(samples).max(initial=0.0))
    if peak > 1.0:
        samples = samples / peak
    with atomic_path(path) as tmp:
        sf.write(tmp, samples, sr, subtype="PCM_16", format="WAV")
