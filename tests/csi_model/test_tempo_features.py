"""Tempo augmentation in the feature domain: chunks drawn at a random tempo and resampled per batch, and the
choice between it and stored audio variants (never both)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from csi_assets.store.records import FeatureTableRecord
from csi_assets.testsets import TempoModeMismatch, training_data
from csi_model.augment import TempoRange, masked_mean_pool, tempo_resample
from csi_model.dataset import PAD_VALUE, ChunkDataset, collate_chunks, pool_and_pad
from csi_model.hparams import DataPrepHParams
from csi_model.training import train
from tests.record_fixtures import table_record
from tests.train_fixtures import synthetic_features, tiny_hparams


def _reference_resample(chunk: np.ndarray, length: int, scale: float, out_frames: int) -> np.ndarray:
    """Frame-by-frame np.interp at centre-aligned source positions, clamped to the valid frames."""
    src = np.clip((np.arange(out_frames) + 0.5) * scale - 0.5, 0, length - 1)
    return np.stack([np.interp(src, np.arange(length), chunk[:length, f]) for f in range(chunk.shape[1])], axis=1)


@pytest.mark.parametrize("seed", range(5))
def test_batched_resampling_matches_per_chunk_interpolation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_batch, padded, n_bins, out_frames = 6, 23, 7, 20
    feats = rng.normal(-40, 10, size=(n_batch, padded, n_bins)).astype(np.float32)
    lengths = rng.integers(1, padded + 1, size=n_batch)
    scales = rng.uniform(0.7, 1.15, size=n_batch)
    for b, n in enumerate(lengths):
        feats[b, n:] = PAD_VALUE
    out, new_lengths = tempo_resample(torch.from_numpy(feats), torch.from_numpy(lengths), torch.from_numpy(scales),
                                      out_frames, PAD_VALUE)
    assert out.shape == (n_batch, out_frames, n_bins)
    for b in range(n_batch):
        n_out = int(new_lengths[b])
        assert n_out == min(out_frames, max(1, round(lengths[b] / scales[b])))
        expected = _reference_resample(feats[b], int(lengths[b]), float(scales[b]), out_frames)
        np.testing.assert_allclose(out[b, :n_out].numpy(), expected[:n_out], rtol=1e-5, atol=1e-4)
        assert (out[b, n_out:] == PAD_VALUE).all()
        assert out[b, :n_out].min() > PAD_VALUE  # padding never leaks into resampled content


def test_unit_scale_on_a_full_chunk_is_the_identity() -> None:
    feats = torch.randn(3, 10, 4)
    out, lengths = tempo_resample(feats, torch.full((3,), 10), torch.ones(3), 10, PAD_VALUE)
    torch.testing.assert_close(out, feats)
    assert lengths.tolist() == [10, 10, 10]


@pytest.mark.parametrize("factor", [0.8, 0.9, 1.1, 1.25])
def test_a_tempo_change_scales_the_rate_of_change_by_the_factor(factor: float) -> None:
    """A feature rising one unit per frame rises ``factor`` units per frame once the chunk plays ``factor`` faster."""
    span = round(40 * factor)
    ramp = torch.arange(span, dtype=torch.float32)[None, :, None].repeat(1, 1, 3)
    out, _ = tempo_resample(ramp, torch.tensor([span]), torch.tensor([span / 40]), 40, PAD_VALUE)
    slope = torch.diff(out[0, 2:-2, 0])
    torch.testing.assert_close(slope, torch.full_like(slope, span / 40))


def test_range_spans_the_factors_and_counts_distinct_copies() -> None:
    assert TempoRange.from_factors([1.0]) is None
    assert TempoRange.from_factors([1.0, 1.005]) is None
    assert TempoRange.from_factors([0.9, 1.0, 1.1]) == TempoRange(0.9, 1.1, 3)
    assert TempoRange.from_factors([1.2, 0.8, 1.0, 0.9, 1.1, 0.8]) == TempoRange(0.8, 1.2, 5)
    draws = [TempoRange(0.8, 1.2, 5).draw(np.random.default_rng(i)) for i in range(200)]
    assert min(draws) >= 0.8 and max(draws) <= 1.2 and np.std(draws) > 0.08  # the interval, not 5 values


def test_dataset_reads_the_raw_span_a_tempo_covers(tmp_path) -> None:
    items = synthetic_features(tmp_path, n_works=2, perfs_per_work=2, n_frames=(300, 300))
    ds = ChunkDataset(items, chunk_frames=60, mean_size=3, tempo=TempoRange(0.8, 1.25, 3), seed=3)
    feats, lengths, labels, scales = collate_chunks([ds[i] for i in range(len(ds))])
    assert feats.shape == (4, 75, np.load(items[0].feat_path).shape[1])  # ceil(60 x 1.25) raw frames
    assert torch.all(lengths == torch.round(scales * 60).long())  # each item holds exactly its span
    assert torch.all((scales >= 0.8) & (scales <= 1.25)) and len(set(scales.tolist())) > 1
    raw = np.load(items[0].feat_path)
    starts = [s for s in range(300 - int(lengths[0]) + 1)
              if np.allclose(raw[s : s + int(lengths[0])], feats[0, : int(lengths[0])].numpy())]
    assert starts  # the span is a contiguous stretch of the recording's own frames


@pytest.mark.parametrize("seed", range(4))
def test_batched_pooling_matches_per_item_pooling(seed: int) -> None:
    rng = np.random.default_rng(seed)
    feats = rng.normal(-40, 10, size=(5, 30, 4)).astype(np.float32)
    lengths = rng.integers(1, 31, size=5)
    pooled, pooled_lengths = masked_mean_pool(torch.from_numpy(feats), torch.from_numpy(lengths), 3, PAD_VALUE)
    for b, n in enumerate(lengths):
        expected, expected_length = pool_and_pad(feats[b, :n], 3, 10)
        np.testing.assert_allclose(pooled[b].numpy(), expected, rtol=1e-5)
        assert int(pooled_lengths[b]) == expected_length


def _row(variant: str, speed: float, split: str = "train") -> FeatureTableRecord:
    return table_record(variant, variant.split("-")[-1], speed, 0, f"/f/{variant}.npy", 100, split)


TABLE = [_row("a", 1.0), _row("sp_0.9-a", 0.9), _row("sp_1.1-a", 1.1), _row("b", 1.0, "val"),
         _row("sp_0.9-b", 0.9, "val")]


def test_stored_variants_are_ignored_in_feature_mode_never_stacked() -> None:
    data = training_data(DataPrepHParams(aug_speed_mode=(0.9, 1.0, 1.1)), TABLE, mean_size=1)
    assert [it.perf for it in data.items.train] == ["a"]
    assert data.tempo == TempoRange(0.9, 1.1, 3)
    assert data.tempo_record["stored_variants_ignored"] == 2


def test_audio_mode_uses_stored_variants_without_feature_tempo() -> None:
    data = training_data(DataPrepHParams(aug_speed_mode=(0.9, 1.0, 1.1), tempo_augmentation="audio"), TABLE,
                         mean_size=1)
    assert sorted(it.perf for it in data.items.train) == ["a", "sp_0.9-a", "sp_1.1-a"]
    assert data.tempo is None and data.tempo_record["stored_variants_used"] == 2


def test_audio_mode_without_stored_variants_is_an_error() -> None:
    hp = DataPrepHParams(aug_speed_mode=(0.9, 1.0, 1.1), tempo_augmentation="audio", source="data/hparams.yaml")
    with pytest.raises(TempoModeMismatch, match=r"data/hparams.yaml.*no rendered tempo variants"):
        training_data(hp, [r for r in TABLE if r.speed == 1.0], mean_size=1)


def test_training_with_feature_tempo_runs_and_visits_each_recording_per_copy(tmp_path) -> None:
    items = synthetic_features(tmp_path / "f", n_works=4, perfs_per_work=4, n_frames=(120, 200))
    hp = tiny_hparams(max_epochs=1)
    plain = train(hp, items, tmp_path / "plain")
    tempo = train(hp, items, tmp_path / "tempo", tempo=TempoRange(0.8, 1.2, 3))
    assert tempo.history[0].steps == 3 * plain.history[0].steps
    assert np.isfinite(tempo.history[0].train["total"])
