"""Retrieval metrics: hand-computed cases, properties any correct ranking metric has (checked on many random
matrices drawn with a seeded numpy generator), and agreement with a plain per-query implementation."""

import numpy as np
import pytest

from csi_model.metrics import (
    NoAnswerableQueries,
    answerable_queries,
    bootstrap_metrics,
    min_segment_distance,
    pair_mask,
    per_query_metrics,
    retrieval_metrics,
    self_match_mask,
)

# 3 queries × 4 refs. Query 1 has a 3-way tie that only the stable order (by ref index) resolves to AP 5/6;
# query 2's work has no reference at all.
DISTANCES = np.array([[0.5, 0.1, 0.3, 0.2],
                      [0.2, 0.2, 0.2, 0.1],
                      [0.4, 0.3, 0.2, 0.1]])
QUERY_LABELS = np.array([0, 1, 2])
REF_LABELS = np.array([0, 1, 0, 1])
N_RANDOM_CASES = 60


def test_hand_computed_metrics_with_ties_and_an_unanswerable_query():
    per_query = per_query_metrics(DISTANCES, QUERY_LABELS, REF_LABELS)
    # row 0: order 1,3,2,0 -> rel 0,0,1,1; row 1: order 3,0,1,2 -> rel 1,0,1,0; row 2: nothing relevant.
    np.testing.assert_allclose(per_query.average_precision, [(1 / 3 + 2 / 4) / 2, (1 + 2 / 3) / 2, np.nan])
    np.testing.assert_array_equal(per_query.first_relevant_rank, [3, 1, 0])
    np.testing.assert_array_equal(per_query.hit_at_1, [False, True, False])
    np.testing.assert_allclose(per_query.precision_at_10, [0.2, 0.2, np.nan])
    np.testing.assert_array_equal(per_query.answerable, [True, True, False])
    summary = per_query.summary()
    assert summary.mean_ap == pytest.approx(1.25 / 2)
    assert summary.mr1 == pytest.approx(2.0)
    assert summary.hit_rate == pytest.approx(1 / 2)
    assert summary.precision_at_10 == pytest.approx(0.2)
    assert (summary.n_queries, summary.n_unanswerable, summary.n_scored) == (3, 1, 2)
    assert summary.to_dict()["n_unanswerable"] == 1 and summary.to_dict()["n_scored"] == 2


def test_exclusion_mask_skips_listed_cells():
    excluded = pair_mask([(0, 1), (1, 3)], 3, 4)
    per_query = per_query_metrics(DISTANCES, QUERY_LABELS, REF_LABELS, excluded)
    # row 0: order 3,2,0 -> rel 0,1,1; row 1: order 0,1,2 -> rel 0,1,0.
    np.testing.assert_allclose(per_query.average_precision, [(1 / 2 + 2 / 3) / 2, 1 / 2, np.nan])
    np.testing.assert_array_equal(per_query.first_relevant_rank, [2, 2, 0])
    np.testing.assert_array_equal(per_query.hit_at_1, [False, False, False])


def test_topk_cut_keeps_the_true_rank_of_a_match_beyond_it():
    per_query = per_query_metrics(DISTANCES, QUERY_LABELS, REF_LABELS, topk=2)
    # row 0's relevant refs sit at ranks 3 and 4: none within the top 2, but its first match is still rank 3.
    np.testing.assert_allclose(per_query.average_precision, [0.0, 1.0, np.nan])
    np.testing.assert_array_equal(per_query.first_relevant_rank, [3, 1, 0])
    assert per_query.summary().mr1 == pytest.approx(2.0)


def test_perfect_model_with_a_single_performance_work_scores_one():
    labels = np.array([0, 0, 1, 1, 2])
    distances = (labels[:, None] != labels[None, :]).astype(np.float64)  # 0 within a work, 1 across
    per_query = per_query_metrics(distances, labels, labels, self_match_mask(5))
    metrics = per_query.summary()
    assert (metrics.mean_ap, metrics.mr1, metrics.hit_rate) == (1.0, 1.0, 1.0)
    assert metrics.precision_at_10 == pytest.approx(0.1) and metrics.n_unanswerable == 1
    for interval in bootstrap_metrics(per_query, labels, n_bootstrap=100).values():
        assert interval.ci_low == interval.point == interval.ci_high
    # Without the mask every track finds itself first, and every query is answerable.
    assert retrieval_metrics(distances, labels, labels).n_unanswerable == 0


def test_no_answerable_query_is_an_error_not_a_zero_score():
    labels = np.array([0, 1, 2])
    with pytest.raises(NoAnswerableQueries, match="none of its 3 queries"):
        retrieval_metrics(np.ones((3, 3)), labels, labels, self_match_mask(3))
    with pytest.raises(NoAnswerableQueries):  # the match exists but is the excluded cell itself
        per_query_metrics(np.zeros((1, 2)), np.array([5]), np.array([5, 6]), np.array([[True, False]]))
    with pytest.raises(NoAnswerableQueries, match="no query rows"):
        retrieval_metrics(np.zeros((0, 3)), np.array([], dtype=np.int64), np.array([0, 1, 2]))


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


