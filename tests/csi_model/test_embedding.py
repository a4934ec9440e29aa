"""Full-track embedding: every frame is covered, batching and padding do not change results, rows are unit norm."""

from pathlib import Path

import numpy as np
import pytest
import torch

from csi_model.embedding import Embedder, TooShort, segment_starts
from csi_model.model import CoverHunter, ModelConfig

TINY = ModelConfig(input_dim=24, embed_dim=32, d_model=32, num_blocks=2, ff_dim=64, num_classes=4)
CHUNK, MEAN = 20, 3  # a 60-raw-frame window


@pytest.fixture(scope="module")
def model() -> CoverHunter:
    torch.manual_seed(0)
    model = CoverHunter(TINY)
    with torch.no_grad():  # non-trivial running statistics, so eval-mode normalisation is exercised
        model._global_cmvn.running_mean.uniform_(-1, 1)
        model._global_cmvn.running_var.uniform_(0.5, 2)
    return model


def tracks(*lengths: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=(n, 24)).astype(np.float32) for n in lengths]


@pytest.mark.parametrize(
    ("n_frames", "starts"),
    [(5, [0]), (8, [0]), (16, [0, 8]), (17, [0, 8]), (18, [0, 8, 16]), (23, [0, 8, 16])],
)
def test_segment_starts_cover_the_tail_and_merge_a_tiny_one(n_frames: int, starts: list[int]) -> None:
    assert segment_starts(n_frames, 8).tolist() == starts


def test_segment_starts_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="n_frames"):
        segment_starts(0, 8)


def test_segment_count_covers_the_tail(model: CoverHunter) -> None:
    # 200 raw frames = 3 full windows + a 20-frame tail (≥ a quarter window): 4 segments (the reference kept 3).
    # 185 = 3 windows + a 5-frame tail: merged into the third segment.
    out = Embedder(model, CHUNK, MEAN, 4).embed(tracks(200, 185, 60, 30))
    assert [e.shape for e in out] == [(4, 32), (3, 32), (1, 32), (1, 32)]
    assert all(e.dtype == np.float32 for e in out)


def test_batched_equals_one_by_one_and_rows_are_unit_norm(model: CoverHunter) -> None:
    features = tracks(200, 185, 47, 130, 60, 22)
    batched = Embedder(model, CHUNK, MEAN, 3).embed(features)
    for feat, together in zip(features, batched):
        alone = Embedder(model, CHUNK, MEAN, 1).embed([feat])[0]
        np.testing.assert_allclose(together, alone, atol=2e-5)
        np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)


def test_segments_are_the_embeddings_of_their_frames(model: CoverHunter) -> None:
    (feat,) = tracks(130)  # segments [0, 60), [60, 130): the 10-frame tail merges
    segments = Embedder(model, CHUNK, MEAN, 2).embed([feat])[0]
    last = torch.from_numpy(feat[60:])  # [70, 24]
    pooled = torch.cat([last[:69].reshape(23, 3, 24).mean(1), last[69:].mean(0, keepdim=True)])  # 23 + 1 partial
    model.eval()
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.embed(pooled[None]), dim=1)[0].numpy()
    np.testing.assert_allclose(segments[1], expected, atol=2e-5)


def test_float16_memmap_features(model: CoverHunter, tmp_path: Path) -> None:
    (feat,) = tracks(150)
    np.save(tmp_path / "f.npy", feat.astype(np.float16))
    mapped = np.load(tmp_path / "f.npy", mmap_mode="r")
    from_map = Embedder(model, CHUNK, MEAN, 4).embed([mapped])[0]
    from_array = Embedder(model, CHUNK, MEAN, 4).embed([feat.astype(np.float16).astype(np.float32)])[0]
    np.testing.assert_array_equal(from_map, from_array)


def test_model_mode_is_restored(model: CoverHunter) -> None:
    model.train()
    Embedder(model, CHUNK, MEAN, 2).embed(tracks(70))
    assert model.training
    model.eval()


def test_bad_tracks_are_named(model: CoverHunter) -> None:
    with pytest.raises(TooShort, match="track 1: 18 raw frames, the model needs at least 19"):
        Embedder(model, CHUNK, MEAN, 2).embed(tracks(60, 18))
    with pytest.raises(ValueError, match=r"track 0: expected \[frames, 24\]"):
        Embedder(model, CHUNK, MEAN, 2).embed([np.zeros((60, 96), np.float32)])


@pytest.mark.parametrize("seed", range(4))
def test_any_batch_size_and_track_order_give_the_same_embeddings(model: CoverHunter, seed: int) -> None:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(19, 260, size=int(rng.integers(1, 7))).tolist()
    features = tracks(*lengths)
    reference = Embedder(model, CHUNK, MEAN, 1).embed(features)
    order = rng.permutation(len(features))
    embedder = Embedder(model, CHUNK, MEAN, int(rng.integers(2, 9)))
    shuffled = embedder.embed([features[i] for i in order])
    for position, i in enumerate(order):
        np.testing.assert_allclose(shuffled[position], reference[i], atol=2e-5)
        assert len(reference[i]) == len(embedder.segment_starts(lengths[i]))  # the starts callers store
    in_batches = [v for _, vectors in embedder.batches(features, lambda f: f, tracks_per_batch=2) for v in vectors]
    for together, alone in zip(in_batches, reference):
        np.testing.assert_allclose(together, alone, atol=2e-5)


def test_minimum_frames_rule_is_the_models_and_splits_by_length(model: CoverHunter) -> None:
    embedder = Embedder(model, CHUNK, MEAN, 2)
    assert embedder.min_frames == CoverHunter.min_raw_frames(MEAN) == 19
    kept, short = embedder.split_by_length([30, 18, 19, 5], lambda n: n)
    assert (kept, short) == ([30, 19], [18, 5])
    assert len(embedder.embed(tracks(19))[0]) == 1
    failed: list[tuple[str, str]] = []
    names, kept = embedder.drop_too_short(["a", "q.wav", "b"], tracks(19, 18, 40), 25.0, "identify",
                                          lambda name, message: failed.append((name, message)))
    assert names == ["a", "b"] and [len(f) for f in kept] == [19, 40]
    assert failed == [("q.wav", "q.wav: too short to identify (0.72 s; the model needs 0.76 s)")]


def test_logits_are_the_classifier_of_the_segment_embeddings(model: CoverHunter) -> None:
    embedder = Embedder(model, CHUNK, MEAN, 3)
    (feat,) = tracks(130)
    logits = embedder.logits([feat])[0]
    assert logits.shape == (2, TINY.num_classes)
    model.eval()
    with torch.no_grad():
        pooled = torch.from_numpy(feat[:60]).reshape(20, 3, 24).mean(1)[None]
        expected = model.classify(model.embed(pooled))[0].numpy()
    np.testing.assert_allclose(logits[0], expected, atol=2e-5)
