"""Embeddings as unit-length rows, and tracks as ragged stacks of them: the input every cosine consumer shares.

Search, metrics, calibration and centroids all read 1 − a·b as a cosine distance, which is only true for unit
vectors; a raw (unnormalised) embedding slipped in by mistake would silently skew every score, so it is refused
with the offending row named.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def require_unit_rows(vectors: np.ndarray, role: str, tolerance: float = 1e-3) -> None:
    """Raise ValueError naming the first row whose L2 norm is off 1 by more than ``tolerance``."""
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise ValueError(f"{role} must be a 2-D [rows, dim] array, got shape {vectors.shape}")
    norms = np.linalg.norm(vectors, axis=1)
    off = ~(np.abs(norms - 1.0) <= tolerance)  # NaN rows count as off
    if off.any():
        row = int(np.argmax(off))
        raise ValueError(f"{role}: row {row} has norm {norms[row]:.6f} ({int(off.sum())} rows off unit length "
                         f"by more than {tolerance}); L2-normalise the embeddings first")


def stack_tracks(tracks: Sequence[np.ndarray], role: str) -> tuple[np.ndarray, np.ndarray]:
    """Tracks (each [S_i, D] unit segment rows) as one float32 [ΣS_i, D] matrix plus the segment counts [T]."""
    if len(tracks) == 0:
        raise ValueError(f"no {role} tracks given")
    arrays = [np.atleast_2d(np.asarray(track, dtype=np.float32)) for track in tracks]
    counts = np.array([len(array) if array.size else 0 for array in arrays])
    if (counts == 0).any():
        raise ValueError(f"{role} track {int(np.argmin(counts))} has no segments")
    dims = np.array([array.shape[1] for array in arrays])
    if (dims != dims[0]).any():
        track = int(np.argmax(dims != dims[0]))
        raise ValueError(f"{role} track {track} has dimension {dims[track]}, track 0 has {dims[0]}")
    stacked = np.concatenate(arrays)
    require_unit_rows(stacked, f"{role} segments (all tracks stacked)")
    return stacked, counts


def padded_rows(counts: np.ndarray) -> np.ndarray:
    """[T, S_max] row indices into the stacked segments; short tracks repeat their last row.

    Repeating a row leaves any max/min over a track's segments unchanged, so ragged tracks become one
    rectangular batch without masks."""
    first_rows = np.cumsum(counts) - counts
    return first_rows[:, None] + np.minimum(np.arange(counts.max())[None, :], counts[:, None] - 1)
