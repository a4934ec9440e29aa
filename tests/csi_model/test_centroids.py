"""Work centroids by hand on 2-D unit vectors, plus agreement with a per-work loop."""

import numpy as np
import pytest

from csi_model.centroids import compute_centroids

HALF_SQRT2 = np.sqrt(0.5)


def test_hand_computed_centroids_radii_and_coherence():
    embeddings = np.array([[1.0, 0.0],   # work 7
                           [1.0, 0.0],   # work 3 (first member: the fallback centroid)
                           [0.6, 0.8],   # work 5 (alone)
                           [0.0, 1.0],   # work 7
                           [-1.0, 0.0]])  # work 3: the mean of work 3 vanishes
    work_ids = np.array([7, 3, 5, 7, 3])
    result = compute_centroids(embeddings, work_ids)
    np.testing.assert_array_equal(result.work_ids, [3, 5, 7])
    np.testing.assert_array_equal(result.n_members, [2, 1, 2])
    np.testing.assert_allclose(result.centroids, [[1.0, 0.0], [0.6, 0.8], [HALF_SQRT2, HALF_SQRT2]], atol=1e-7)
    np.testing.assert_allclose(result.coherence, [0.0, 1.0, HALF_SQRT2])
    # work 3: d = [0, 2] -> 1 + 1.5·1; work 5: d = 0; work 7: d = 1 − √½ twice, std 0.
    np.testing.assert_allclose(result.radii, [2.5, 0.0, 1.0 - HALF_SQRT2], atol=1e-12)
    assert result.centroids.dtype == np.float32


def test_vectorised_centroids_equal_a_per_work_loop():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(200, 12))
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    work_ids = rng.integers(0, 30, size=200)
    result = compute_centroids(embeddings, work_ids)
    for row, work in enumerate(result.work_ids):
        members = embeddings[work_ids == work]
        mean = members.mean(axis=0)
        centroid = mean / np.linalg.norm(mean)
        distances = 1.0 - members @ centroid
        np.testing.assert_allclose(result.centroids[row], centroid, atol=1e-6)
        assert result.coherence[row] == pytest.approx(np.linalg.norm(mean))
        assert result.radii[row] == pytest.approx(distances.mean() + 1.5 * distances.std())


def test_non_unit_embeddings_are_rejected():
    with pytest.raises(ValueError, match="row 1 has norm 0.500000"):
        compute_centroids(np.array([[1.0, 0.0], [0.5, 0.0]]), np.array([0, 1]))
