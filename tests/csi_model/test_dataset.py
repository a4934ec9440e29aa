import numpy as np
import pytest
import torch

from csi_model.dataset import (
    PAD_VALUE,
    ChunkDataset,
    FeatureFileError,
    FeatureItem,
    collate_chunks,
    mean_pool,
    pool_and_pad,
)
from tests.train_fixtures import synthetic_features


def naive_pool(feat: np.ndarray, m: int) -> np.ndarray:
    return np.array([feat[i * m : (i + 1) * m].mean(axis=0) for i in range(len(feat) // m)], dtype=np.float32)


def test_mean_pool_matches_frame_by_frame_mean():
    feat = np.random.default_rng(0).normal(size=(31, 5)).astype(np.float32)
    for m in (1, 2, 3):
        pooled = mean_pool(feat, m)
        assert pooled.dtype == np.float32
        np.testing.assert_allclose(pooled, naive_pool(feat, m), rtol=1e-6)


def test_defined_chunk_is_the_pooled_slice(tmp_path):
    items = synthetic_features(tmp_path, n_works=2, perfs_per_work=1, n_frames=(200, 200))
    item = FeatureItem(items[0].perf, items[0].work_id, items[0].feat_path, 200, start=37)
    ds = ChunkDataset([item], chunk_frames=48, mean_size=2, mode="defined")
    feat, length, label = ds[0]
    raw = np.load(item.feat_path)
    np.testing.assert_allclose(feat.numpy(), naive_pool(raw[37:85], 2), rtol=1e-6)
    assert (length, label) == (24, item.work_id)


def test_random_starts_stay_inside_and_depend_on_seed_and_epoch(tmp_path):
    items = synthetic_features(tmp_path, n_works=1, perfs_per_work=1, n_frames=(100, 100))
    raw = np.load(items[0].feat_path)
    windows = {tuple(naive_pool(raw[s : s + 40], 2)[0]): s for s in range(61)}

    def starts(seed: int, epoch: int) -> list[int]:
        ds = ChunkDataset(items, chunk_frames=40, mean_size=2, mode="random", seed=seed)
        ds.set_epoch(epoch)
        out = []
        for _ in range(12):
            feat, length, _ = ds[0]
            assert length == 20
            out.append(_match(windows, feat))
        return out

    first = starts(1, 0)
    assert first == starts(1, 0)
    assert first != starts(2, 0)
    assert first != starts(1, 1)
    assert all(0 <= s <= 60 for s in first)


def _match(windows: dict, feat: torch.Tensor) -> int:
    row = feat[0].numpy()
    return next(s for key, s in windows.items() if np.allclose(key, row, atol=1e-5))


def test_short_track_is_padded_and_length_counts_partial_frame(tmp_path):
    items = synthetic_features(tmp_path, n_works=1, perfs_per_work=1, n_frames=(33, 33))
    ds = ChunkDataset(items, chunk_frames=48, mean_size=2, mode="random")
    feat, length, _ = ds[0]
    raw = np.load(items[0].feat_path)
    assert feat.shape == (24, raw.shape[1])
    assert length == 17  # 16 full pairs + one single trailing frame
    np.testing.assert_allclose(feat[:16].numpy(), naive_pool(raw, 2), rtol=1e-6)
    np.testing.assert_allclose(feat[16].numpy(), raw[32], rtol=1e-6)
    assert torch.all(feat[17:] == PAD_VALUE)


def test_pool_and_pad_of_exact_chunk_has_no_padding():
    raw = np.ones((10, 3), dtype=np.float32)
    pooled, length = pool_and_pad(raw, 2, 5)
    assert length == 5 and np.all(pooled == 1)


def test_features_are_memory_mapped(tmp_path, monkeypatch):
    items = synthetic_features(tmp_path, n_works=1, perfs_per_work=1, n_frames=(100, 100))
    ds = ChunkDataset(items, chunk_frames=40, mean_size=2)
    opened = []
    real_load = np.load

    def spy(path, *args, **kwargs):
        out = real_load(path, *args, **kwargs)
        opened.append(out)
        return out

    monkeypatch.setattr(np, "load", spy)
    ds[0]
    ds[0]
    assert opened and all(isinstance(a, np.memmap) for a in opened)


def test_frame_count_is_checked_against_the_file(tmp_path):
    items = synthetic_features(tmp_path, n_works=1, perfs_per_work=1, n_frames=(100, 100))
    wrong = FeatureItem(items[0].perf, 0, items[0].feat_path, 150)
    with pytest.raises(FeatureFileError, match=str(items[0].feat_path.name)):
        ChunkDataset([wrong], chunk_frames=40, mean_size=2)[0]
    with pytest.raises(FeatureFileError, match="input_dim"):
        ChunkDataset(items, chunk_frames=40, mean_size=2, input_dim=96)[0]
    missing = FeatureItem("x", 0, tmp_path / "missing.npy", 10)
    with pytest.raises(FeatureFileError, match="missing.npy"):
        ChunkDataset([missing], chunk_frames=40, mean_size=2)[0]


def test_augment_sees_the_pooled_batch_and_valid_lengths(tmp_path):
    items = synthetic_features(tmp_path, n_works=2, perfs_per_work=1, n_frames=(30, 30))
    seen = []

    def augment(feats, lengths, rng):
        seen.append((feats.shape, lengths.tolist()))
        return feats + 1

    ds = ChunkDataset(items, chunk_frames=40, mean_size=2, augment=augment, mode="defined")
    batch = ds.__getitems__([0, 1])
    assert seen == [((2, 20, batch[0][0].shape[1]), [15, 15])]
    plain = ChunkDataset(items, chunk_frames=40, mean_size=2, mode="defined").__getitems__([0, 1])
    for (feat, length, _), (expected, expected_length, _) in zip(batch, plain):
        assert length == expected_length and torch.allclose(feat, expected + 1)


def test_collate_stacks_lengths_and_labels(tmp_path):
    items = synthetic_features(tmp_path, n_works=2, perfs_per_work=1, n_frames=(30, 100))
    ds = ChunkDataset(items, chunk_frames=40, mean_size=2)
    feats, lengths, labels = collate_chunks([ds[0], ds[1]])
    assert feats.shape[:2] == (2, 20) and lengths.dtype == torch.long and labels.tolist() == [0, 1]
