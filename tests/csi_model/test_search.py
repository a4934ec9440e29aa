"""Exact cosine search: agreement with a full stable argsort, chunking, ties, and track-level grouping."""

import numpy as np
import pytest

from csi_model.metrics import min_segment_distance
from csi_model.search import PerformanceIndex, ReferenceIndex


def _unit(rng, rows, dim=16):
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _full_ranking(queries, refs):
    distances = 1.0 - np.clip(queries.astype(np.float64) @ refs.T.astype(np.float64), -1.0, 1.0)
    order = np.argsort(distances, axis=1, kind="stable")
    return order, np.take_along_axis(distances, order, axis=1)


@pytest.mark.parametrize("chunk_rows", [65536, 7])
@pytest.mark.parametrize("k", [1, 10, 45])
def test_top_k_equals_a_full_argsort(chunk_rows, k):
    rng = np.random.default_rng(0)
    refs, queries = _unit(rng, 300), _unit(rng, 9)
    result = ReferenceIndex(refs, chunk_rows=chunk_rows).search(queries, k)
    order, distances = _full_ranking(queries, refs)
    np.testing.assert_array_equal(result.indices, order[:, :k])
    np.testing.assert_allclose(result.distances, distances[:, :k], atol=1e-6)
    assert result.indices.shape == (9, k) and result.distances.dtype == np.float32


@pytest.mark.parametrize("chunk_rows", [65536, 3, 2])
def test_exact_ties_keep_reference_order_across_chunks(chunk_rows):
    axes = np.eye(4, dtype=np.float32)
    refs = axes[[1, 0, 2, 0, 3, 0, 1]]  # query e0 is at distance 0 from rows 1, 3, 5 and 1 from the rest
    index = ReferenceIndex(refs, chunk_rows=chunk_rows)
    result = index.search(axes[0], 5)
    np.testing.assert_array_equal(result.indices, [[1, 3, 5, 0, 2]])
    np.testing.assert_array_equal(result.distances, [[0, 0, 0, 1, 1]])
    np.testing.assert_array_equal(index.search(axes[0], 2).indices, [[1, 3]])


def test_k_larger_than_the_index_returns_every_reference():
    rng = np.random.default_rng(1)
    result = ReferenceIndex(_unit(rng, 5), chunk_rows=2).search(_unit(rng, 2), 50)
    assert result.indices.shape == (2, 5)
    assert sorted(result.indices[0]) == list(range(5))


def test_unnormalised_references_are_rejected():
    with pytest.raises(ValueError, match="row 1 has norm 2.000000"):
        ReferenceIndex(np.array([[1.0, 0.0], [0.0, 2.0]]))


def _segment_references(rng):
    """12 performances of 1–4 segments each, in 5 works; the rows of one performance are not contiguous."""
    segments_per_perf = np.array([1, 3, 2, 4, 1, 2, 3, 1, 2, 2, 1, 3])
    segment_perf = rng.permutation(np.repeat(np.arange(12), segments_per_perf))
    perf_work = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4, 2])
    return _unit(rng, segment_perf.size), segment_perf, perf_work


@pytest.mark.parametrize("chunk_rows", [65536, 4])
def test_perf_and_work_search_equal_brute_force_min_over_segments(chunk_rows):
    rng = np.random.default_rng(2)
    embeddings, segment_perf, perf_work = _segment_references(rng)
    queries = [_unit(rng, n) for n in (1, 4, 2)]
    index = PerformanceIndex(embeddings, segment_perf, perf_work, chunk_rows=chunk_rows)
    perf_tracks = [embeddings[segment_perf == p] for p in range(12)]
    perf_distance = min_segment_distance(queries, perf_tracks).astype(np.float64)  # [3, 12]
    work_distance = np.stack([perf_distance[:, perf_work == w].min(axis=1) for w in range(5)], axis=1)

    perfs = index.search_perfs(queries, 5)
    expected_perfs = np.argsort(perf_distance, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(perfs.indices, expected_perfs)
    np.testing.assert_allclose(perfs.distances, np.take_along_axis(perf_distance, expected_perfs, 1), atol=1e-6)

    works = index.search_works(queries, 10)  # only 5 works exist
    expected_works = np.argsort(work_distance, axis=1, kind="stable")
    np.testing.assert_array_equal(works.indices, expected_works)
    np.testing.assert_allclose(works.distances, np.take_along_axis(work_distance, expected_works, 1), atol=1e-6)


def test_work_search_finds_the_work_of_a_noisy_copy():
    rng = np.random.default_rng(4)
    embeddings, segment_perf, perf_work = _segment_references(rng)
    copy = embeddings[segment_perf == 6] + 0.05 * rng.normal(size=(3, 16)).astype(np.float32)
    copy /= np.linalg.norm(copy, axis=1, keepdims=True)
    result = PerformanceIndex(embeddings, segment_perf, perf_work).search_works([copy], 1)
    assert result.indices[0, 0] == perf_work[6]


def test_query_dimension_mismatch_is_reported():
    rng = np.random.default_rng(5)
    index = ReferenceIndex(_unit(rng, 4))
    with pytest.raises(ValueError, match="dimension 8, the references 16"):
        index.search(_unit(rng, 1, dim=8), 1)


def test_search_groups_takes_plain_group_ids_and_checks_track_dimensions():
    rng = np.random.default_rng(6)
    embeddings, segment_perf, perf_work = _segment_references(rng)
    queries = [_unit(rng, 2)]
    by_perf = PerformanceIndex(embeddings, segment_perf, perf_work).search_perfs(queries, 4)
    plain = ReferenceIndex(embeddings).search_groups(queries, segment_perf, 4)
    np.testing.assert_array_equal(plain.indices, by_perf.indices)
    with pytest.raises(ValueError, match="query track 1 has dimension 8, track 0 has 16"):
        ReferenceIndex(embeddings).search_groups([_unit(rng, 2), _unit(rng, 2, dim=8)], segment_perf, 4)
    with pytest.raises(ValueError, match="query segments have dimension 8, the references 16"):
        ReferenceIndex(embeddings).search_groups([_unit(rng, 2, dim=8)], segment_perf, 4)
    with pytest.raises(ValueError, match="group ids must be 25 integers"):
        ReferenceIndex(embeddings).search_groups(queries, segment_perf[:-1], 4)
