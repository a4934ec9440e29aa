"""CoverHunter's training objective: focal classification + batch-hard triplet + center loss.

The metric terms (triplet, center) act on the raw embedding e; the focal term on the BN-neck logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from csi_model.hparams import TrainingHParams

FLOAT32_EPS = torch.finfo(torch.float32).eps


def focal_loss(logits: Tensor, labels: Tensor, gamma: float) -> Tensor:
    """mean (1 − p_y)^γ · −log p_y: down-weights the easy, already well-classified items."""
    p_true = logits.float().softmax(dim=-1).gather(1, labels[:, None]).squeeze(1) + FLOAT32_EPS  # [B]
    return ((1.0 - p_true).pow(gamma) * -p_true.log()).mean()


def pairwise_distances(embeddings: Tensor) -> Tensor:
    """[B, E] -> [B, B] Euclidean distances, with a gradient that stays finite at exact zeros."""
    squared_norms = embeddings.pow(2).sum(dim=1)
    squared = (squared_norms[:, None] - 2.0 * embeddings @ embeddings.T + squared_norms[None, :]).clamp(min=0.0)
    zero = squared == 0.0
    return (squared + zero * 1e-16).sqrt() * ~zero


def batch_hard_triplet_loss(embeddings: Tensor, labels: Tensor, margin: float) -> Tensor:
    """mean relu(hardest positive − hardest negative + margin) over anchors (Hermans et al.)."""
    distances = pairwise_distances(embeddings)  # [B, B]
    same = labels[:, None] == labels[None, :]  # [B, B], includes the anchor itself (distance 0)
    hardest_positive = (distances * same).amax(dim=1)  # 0 when the anchor has no positive
    row_max = distances.amax(dim=1, keepdim=True)
    hardest_negative = (distances + row_max * same).amin(dim=1)  # positives pushed out of the minimum
    return (hardest_positive - hardest_negative + margin).relu().mean()


def center_loss(embeddings: Tensor, labels: Tensor, centres: Tensor) -> Tensor:
    """mean ‖e − c_y‖²; gathers each label's centre instead of building a [B, classes] distance matrix."""
    return (embeddings - centres[labels]).pow(2).sum(dim=1).mean()


@dataclass(frozen=True)
class LossWeights:
    focal: float = 1.0
    gamma: float = 2.0
    triplet: float = 0.1
    margin: float = 0.3
    center: float = 0.0

    @classmethod
    def from_hparams(cls, hp: TrainingHParams) -> LossWeights:
        return cls(
            focal=hp.foc.weight,
            gamma=hp.foc.gamma,
            triplet=hp.triplet.weight,
            margin=hp.triplet.margin,
            center=hp.center.weight,
        )

    @property
    def uses_triplet(self) -> bool:
        """The reference drops the triplet term at weights ≤ 0.01, not only at 0."""
        return self.triplet > 0.01

    @property
    def uses_center(self) -> bool:
        return self.center > 0.0


class CoverHunterLoss(nn.Module):
    """Weighted sum of the three terms; returns the total and the detached terms it used, for logging."""

    def __init__(self, weights: LossWeights) -> None:
        super().__init__()
        self.weights = weights

    @classmethod
    def from_hparams(cls, hp: TrainingHParams) -> CoverHunterLoss:
        return cls(LossWeights.from_hparams(hp))

    def forward(
        self, embeddings: Tensor, logits: Tensor, labels: Tensor, centres: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        w = self.weights
        terms = {"foc_loss": (w.focal, focal_loss(logits, labels, w.gamma))}
        if w.uses_triplet:
            terms["tri_loss"] = (w.triplet, batch_hard_triplet_loss(embeddings, labels, w.margin))
        if w.uses_center:
            if centres is None:
                raise ValueError("center.weight > 0 but the model has no centres (build it with with_centres=True)")
            terms["cen_loss"] = (w.center, center_loss(embeddings, labels, centres))
        total = torch.stack([weight * value for weight, value in terms.values()]).sum()
        return total, {name: value.detach() for name, (_, value) in terms.items()}
