"""Retrieval metrics against hand-computed cases and a plain per-query implementation."""

import numpy as np
import pytest

from csi_model.metrics import (bootstrap_metrics, min_segment_distance, pair_mask, per_query_metrics,
                               retrieval_metrics, self_match_mask)

# 3 queries × 4 refs. Query 1 has a 3-way tie that only the stable order (by ref index) resolves to AP 5/6;
# query 2's work has no reference at all.
DISTANCES = np.array([[0.5, 0.1, 0.3, 0.2],
                      [0.2, 0.2, 0.2, 0.1],
                      [0.4, 0.3, 0.2, 0.1]])
QUERY_LABELS = np.array([0, 1, 2])
REF_LABELS = np.array([0, 1, 0, 1])


def test_hand_computed_metrics_with_ties_and_a_query_without_relevant_refs():
    per_query = per_query_metrics(DISTANCES, QUERY_LABELS, REF_LABELS)
    # row 0: order 1,3,2,0 -> rel 0,0,1,1; row 1: order 3,0,1,2 -> rel 1,0,1,0; row 2: nothing relevant.
    np.testing.assert_allclose(per_query.average_precision, [(1 / 3 + 2 / 4) / 2, (1 + 2 / 3) / 2, 0.0])
    np.testing.assert_array_equal(per_query.first_relevant_rank, [3, 1, 0])
    np.testing.assert_array_equal(per_query.hit_at_1, [False, True, False])
    np.testing.assert_allclose(per_query.precision_at_10, [0.2, 0.2, 0.0])
    summary = per_query.summary()
    assert summary.mean_ap == pytest.approx(1.25 / 3)
    assert summary.mr1 == pytest.approx(4 / 3)
    assert summary.hit_rate == pytest.approx(1 / 3)
    assert summary.precision_at_10 == pytest.approx(0.4 / 3)
    assert summary.n_queries == 3


def test_exclusion_mask_skips_listed_cells():
    excluded = pair_mask([(0, 1), (1, 3)], 3, 4)
    per_query = per_query_metrics(DISTANCES, QUERY_LABELS, REF_LABELS, excluded)
    # row 0: order 3,2,0 -> rel 0,1,1; row 1: order 0,1,2 -> rel 0,1,0.
    np.testing.assert_allclose(per_query.average_precision, [(1 / 2 + 2 / 3) / 2, 1 / 2, 0.0])
    np.testing.assert_array_equal(per_query.first_relevant_rank, [2, 2, 0])
    np.testing.assert_array_equal(per_query.hit_at_1, [False, False, False])


