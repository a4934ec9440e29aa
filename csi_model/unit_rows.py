"""The one check every cosine consumer shares: embeddings arrive as unit-length rows.

Search, metrics, calibration and centroids all read 1 − a·b as a cosine distance, which is only true for unit
vectors; a raw (unnormalised) embedding slipped in by mistake would silently skew every score, so it is refused
with the offending row named.
"""

from __future__ import annotations

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
