"""t-SNE plots for any number of works, written as valid PNG files."""

import numpy as np
import pytest

from csi_model.tsne_plot import plot_tsne, tsne_embedding

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _distances(labels, rng):
    """Same-work tracks close, others far; the diagonal is −1 as in the reference's saved matrices."""
    distances = 0.2 * rng.random((labels.size, labels.size)) + 0.8 * (labels[:, None] != labels[None, :])
    distances = (distances + distances.T) / 2
    np.fill_diagonal(distances, -1.0)
    return distances


@pytest.mark.parametrize("n_works", [1, 2, 7])
def test_plot_is_a_png_for_any_number_of_works(tmp_path, n_works):
    rng = np.random.default_rng(n_works)
    labels = np.repeat(np.arange(n_works) + 10, 3)
    out = tmp_path / "plots" / f"tsne_{n_works}.png"
    points = plot_tsne(_distances(labels, rng), labels, out, unseen_works=[10],
                       excluded=np.eye(labels.size, dtype=bool))
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert points.shape == (labels.size, 2) and np.isfinite(points).all()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left behind


def test_works_stay_apart_in_the_embedding():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 6)
    points = tsne_embedding(_distances(labels, rng), excluded=np.eye(12, dtype=bool))
    centres = np.stack([points[labels == work].mean(axis=0) for work in (0, 1)])
    spread = max(np.linalg.norm(points[labels == w] - centres[w], axis=1).max() for w in (0, 1))
    assert np.linalg.norm(centres[0] - centres[1]) > spread


def test_non_square_matrix_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="square distance matrix"):
        plot_tsne(np.zeros((3, 4)), np.arange(3), tmp_path / "x.png")