# -- properties on random matrices -----------------------------------------------------------------------------


def _random_case(rng, ties=False, self_set=None):
    """(distances, query labels, ref labels, excluded) of random size; a few works, some with one performance."""
    self_set = rng.random() < 0.5 if self_set is None else self_set
    n_queries = int(rng.integers(1, 25))
    n_refs = n_queries if self_set else int(rng.integers(1, 30))
    n_labels = int(rng.integers(1, 10))
    query_labels = rng.integers(0, n_labels, n_queries)
    ref_labels = query_labels if self_set else rng.integers(0, n_labels, n_refs)
    distances = rng.random((n_queries, n_refs))
    if ties:
        distances = np.round(distances, 1)
    excluded = self_match_mask(n_queries) if self_set else rng.random((n_queries, n_refs)) < 0.1
    return distances, query_labels, ref_labels, excluded


def _random_cases(seed, **kwargs):
    """Random cases with at least one answerable query (the metrics are undefined otherwise)."""
    rng = np.random.default_rng(seed)
    found = 0
    while found < N_RANDOM_CASES:
        case = _random_case(rng, **kwargs)
        if answerable_queries(case[1], case[2], case[3]).any():
            found += 1
            yield case


def _reference_metrics(distances, query_labels, ref_labels, excluded, topk):
    """The definition, one query at a time with Python's stable ``sorted``: rows of answerable queries only."""
    rows = []
    for q in range(len(distances)):
        kept = [j for j in range(distances.shape[1]) if not excluded[q, j]]
        ranking = sorted(kept, key=lambda j: distances[q, j])
        relevant = [ref_labels[j] == query_labels[q] for j in ranking]
        if not any(relevant):
            continue
        hits, precision_sum = 0, 0.0
        for rank, is_relevant in enumerate(relevant[:topk], start=1):
            if is_relevant:
                hits += 1
                precision_sum += hits / rank
        rows.append((precision_sum / hits if hits else 0.0, relevant.index(True) + 1, bool(relevant[0]),
                     sum(relevant[:min(10, topk)]) / 10))
    return np.array(rows, dtype=np.float64).reshape(-1, 4)


@pytest.mark.parametrize("topk", [10000, 3])
@pytest.mark.parametrize("n_labels", [12, 2])  # few relevant refs per query (ranked by counting) or many (sorted)
def test_vectorised_metrics_equal_a_per_query_loop(topk, n_labels):
    rng = np.random.default_rng(3)
    # Distances rounded to 1 decimal: many ties, so the stable order matters.
    distances = np.round(rng.random((50, 60)), 1)
    query_labels, ref_labels = rng.integers(0, n_labels, 50), rng.integers(0, n_labels, 60)
    excluded = rng.random((50, 60)) < 0.1
    per_query = per_query_metrics(distances, query_labels, ref_labels, excluded, topk)
    expected = _reference_metrics(distances, query_labels, ref_labels, excluded, topk)
    answerable = per_query.answerable
    np.testing.assert_allclose(per_query.average_precision[answerable], expected[:, 0])
    np.testing.assert_array_equal(per_query.first_relevant_rank[answerable], expected[:, 1])
    np.testing.assert_array_equal(per_query.hit_at_1[answerable], expected[:, 2].astype(bool))
    np.testing.assert_allclose(per_query.precision_at_10[answerable], expected[:, 3])


@pytest.mark.parametrize("topk", [10000, 4])
def test_summary_agrees_with_a_slow_reference_on_random_data(topk):
    for distances, query_labels, ref_labels, excluded in _random_cases(21, ties=True):
        summary = retrieval_metrics(distances, query_labels, ref_labels, excluded, topk)
        expected = _reference_metrics(distances, query_labels, ref_labels, excluded, topk)
        np.testing.assert_allclose([summary.mean_ap, summary.mr1, summary.hit_rate, summary.precision_at_10],
                                   expected.mean(axis=0), rtol=1e-12)
        assert summary.n_scored == len(expected) and summary.n_queries == len(distances)


def test_metric_ranges_mr1_at_least_one_and_map_in_zero_one():
    for case in _random_cases(22, ties=True):
        per_query = per_query_metrics(*case)
        scored = per_query.answerable
        assert (per_query.first_relevant_rank[scored] >= 1).all()
        assert ((per_query.average_precision[scored] > 0) & (per_query.average_precision[scored] <= 1)).all()
        summary = per_query.summary()
        assert summary.mr1 >= 1.0 and 0.0 < summary.mean_ap <= 1.0 and 0.0 <= summary.hit_rate <= 1.0


