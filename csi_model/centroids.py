"""One centroid per work: the spherical mean of its performances' unit embeddings (see docs/reference_tool.md).

Works are the catalog's integer work ids (the reference tool guessed them from perf-id prefixes).
The coherence (length of the plain mean) says how tightly a work's performances agree; the radius
mean(d) + 1.5·std(d) of the member distances d = 1 − member·centroid is a per-work spread summary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csi_model.unit_rows import require_unit_rows

RADIUS_STDS = 1.5
_DEGENERATE_MEAN = 1e-8
_NORM_TOLERANCE = 1e-4


@dataclass(frozen=True)
class WorkCentroids:
    """Row w describes work ``work_ids[w]``; works are in ascending id order."""

    work_ids: np.ndarray  # [W] the catalog's work ids
    centroids: np.ndarray  # [W, D] float32 unit vectors
    radii: np.ndarray  # [W] float64
    coherence: np.ndarray  # [W] float64 in [0, 1]; 0 when the mean vanished
    n_members: np.ndarray  # [W] int64


def compute_centroids(embeddings: np.ndarray, work_ids: np.ndarray) -> WorkCentroids:
    """Spherical mean, coherence and radius of every work, vectorised over works."""
    embeddings = _checked_unit_rows(embeddings, work_ids)
    works, first_member, member_work, n_members = np.unique(work_ids, return_index=True, return_inverse=True,
                                                            return_counts=True)
    sums = np.zeros((works.size, embeddings.shape[1]))
    np.add.at(sums, member_work, embeddings)  # [W, D] float64
    means = sums / n_members[:, None]
    coherence = np.linalg.norm(means, axis=1)  # [W]
    degenerate = coherence < _DEGENERATE_MEAN
    centroids = np.where(degenerate[:, None], embeddings[first_member],
                         means / np.where(degenerate, 1.0, coherence)[:, None])
    coherence = np.where(degenerate, 0.0, coherence)
    member_distance = 1.0 - np.einsum("nd,nd->n", embeddings, centroids[member_work])  # [N]
    mean_distance = np.bincount(member_work, weights=member_distance) / n_members
    spread = np.bincount(member_work, weights=(member_distance - mean_distance[member_work]) ** 2) / n_members
    return WorkCentroids(work_ids=works, centroids=centroids.astype(np.float32),
                         radii=mean_distance + RADIUS_STDS * np.sqrt(spread), coherence=coherence,
                         n_members=n_members.astype(np.int64))


def _checked_unit_rows(embeddings: np.ndarray, work_ids: np.ndarray) -> np.ndarray:
    embeddings, work_ids = np.asarray(embeddings, dtype=np.float64), np.asarray(work_ids)
    if embeddings.ndim != 2 or work_ids.shape != (embeddings.shape[0],) or work_ids.size == 0:
        raise ValueError(f"need embeddings [N, D] with N ≥ 1 and one work id per row, got {embeddings.shape} "
                         f"and {work_ids.shape}")
    if not np.issubdtype(work_ids.dtype, np.integer):
        raise ValueError(f"work ids must be integers (the catalog's work_id), got dtype {work_ids.dtype}")
    require_unit_rows(embeddings, "centroid embeddings", _NORM_TOLERANCE)
    return embeddings
