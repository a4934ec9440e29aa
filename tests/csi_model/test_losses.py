"""Losses checked against direct, loop-based evaluations of the paper's loss formulas."""

import pytest
import torch
import torch.nn.functional as F

from csi_model.hparams import training_hparams_from_dict
from csi_model.losses import (
    FLOAT32_EPS,
    CoverHunterLoss,
    LossWeights,
    batch_hard_triplet_loss,
    center_loss,
    focal_loss,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_focal_loss_matches_the_formula() -> None:
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    expected = 0.0
    for row, y in zip(logits, labels):
        p = torch.softmax(row, 0)[y] + FLOAT32_EPS
        expected += (1 - p) ** 2 * -torch.log(p)
    assert focal_loss(logits, labels, gamma=2.0).item() == pytest.approx(expected.item() / 6, rel=1e-5)


def test_focal_loss_with_gamma_zero_is_cross_entropy() -> None:
    logits, labels = torch.randn(8, 7), torch.randint(0, 7, (8,))
    assert focal_loss(logits, labels, 0.0).item() == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-5)


def test_batch_hard_triplet_matches_a_loop() -> None:
    e, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 1, 2, 2, 3])
    expected = []
    for i in range(8):
        d = [torch.dist(e[i], e[j]).item() for j in range(8)]
        pos = max([d[j] for j in range(8) if j != i and labels[j] == labels[i]], default=0.0)
        neg = min(d[j] for j in range(8) if labels[j] != labels[i])
        expected.append(max(pos - neg + 0.3, 0.0))
    got = batch_hard_triplet_loss(e, labels, margin=0.3).item()
    assert got == pytest.approx(sum(expected) / 8, abs=1e-5)


def test_triplet_gradient_is_finite_for_identical_embeddings() -> None:
    e = torch.randn(2, 4).repeat(2, 1).requires_grad_()
    batch_hard_triplet_loss(e, torch.tensor([0, 1, 0, 1]), margin=0.3).backward()
    assert torch.isfinite(e.grad).all()


def test_center_loss_matches_the_formula() -> None:
    e, centres, labels = torch.randn(5, 3), torch.randn(4, 3), torch.tensor([0, 3, 3, 1, 2])
    expected = sum(((e[i] - centres[labels[i]]) ** 2).sum() for i in range(5)) / 5
    assert center_loss(e, labels, centres).item() == pytest.approx(expected.item(), rel=1e-6)


def test_combined_loss_uses_only_active_terms() -> None:
    e, logits, labels, centres = torch.randn(4, 3), torch.randn(4, 5), torch.tensor([0, 0, 1, 1]), torch.randn(5, 3)
    total, terms = CoverHunterLoss(LossWeights(triplet=0.01, center=0.0))(e, logits, labels, centres)
    assert set(terms) == {"foc_loss"}
    assert total.item() == pytest.approx(terms["foc_loss"].item())

    weights = LossWeights(focal=0.5, triplet=0.2, center=0.1)
    total, terms = CoverHunterLoss(weights)(e, logits, labels, centres)
    assert set(terms) == {"foc_loss", "tri_loss", "cen_loss"}
    expected = 0.5 * terms["foc_loss"] + 0.2 * terms["tri_loss"] + 0.1 * terms["cen_loss"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not terms["foc_loss"].requires_grad


def test_center_weight_without_centres_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no centres"):
        CoverHunterLoss(LossWeights(center=0.5))(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1]))


def test_weights_from_hparams() -> None:
    hp = training_hparams_from_dict(
        {"foc": {"weight": 0.7, "gamma": 3}, "triplet": {"margin": 0.5, "weight": 0.2}, "center": {"weight": 0.01}}
    )
    assert LossWeights.from_hparams(hp) == LossWeights(focal=0.7, gamma=3.0, triplet=0.2, margin=0.5, center=0.01)
