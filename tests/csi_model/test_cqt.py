import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from csi_model.audio import SAMPLE_RATE, load_audio
from csi_model.cqt import (
    CqtSettings,
    compute_cqt,
    content_hash,
    cqt_layer,
    load_feature,
    save_feature,
)
from tests.audio_fixtures import harmonic_tone, write_tone

CPU = torch.device("cpu")


def test_shape_dtype_and_db_reference() -> None:
    y = harmonic_tone(440.0, 2.03, SAMPLE_RATE)
    (feature,) = compute_cqt([y], CqtSettings(), CPU)
    assert feature.shape == (len(y) // 640 + 1, 96)
    assert feature.dtype == np.float16
    assert feature.max() == 0.0 and np.isfinite(feature).all()


def test_orientation_440hz_peaks_at_bin_45_and_110hz_at_bin_21() -> None:
    expected = {440.0: round(12 * np.log2(440 / 32)), 110.0: round(12 * np.log2(110 / 32))}
    assert expected == {440.0: 45, 110.0: 21}
    features = compute_cqt([harmonic_tone(f, 1.5, SAMPLE_RATE) for f in expected], CqtSettings(), CPU)
    assert [int(f.astype(np.float32).mean(axis=0).argmax()) for f in features] == list(expected.values())


def test_empty_signal_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"index \[1\]"):
        compute_cqt([harmonic_tone(220.0, 0.1, SAMPLE_RATE), np.zeros(0, np.float32)], CqtSettings(), CPU)


def test_fps_and_frames_follow_the_hop() -> None:
    settings = CqtSettings(hop=320)
    assert CqtSettings().fps == 25.0 and settings.fps == 50.0
    y = harmonic_tone(220.0, 1.0, SAMPLE_RATE)
    (feature,) = compute_cqt([y], settings, CPU)
    assert feature.shape == (SAMPLE_RATE // 320 + 1, 96)


def test_batched_equals_one_by_one_on_files(tmp_path: Path) -> None:
    specs = [(110.0, 2.7, 44100), (440.0, 0.3, 16000), (660.0, 1.31, 22050), (220.0, 1.0, 8000)]
    signals = [load_audio(write_tone(tmp_path / f"{i}.wav", f, s, sr)) for i, (f, s, sr) in enumerate(specs)]
    batched = compute_cqt(signals, CqtSettings(), CPU)
    assert len({len(s) for s in signals}) == 4  # different lengths: padding really happens
    for signal, feature in zip(signals, batched):
        (alone,) = compute_cqt([signal], CqtSettings(), CPU)
        assert feature.shape == alone.shape == (len(signal) // 640 + 1, 96)
        np.testing.assert_allclose(feature.astype(np.float32), alone.astype(np.float32), atol=0.125)


def test_small_batch_budget_gives_the_same_features() -> None:
    signals = [harmonic_tone(f, s, SAMPLE_RATE) for f, s in [(110.0, 1.2), (330.0, 0.9), (550.0, 1.7)]]
    one_pass = compute_cqt(signals, CqtSettings(), CPU)
    many_passes = compute_cqt(signals, CqtSettings(), CPU, batch_samples=1)
    for a, b in zip(one_pass, many_passes):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=0.125)


def test_matches_the_reference_recipe_with_centred_reflect_padding() -> None:
    """Same values as the reference GPU path: peak-normalise, CQT1992v2 centred, dB relative to max."""
    y = harmonic_tone(196.0, 2.0, SAMPLE_RATE) * 0.3
    (feature,) = compute_cqt([y], CqtSettings(dtype="float32"), CPU)
    layer = cqt_layer(CqtSettings(), CPU)
    assert layer.center and layer.pad_mode == "reflect" and layer.kernel_width // 2 == CqtSettings().half_window
    wave = torch.from_numpy(y / max(0.001, np.abs(y).max()) * 0.999)
    with torch.inference_mode():
        magnitude = layer(wave)[0].numpy() + 1e-9  # [F, T]
    reference = (20 * np.log10(magnitude) - 20 * np.log10(magnitude.max())).T
    assert feature.shape == reference.shape
    np.testing.assert_allclose(feature, reference, atol=1e-3)


def test_float16_storage_error_is_below_a_sixteenth_of_a_db() -> None:
    y = harmonic_tone(330.0, 1.0, SAMPLE_RATE)
    (half,) = compute_cqt([y], CqtSettings(), CPU)
    (full,) = compute_cqt([y], CqtSettings(dtype="float32"), CPU)
    assert full.min() < -100  # the range float16 must hold really occurs
    error = np.abs(half.astype(np.float32) - full)
    assert error.max() <= 0.0625 and error[full > -128].max() <= 0.03125


def test_settings_hash_is_stable_and_separates_settings() -> None:
    base = CqtSettings()
    assert base.settings_hash() == CqtSettings(fmin=32, sample_rate=16000.0).settings_hash()
    assert len(base.settings_hash()) == 12
    others = [
        CqtSettings(cqt_class="CQT2010v2"),
        CqtSettings(hop=320),
        CqtSettings(dtype="float32"),
        CqtSettings(n_bins=84),
    ]
    assert len({base.settings_hash(), *(s.settings_hash() for s in others)}) == 5
    with pytest.raises(ValueError, match="CQT1234"):
        CqtSettings(cqt_class="CQT1234")


def test_layer_is_built_once_per_settings_and_device() -> None:
    assert cqt_layer(CqtSettings(), CPU) is cqt_layer(CqtSettings(fmin=32), CPU)
    assert cqt_layer(CqtSettings(), CPU) is not cqt_layer(CqtSettings(hop=320), CPU)


def test_feature_files_are_atomic_and_memory_mapped(tmp_path: Path) -> None:
    feature = np.arange(96 * 5, dtype=np.float16).reshape(5, 96)
    path = tmp_path / "feat" / "x.cqt.npy"
    save_feature(path, feature)
    loaded = load_feature(path)
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.float16
    np.testing.assert_array_equal(loaded, feature)
    assert [p.name for p in path.parent.iterdir()] == ["x.cqt.npy"]


def test_content_hash_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"abc" * 1000)
    assert content_hash(path, chunk_bytes=7) == hashlib.sha256(b"abc" * 1000).hexdigest()
    path.write_bytes(b"abd" * 1000)
    assert content_hash(path) != hashlib.sha256(b"abc" * 1000).hexdigest()
