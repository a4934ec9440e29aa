"""t-SNE map of a track × track distance matrix, coloured by work, saved as a PNG.

The distances are used as a precomputed metric (the reference tool fed matrix rows to t-SNE as if they were
features), colours scale to any number of works (it crashed below 6), and works never seen in training
are ringed so a reader can judge generalisation at a glance.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.manifold import TSNE

from csi_model.atomic import atomic_path

MARKERS = ("o", "s", "^", "p", "x", "D")
DEFAULT_PERPLEXITY = 30.0


def tsne_embedding(distances: np.ndarray, excluded: np.ndarray | None = None,
                   perplexity: float = DEFAULT_PERPLEXITY, random_state: int = 0) -> np.ndarray:
    """2-D coordinates [N, 2] of N tracks from their square distance matrix.

    Excluded cells (self matches, ``query_in_ref`` pairs: the same recording) become distance 0, as does the
    diagonal; tiny negative rounding errors of 1 − cos are clipped to 0 so TSNE accepts the matrix.
    """
    distances = np.array(distances, dtype=np.float64)
    if distances.ndim != 2 or distances.shape[0] != distances.shape[1] or distances.shape[0] < 2:
        raise ValueError(f"t-SNE needs a square distance matrix of at least 2 tracks, got {distances.shape}")
    if excluded is not None:
        distances[np.asarray(excluded, dtype=bool)] = 0.0
    if not np.isfinite(distances).all():
        raise ValueError("distance matrix has NaN or infinite entries")
    np.fill_diagonal(distances, 0.0)
    distances = np.maximum(distances, 0.0)
    n = distances.shape[0]
    # sklearn requires perplexity < n; a third of the neighbours keeps small sets from collapsing to a blob.
    perplexity = min(perplexity, max(1.0, (n - 1) / 3.0))
    tsne = TSNE(n_components=2, metric="precomputed", init="random", random_state=random_state,
                perplexity=perplexity)
    return tsne.fit_transform(distances)


def plot_tsne(distances: np.ndarray, labels: np.ndarray, out_path: str | Path,
              unseen_works: Collection[int] = (), excluded: np.ndarray | None = None,
              title: str = "t-SNE of track distances") -> np.ndarray:
    """Write the t-SNE plot of a square distance matrix (tracks labelled by work) to ``out_path``; return [N, 2]."""
    labels = np.asarray(labels)
    if labels.shape != (np.shape(distances)[0],):
        raise ValueError(f"{labels.size} labels for a distance matrix of shape {np.shape(distances)}")
    points = tsne_embedding(distances, excluded)
    works, work_index = np.unique(labels, return_inverse=True)
    colours = colormaps["hsv"](np.linspace(0.0, 1.0, works.size, endpoint=False))  # [W, 4], wraps without repeats
    figure = Figure(figsize=(10, 10))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for m, marker in enumerate(MARKERS):
        shown = work_index % len(MARKERS) == m
        if shown.any():
            axes.scatter(points[shown, 0], points[shown, 1], c=colours[work_index[shown]], marker=marker, s=40)
    unseen = np.isin(labels, np.asarray(list(unseen_works)))
    if unseen.any():
        axes.scatter(points[unseen, 0], points[unseen, 1], s=260, facecolors="none", edgecolors="black",
                     linewidths=1.2)
        figure.text(0.5, 0.02, "Circles = works not seen in training", ha="center")
    axes.set_title(f"{title} ({labels.size} tracks, {works.size} works)")
    with atomic_path(out_path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return points
