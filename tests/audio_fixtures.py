"""Synthetic audio for the data-stage tests: real files written with soundfile, nothing mocked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def harmonic_tone(freq: float, seconds: float, sr: int, partials: int = 5) -> np.ndarray:
    """A tone with ``partials`` harmonics (amplitude 1/h), peak 0.5: pitch is unambiguous at the fundamental."""
    t = np.arange(int(round(seconds * sr))) / sr
    tone = sum(np.sin(2 * np.pi * freq * h * t) / h for h in range(1, partials + 1))
    return (0.5 * tone / np.abs(tone).max()).astype(np.float32)


def write_tone(
    path: Path, freq: float = 220.0, seconds: float = 1.0, sr: int = 16000, channels: int = 1, **kwargs
) -> Path:
    """Write a harmonic tone file (format from the suffix: .wav, .flac, .ogg); channels are copies at
    decreasing gain, so the mono mix is the tone at a known level."""
    tone = harmonic_tone(freq, seconds, sr)
    frames = np.stack([tone * (1.0 - 0.25 * c) for c in range(channels)], axis=1)
    sf.write(path, frames, sr, **kwargs)
    return path


def dominant_frequency(y: np.ndarray, sr: int) -> float:
    """Frequency of the largest FFT peak (Hann window, zero-padded to 2^18 bins for ~0.06 Hz resolution)."""
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y)), n=1 << 18))
    return float(np.fft.rfftfreq(1 << 18, 1 / sr)[spectrum.argmax()])
