from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from csi_model.audio import SAMPLE_RATE, AudioError, check_audio_file, load_audio, write_wav
from tests.audio_fixtures import dominant_frequency, harmonic_tone, write_tone


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


CHANNEL_RELATIONS = {
    "in-phase": lambda left, rng: rng.uniform(0.1, 1.0) * left,
    "inverted": lambda left, rng: -rng.uniform(0.9, 1.1) * left,
    "one-silent": lambda left, rng: np.zeros_like(left),
    "uncorrelated": lambda left, rng: rng.uniform(0.1, 1.0) * rng.standard_normal(left.size) * left.std(),
}


@pytest.mark.parametrize("relation", CHANNEL_RELATIONS)
def test_stereo_channels_that_cancel_in_the_mix_are_still_read_loud(tmp_path: Path, relation: str) -> None:
    """Whatever the relation between the channels, a loud file is read at no less than half its loudest channel's
    level (6 dB); where the mix does not cancel it is exactly the reference's channel average."""
    rng = np.random.default_rng(list(CHANNEL_RELATIONS).index(relation))
    for trial in range(8):
        left = rng.standard_normal(SAMPLE_RATE // 4).astype(np.float32)
        stereo = np.stack([left, CHANNEL_RELATIONS[relation](left, rng)], axis=1)
        stereo = (0.9 * stereo / np.abs(stereo).max()).astype(np.float32)  # the louder channel peaks at 0.9
        if rng.random() < 0.5:
            stereo = stereo[:, ::-1]
        path = tmp_path / f"{relation}-{trial}.wav"
        sf.write(path, stereo, SAMPLE_RATE, subtype="FLOAT")
        mono = load_audio(path)
        loudest_rms = np.sqrt(np.mean(np.square(stereo), axis=0)).max()
        assert np.sqrt(np.mean(np.square(mono))) >= 0.5 * loudest_rms * 0.999, (relation, trial)
        if relation != "inverted":
            np.testing.assert_array_equal(mono, stereo.mean(axis=1, dtype=np.float32))


def test_out_of_phase_stereo_uses_one_channel_and_says_why(tmp_path: Path, caplog) -> None:
    left = 0.9 * harmonic_tone(220.0, 0.5, SAMPLE_RATE) / 0.5
    path = tmp_path / "out_of_phase.wav"
    sf.write(path, np.stack([left, -left], axis=1), SAMPLE_RATE, subtype="FLOAT")
    mono = load_audio(path)
    np.testing.assert_allclose(np.abs(mono).max(), np.abs(left).max(), rtol=1e-6)
    assert "channels cancel" in caplog.text and str(path) in caplog.text


def test_silent_stereo_is_rejected_even_when_its_channels_cancel(tmp_path: Path) -> None:
    quiet = np.full(SAMPLE_RATE, 1e-5, dtype=np.float32)
    for name, stereo in {"zeros": np.zeros((SAMPLE_RATE, 2), dtype=np.float32),
                         "quiet-inverted": np.stack([quiet, -quiet], axis=1)}.items():
        sf.write(tmp_path / f"{name}.wav", stereo, SAMPLE_RATE, subtype="FLOAT")
        with pytest.raises(AudioError, match="silent"):
            load_audio(tmp_path / f"{name}.wav")


@pytest.mark.parametrize("make, reason", [
    (lambda p: p.mkdir(), "is a directory"),
    (lambda p: None, "file not found"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"RIFF0000WAVEnot really audio"), "cannot decode"),
], ids=["directory", "missing", "empty", "undecodable"])
def test_header_check_names_each_kind_of_unreadable_input(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "query.wav"
    make(path)
    with pytest.raises(AudioError, match=reason):
        check_audio_file(path)
    with pytest.raises(AudioError, match=reason):
        load_audio(path)