def _ideal_distances(query_labels, ref_labels, rng):
    """Every relevant reference nearer than every irrelevant one, with random spacing inside each group."""
    relevant = ref_labels[None, :] == query_labels[:, None]
    return np.where(relevant, 0.0, 1.0) + 0.5 * rng.random(relevant.shape)


def test_a_perfect_ranking_scores_map_mr1_and_hit_rate_one():
    rng = np.random.default_rng(23)
    for _, query_labels, ref_labels, excluded in _random_cases(23):
        metrics = retrieval_metrics(_ideal_distances(query_labels, ref_labels, rng), query_labels, ref_labels,
                                    excluded)
        assert (metrics.mean_ap, metrics.mr1, metrics.hit_rate) == (1.0, 1.0, 1.0)


def test_permuting_references_changes_nothing_without_ties():
    rng = np.random.default_rng(24)
    for distances, query_labels, ref_labels, excluded in _random_cases(24, self_set=False):
        order = rng.permutation(len(ref_labels))
        before = per_query_metrics(distances, query_labels, ref_labels, excluded)
        after = per_query_metrics(distances[:, order], query_labels, ref_labels[order], excluded[:, order])
        for name in ("average_precision", "first_relevant_rank", "hit_at_1", "precision_at_10", "answerable"):
            np.testing.assert_array_equal(getattr(before, name), getattr(after, name))


def test_permuting_queries_permutes_rows_and_keeps_the_summary():
    rng = np.random.default_rng(25)
    for distances, query_labels, ref_labels, excluded in _random_cases(25, ties=True):
        order = rng.permutation(len(query_labels))
        before = per_query_metrics(distances, query_labels, ref_labels, excluded)
        after = per_query_metrics(distances[order], query_labels[order], ref_labels, excluded[order])
        np.testing.assert_array_equal(before.first_relevant_rank[order], after.first_relevant_rank)
        np.testing.assert_array_equal(before.average_precision[order], after.average_precision)
        for a, b in zip(before.summary().to_dict().values(), after.summary().to_dict().values()):
            assert a == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("transform", [lambda d: 3.0 * d + 7.0, np.exp, lambda d: d ** 3, np.sqrt],
                         ids=["affine", "exp", "cube", "sqrt"])
def test_strictly_increasing_transforms_of_distances_change_nothing(transform):
    for distances, query_labels, ref_labels, excluded in _random_cases(26, ties=True):
        before = retrieval_metrics(distances, query_labels, ref_labels, excluded)
        assert retrieval_metrics(transform(distances), query_labels, ref_labels, excluded) == before


def test_an_unanswerable_query_changes_nothing_but_the_count():
    rng = np.random.default_rng(27)
    for distances, query_labels, ref_labels, excluded in _random_cases(27, self_set=False):
        before = per_query_metrics(distances, query_labels, ref_labels, excluded)
        new_work = np.array([ref_labels.max() + query_labels.max() + 1])  # a work with no reference
        row = rng.random((1, distances.shape[1]))
        after = per_query_metrics(np.vstack([distances, row]), np.concatenate([query_labels, new_work]),
                                  ref_labels, np.vstack([excluded, np.zeros_like(row, dtype=bool)]))
        b, a = before.summary(), after.summary()
        assert (a.mean_ap, a.mr1, a.hit_rate, a.precision_at_10) == (b.mean_ap, b.mr1, b.hit_rate,
                                                                     b.precision_at_10)
        assert (a.n_queries, a.n_unanswerable, a.n_scored) == (b.n_queries + 1, b.n_unanswerable + 1, b.n_scored)
        assert (bootstrap_metrics(after, np.concatenate([query_labels, new_work]), n_bootstrap=20)
                == bootstrap_metrics(before, query_labels, n_bootstrap=20))


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


def test_bootstrap_replicates_are_means_over_answerable_queries_of_whole_works():
    labels = np.array([4, 4, 9, 9, 9, 1])  # work 1 has one performance: unanswerable, never drawn
    distances = np.random.default_rng(8).random((6, 6))
    per_query = per_query_metrics(distances, labels, labels, self_match_mask(6))
    interval = bootstrap_metrics(per_query, labels, n_bootstrap=1, seed=77)["mean_ap"]
    works = np.array([4, 9])
    drawn = works[np.random.default_rng(77).integers(0, works.size, size=works.size)]
    rows = np.concatenate([np.flatnonzero(labels == work) for work in drawn])
    assert interval.mean == pytest.approx(per_query.average_precision[rows].mean())
    for b in bootstrap_metrics(per_query, labels, n_bootstrap=200).values():
        assert np.isfinite([b.point, b.ci_low, b.ci_high]).all()
    assert bootstrap_metrics(per_query, labels, n_bootstrap=200)["mr1"].ci_low >= 1.0


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
