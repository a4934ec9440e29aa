"""Null-distribution calibration on clustered synthetic embeddings: both pair paths, anchors, scores, JSON, and
the two p-values (per pair, per search) with the floor a finite null sample imposes."""

import json

import numpy as np
import pytest

from csi_model.calibration import (
    Calibration,
    compute_calibration,
    compute_track_calibration,
    cross_work_pairs,
    ecdf_probabilities,
)
from csi_model.metrics import min_segment_distance


def _clustered(rng, n_works=10, per_work=5, dim=16, spread=0.1):
    """Performances of one work scatter tightly around that work's direction."""
    centres = rng.normal(size=(n_works, dim))
    work_ids = np.repeat(np.arange(n_works) * 3 + 100, per_work)  # ids need not be 0..W-1
    vectors = np.repeat(centres, per_work, axis=0) + spread * rng.normal(size=(n_works * per_work, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32), work_ids


def test_enumeration_path_lists_every_cross_work_pair_once():
    rng = np.random.default_rng(0)
    work_ids = rng.permutation(np.repeat([3, 8, 1, 5], [4, 1, 3, 2]))
    first, second = cross_work_pairs(work_ids, n_pairs=10_000)
    found = {tuple(sorted(pair)) for pair in zip(first.tolist(), second.tolist())}
    expected = {(i, j) for i in range(10) for j in range(i + 1, 10) if work_ids[i] != work_ids[j]}
    assert len(first) == len(expected) == (10 * 10 - (16 + 1 + 9 + 4)) // 2
    assert found == expected


def test_sampling_path_never_pairs_a_work_with_itself():
    rng = np.random.default_rng(1)
    work_ids = rng.integers(0, 4, size=400)  # few works: many same-work candidates get rejected
    first, second = cross_work_pairs(work_ids, n_pairs=3000, seed=9)
    assert first.size == second.size == 3000
    assert (work_ids[first] != work_ids[second]).all()
    again = cross_work_pairs(work_ids, n_pairs=3000, seed=9)
    np.testing.assert_array_equal(first, again[0])


def test_calibration_from_enumerated_pairs_matches_all_cross_work_distances():
    rng = np.random.default_rng(2)
    embeddings, work_ids = _clustered(rng)
    calibration = compute_calibration(embeddings, work_ids, n_pairs=50_000)
    distances = 1.0 - embeddings.astype(np.float64) @ embeddings.T.astype(np.float64)
    cross = distances[np.triu(work_ids[:, None] != work_ids[None, :], k=1)]
    assert calibration.n_pairs == cross.size == (50 * 50 - 10 * 25) // 2
    assert calibration.mu == pytest.approx(cross.mean(), abs=1e-6)
    assert calibration.sigma == pytest.approx(cross.std(ddof=1), abs=1e-6)
    assert calibration.ecdf_quantiles[500] == pytest.approx(np.sort(cross)[round(0.5 * (cross.size - 1))],
                                                            abs=1e-6)


def test_sampled_calibration_scores_same_work_pairs_as_matches():
    rng = np.random.default_rng(3)
    embeddings, work_ids = _clustered(rng, n_works=40, per_work=6)
    calibration = compute_calibration(embeddings, work_ids, n_pairs=2000)
    assert calibration.n_pairs == 2000
    same_work = 1.0 - float(embeddings[0] @ embeddings[1])
    other_work = 1.0 - float(embeddings[0] @ embeddings[-1])
    assert calibration.p_value(same_work) < 0.01 < calibration.p_value(other_work)
    assert calibration.z_score(same_work) < -2.0
    assert calibration.z_score(calibration.mu) == pytest.approx(0.0)
    grid = np.linspace(0.0, 2.0, 401)
    p_values = calibration.p_value(grid)
    assert (np.diff(p_values) >= 0).all()
    assert p_values[0] == calibration.p_floor == 1 / 2001 and p_values[-1] == pytest.approx(1 - 1e-6)


def test_ecdf_anchor_probabilities():
    probs = ecdf_probabilities(1001)
    assert probs.size == 1001
    assert probs[0] == pytest.approx(1e-6) and probs[500] == 0.5 and probs[-1] == pytest.approx(1 - 1e-6)
    assert (np.diff(probs) > 0).all()
    np.testing.assert_allclose(probs[:500], 1.0 - probs[::-1][:500])
    np.testing.assert_allclose(np.diff(np.log(probs[:500])), np.log(0.5 / 1e-6) / 500)


def test_round_trip_through_json():
    rng = np.random.default_rng(4)
    calibration = compute_calibration(*_clustered(rng), n_pairs=300)
    restored = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert restored.mu == calibration.mu and restored.n_quantiles == 1001
    np.testing.assert_array_equal(restored.ecdf_quantiles, calibration.ecdf_quantiles)
    np.testing.assert_array_equal(restored.p_value([0.1, 0.9]), calibration.p_value([0.1, 0.9]))


def test_bad_inputs_give_clear_errors():
    rng = np.random.default_rng(5)
    embeddings, work_ids = _clustered(rng, n_works=2, per_work=3)
    with pytest.raises(ValueError, match="at least 2 different works"):
        compute_calibration(embeddings, np.zeros(6, dtype=np.int64))
    with pytest.raises(ValueError, match="row 2 has norm"):
        compute_calibration(embeddings * np.array([1, 1, 3, 1, 1, 1])[:, None], work_ids)
    with pytest.raises(ValueError, match="must be integers"):
        compute_calibration(embeddings, work_ids.astype(str))
    with pytest.raises(ValueError, match="record lacks"):
        Calibration.from_dict({"mu": 1.0})


def test_a_dominating_work_makes_sampling_fail_loudly():
    work_ids = np.zeros(200_000, dtype=np.int64)
    work_ids[:2] = 1  # 400k cross-work pairs among 2·10^10: too rare to sample 300k of them
    with pytest.raises(ValueError, match="one work dominates"):
        cross_work_pairs(work_ids, n_pairs=300_000)


def test_track_calibration_uses_the_min_segment_pair_distance():
    rng = np.random.default_rng(6)
    vectors, work_ids = _clustered(rng, n_works=6, per_work=3)
    counts = rng.integers(1, 4, size=work_ids.size)
    tracks = np.split(vectors[rng.integers(0, len(vectors), counts.sum())], np.cumsum(counts)[:-1])
    calibration = compute_track_calibration(tracks, work_ids, n_pairs=10_000)  # enumerates all 135 pairs
    distances = min_segment_distance(tracks, tracks).astype(np.float64)
    cross = distances[np.triu(work_ids[:, None] != work_ids[None, :], k=1)]
    assert calibration.n_pairs == cross.size == 135
    assert calibration.mu == pytest.approx(cross.mean(), abs=1e-6)
    assert calibration.sigma == pytest.approx(cross.std(ddof=1), abs=1e-6)


def test_track_calibration_of_single_segment_tracks_equals_the_vector_calibration():
    rng = np.random.default_rng(7)
    vectors, work_ids = _clustered(rng, n_works=30, per_work=4)
    by_vector = compute_calibration(vectors, work_ids, n_pairs=1000)
    by_track = compute_track_calibration(list(vectors[:, None, :]), work_ids, n_pairs=1000)
    assert by_track.mu == pytest.approx(by_vector.mu) and by_track.sigma == pytest.approx(by_vector.sigma)
    np.testing.assert_allclose(by_track.ecdf_quantiles, by_vector.ecdf_quantiles, atol=1e-6)


@pytest.mark.parametrize("n_pairs", [45, 2000])
def test_p_never_goes_below_what_the_null_sample_supports(n_pairs):
    rng = np.random.default_rng(8)
    calibration = compute_calibration(*_clustered(rng, n_works=20, per_work=3), n_pairs=n_pairs)
    floor = 1.0 / (calibration.n_pairs + 1)
    distances = np.concatenate([[-1.0, 0.0, float(calibration.ecdf_quantiles[0]) - 1e-6],
                                rng.uniform(-0.5, 2.5, 500)])
    p_pair = calibration.p_value(distances)
    assert calibration.p_floor == floor and (p_pair >= floor).all()
    below_every_null_pair = distances < calibration.ecdf_quantiles[0]
    assert (p_pair[below_every_null_pair] == floor).all() and calibration.at_floor(distances[:3]).all()
    assert not calibration.at_floor(calibration.mu) and calibration.p_value(calibration.mu) > floor
    for n_compared in (1, 7, 300):
        search = calibration.search_p_value(distances, n_compared)
        assert search.min() == pytest.approx(1.0 - (1.0 - floor) ** n_compared)


def test_search_p_is_per_pair_p_corrected_for_the_number_of_references():
    rng = np.random.default_rng(9)
    calibration = compute_calibration(*_clustered(rng, n_works=20, per_work=3), n_pairs=1000)
    distances = np.sort(rng.uniform(0.0, 2.0, 200))
    p_pair = calibration.p_value(distances)
    np.testing.assert_allclose(calibration.search_p_value(distances, 1), p_pair, rtol=1e-12)
    np.testing.assert_allclose(calibration.search_p_value(distances, 50), 1.0 - (1.0 - p_pair) ** 50, rtol=1e-9)
    by_n = np.stack([calibration.search_p_value(distances, n) for n in (1, 10, 100, 1000)])
    assert (np.diff(by_n, axis=0) >= 0).all() and (np.diff(by_n, axis=1) >= 0).all()
    assert ((by_n >= 0) & (by_n <= 1)).all()
    with pytest.raises(ValueError, match="at least 1 reference"):
        calibration.search_p_value(0.5, 0)


def test_wrong_top_matches_do_not_get_small_search_p_values():
    """Queries of works absent from the references: their best match is chance, and its search p must look it,
    while right matches (another performance of the query's work is a reference) still get small ones."""
    rng = np.random.default_rng(10)
    vectors, work_ids = _clustered(rng, n_works=60, per_work=4, spread=0.5)
    refs, ref_works = vectors[:160], work_ids[:160]  # 40 works; the other 20 are never referenced
    calibration = compute_calibration(refs, ref_works, n_pairs=20_000)
    best_wrong = (1.0 - vectors[160:].astype(np.float64) @ refs.T).min(axis=1)  # [80]
    assert calibration.p_value(best_wrong).mean() < 0.05  # per pair, chance matches look significant...
    wrong = calibration.search_p_value(best_wrong, len(refs))  # ...per search they do not
    assert wrong.mean() > 0.3 and (wrong < 0.05).mean() <= 0.1
    to_others = 1.0 - refs[::4].astype(np.float64) @ refs.T  # [40, 160]: one performance of each work ...
    to_others[np.arange(40), np.arange(0, 160, 4)] = np.inf  # ... against every other reference
    right = calibration.search_p_value(to_others.min(axis=1), len(refs) - 1)
    assert np.median(right) < 0.05 and right.mean() < wrong.mean() / 3