def test_topk_smaller_than_the_reference_count_cuts_the_ranking():
    per_query = per_query_metrics(DISTANCES, QUERY_LABELS, REF_LABELS, topk=2)
    # row 0's relevant refs sit at ranks 3 and 4: none within the top 2.
    np.testing.assert_allclose(per_query.average_precision, [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(per_query.first_relevant_rank, [0, 1, 0])


def test_self_match_case_with_a_single_performance_work():
    distances = np.array([[0.0, 0.1, 0.3, 0.4],
                          [0.1, 0.0, 0.2, 0.5],
                          [0.3, 0.2, 0.0, 0.6],
                          [0.4, 0.5, 0.6, 0.0]])
    labels = np.array([0, 0, 1, 2])
    metrics = retrieval_metrics(distances, labels, labels, self_match_mask(4))
    assert (metrics.mean_ap, metrics.mr1, metrics.hit_rate) == pytest.approx((0.5, 0.5, 0.5))
    assert metrics.precision_at_10 == pytest.approx(0.05)
    # Without the mask every track finds itself first.
    assert retrieval_metrics(distances, labels, labels).mean_ap == pytest.approx(1.0)


def test_pair_mask_rejects_pairs_outside_the_matrix():
    with pytest.raises(ValueError, match=r"\(3, 0\) is outside the 3×4"):
        pair_mask([(0, 0), (3, 0)], 3, 4)


def test_non_finite_distances_outside_the_mask_are_rejected():
    distances = DISTANCES.copy()
    distances[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        per_query_metrics(distances, QUERY_LABELS, REF_LABELS)
    mask = np.zeros_like(distances, dtype=bool)
    mask[0, 0] = True
    assert per_query_metrics(distances, QUERY_LABELS, REF_LABELS, mask).first_relevant_rank[0] == 3


def _reference_metrics(distances, query_labels, ref_labels, excluded, topk):
    """The definition of spec §6.3, one query at a time with Python's stable ``sorted``."""
    rows = []
    for q in range(len(distances)):
        kept = [j for j in range(distances.shape[1]) if not excluded[q, j]]
        ranking = sorted(kept, key=lambda j: distances[q, j])[:topk]
        relevant = [ref_labels[j] == query_labels[q] for j in ranking]
        hits, precision_sum, first = 0, 0.0, 0
        for rank, is_relevant in enumerate(relevant, start=1):
            if is_relevant:
                hits += 1
                precision_sum += hits / rank
                first = first or rank
        rows.append((precision_sum / hits if hits else 0.0, first, bool(relevant and relevant[0]),
                     sum(relevant[:10]) / 10))
    return np.array(rows, dtype=np.float64)


@pytest.mark.parametrize("topk", [10000, 7])
@pytest.mark.parametrize("n_labels", [12, 2])  # few relevant refs per query (ranked by counting) or many (sorted)
def test_vectorised_metrics_equal_a_per_query_loop(topk, n_labels):
    rng = np.random.default_rng(3)
    # Distances rounded to 1 decimal: many ties, so the stable order matters.
    distances = np.round(rng.random((50, 60)), 1)
    query_labels, ref_labels = rng.integers(0, n_labels, 50), rng.integers(0, n_labels, 60)
    excluded = rng.random((50, 60)) < 0.1
    per_query = per_query_metrics(distances, query_labels, ref_labels, excluded, topk)
    expected = _reference_metrics(distances, query_labels, ref_labels, excluded, topk)
    np.testing.assert_allclose(per_query.average_precision, expected[:, 0])
    np.testing.assert_array_equal(per_query.first_relevant_rank, expected[:, 1])
    np.testing.assert_array_equal(per_query.hit_at_1, expected[:, 2].astype(bool))
    np.testing.assert_allclose(per_query.precision_at_10, expected[:, 3])


def test_bootstrap_is_deterministic_and_brackets_the_point_estimate():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(20), 3)
    distances = rng.random((60, 60)) + 0.5 * (labels[:, None] != labels[None, :])
    per_query = per_query_metrics(distances, labels, labels, self_match_mask(60))
    first = bootstrap_metrics(per_query, labels, n_bootstrap=200)
    assert first == bootstrap_metrics(per_query, labels, n_bootstrap=200)
    assert first != bootstrap_metrics(per_query, labels, n_bootstrap=200, seed=1)
    point = per_query.summary()
    for name, value in [("mean_ap", point.mean_ap), ("mr1", point.mr1), ("hit_rate", point.hit_rate),
                        ("precision_at_10", point.precision_at_10)]:
        interval = first[name]
        assert interval.point == pytest.approx(value)
        assert interval.ci_low <= interval.point <= interval.ci_high
        assert interval.ci_low < interval.ci_high and interval.std > 0


def test_bootstrap_replicate_resamples_whole_works():
    labels = np.array([4, 4, 9, 9, 9, 1])
    distances = np.random.default_rng(8).random((6, 6))
    per_query = per_query_metrics(distances, labels, labels, self_match_mask(6))
    interval = bootstrap_metrics(per_query, labels, n_bootstrap=1, seed=77)["mean_ap"]
    works = np.unique(labels)
    drawn = works[np.random.default_rng(77).integers(0, works.size, size=works.size)]
    rows = np.concatenate([np.flatnonzero(labels == work) for work in drawn])
    assert interval.mean == pytest.approx(per_query.average_precision[rows].mean())


def _unit(rng, rows, dim=8):
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.mark.parametrize("max_cells", [1 << 24, 10])
def test_min_segment_distance_equals_a_brute_force_loop(max_cells):
    rng = np.random.default_rng(11)
    queries = [_unit(rng, n) for n in (1, 3, 2, 5)]
    refs = [_unit(rng, n) for n in (2, 1, 4)]
    distances = min_segment_distance(queries, refs, max_cells=max_cells)
    expected = [[min(1.0 - float(a @ b) for a in q for b in r) for r in refs] for q in queries]
    np.testing.assert_allclose(distances, expected, atol=1e-6)


def test_min_segment_distance_rejects_unnormalised_segments():
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match=r"query segments \(all tracks stacked\): row 2 has norm 2\.0+ "):
        min_segment_distance([_unit(rng, 2), 2.0 * _unit(rng, 2)], [_unit(rng, 1)])
