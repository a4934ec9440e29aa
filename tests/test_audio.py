from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_fixtures import dominant_frequency, harmonic_tone, write_tone
from csi_model.audio import SAMPLE_RATE, AudioError, load_audio, write_wav


def test_stereo_44k_becomes_16k_mono_with_the_right_length(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "stereo.wav", freq=440.0, seconds=1.5, sr=44100, channels=2)
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 1.5 * SAMPLE_RATE) <= 1
    assert dominant_frequency(y, SAMPLE_RATE) == pytest.approx(440.0, abs=1.0)
    # mono mix = mean of the channels (gains 1.0 and 0.75 of a peak-0.5 tone)
    assert np.abs(y).max() == pytest.approx(0.5 * 0.875, rel=0.02)


def test_8k_flac_is_upsampled_to_16k(tmp_path: Path) -> None:
    path = write_tone(tmp_path / "low.flac", freq=300.0, seconds=2.0, sr=8000)
    y = load_audio(path)
    assert abs(len(y) - 2 * SAMPLE_RATE) <= 1
    assert dominant_frequency(y, SAMPLE_RATE) == pytest.approx(300.0, abs=1.0)


@pytest.mark.parametrize("suffix", [".ogg", ".mp3"])
def test_compressed_formats_decode(tmp_path: Path, suffix: str) -> None:
    y = load_audio(write_tone(tmp_path / f"a{suffix}", freq=440.0, seconds=1.0, sr=44100, channels=2))
    assert len(y) == pytest.approx(SAMPLE_RATE, rel=0.05)  # lossy codecs may pad a frame
    assert dominant_frequency(y, SAMPLE_RATE) == pytest.approx(440.0, abs=1.0)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 8), "cannot decode"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: sf.write(p, np.zeros(16000, dtype=np.float32), 16000), "silent"),
        (lambda p: sf.write(p, np.full(16000, 1e-5, dtype=np.float32), 16000), "silent"),
        (lambda p: sf.write(p, np.zeros((0, 1), dtype=np.float32), 16000), "no audio samples"),
        (lambda p: None, "file not found"),
    ],
    ids=["corrupt", "empty", "digital-silence", "near-silence", "zero-frames", "missing"],
)
def test_bad_audio_raises_audio_error_naming_file_and_reason(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=reason) as caught:
        load_audio(path)
    assert caught.value.path == path and str(path) in str(caught.value)


def test_write_wav_is_atomic_pcm16_and_round_trips(tmp_path: Path) -> None:
    y = harmonic_tone(220.0, 0.5, SAMPLE_RATE)
    path = tmp_path / "sub" / "out.wav"
    write_wav(path, y, SAMPLE_RATE)
    info = sf.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    assert np.abs(load_audio(path) - y).max() < 1e-4
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.wav"]  # no temp file left behind


def test_write_wav_scales_overshoot_instead_of_clipping(tmp_path: Path) -> None:
    y = 2.0 * harmonic_tone(220.0, 0.5, SAMPLE_RATE) / 0.5  # peak 2.0
    path = tmp_path / "loud.wav"
    write_wav(path, y, SAMPLE_RATE)
    back = load_audio(path)
    assert np.abs(back).max() == pytest.approx(1.0, abs=1e-3)
    assert np.abs(back - y / 2.0).max() < 1e-4
