"""The reference tool's training step, re-enacted for ``bench/train.py`` to time in the same process as ours.

Written from what the reference does (see docs/reference_tool.md), not from its code:

- data: per item, the whole feature file is loaded (no memory map), a random chunk is sliced and pooled frame
  group by frame group in a Python loop, padded with −100 to the chunk, then augmented on its own; the default
  collate stacks the items. No lengths travel with the chunk.
- network: the reference's own computation (``bench/reference_model.py``, with the checkpoint's parameter names;
  tests/test_bench_reference_model.py shows it computes what the product's module does on unpadded input), so
  padding frames count as content, in float32, and the centres are built whatever the centre weight (as the
  reference does). Both sides size the classifier and centres alike (``ModelConfig.from_hparams``).
- losses, as the reference computes them: focal over the full softmax + eps with ``−log`` of every class,
  batch-hard triplet from eye/label masks, and the centre term from a ``[B, classes]`` distance matrix when its
  weight is > 0 (the product gathers each label's centre instead).
- step: zero grads, backward, clip the global grad norm to 1.0, AdamW step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from reference_model import ReferenceNetwork
from torch.utils.data import DataLoader, Dataset

from csi_model.augment import SpecAugment
from csi_model.dataset import PAD_VALUE, FeatureItem
from csi_model.hparams import TrainingHParams
from csi_model.model import ModelConfig
from csi_model.sampler import MPerClassBatchSampler

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)


def reference_style_chunk(path: Path, start: int, chunk: int, mean_size: int) -> np.ndarray:
    """What the reference does per item: load the whole file, slice, pool frame group by frame group."""
    feat = np.load(path)[start : start + chunk]
    return np.array([feat[i * mean_size : (i + 1) * mean_size].mean(axis=0)
                     for i in range(len(feat) // mean_size)], dtype=np.float32)


class ReferenceChunks(Dataset):
    """``(pooled chunk [chunk / mean_size, F] padded with −100, work id)`` per item, cut and augmented alone."""

    def __init__(self, items: Sequence[FeatureItem], chunk_frames: int, mean_size: int,
                 augment: SpecAugment | None, seed: int) -> None:
        self.items, self.chunk_frames, self.mean_size = list(items), chunk_frames, mean_size
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.items[index]
        start = int(self.rng.integers(0, max(item.n_frames - self.chunk_frames, 0) + 1))
        pooled = reference_style_chunk(item.feat_path, start, self.chunk_frames, self.mean_size)
        out_frames = self.chunk_frames // self.mean_size
        chunk = np.full((out_frames, pooled.shape[1]), PAD_VALUE, dtype=np.float32)
        chunk[: len(pooled)] = pooled
        if self.augment is not None:
            chunk = self.augment(chunk, len(pooled), self.rng)
        return torch.from_numpy(np.ascontiguousarray(chunk)), item.work_id


def reference_losses(model: ReferenceNetwork, feats: torch.Tensor, labels: torch.Tensor, hp: TrainingHParams
                     ) -> dict[str, torch.Tensor]:
    """Forward (unmasked) and the loss terms the reference computes; ``total`` is their weighted sum."""
    embedding, logits = model(feats)
    probs = torch.softmax(logits, dim=1) + FLOAT32_EPS  # [B, K]
    nll = -torch.log(probs)
    p_true = probs.gather(1, labels[:, None])
    foc = ((1.0 - p_true).pow(hp.foc.gamma) * nll.gather(1, labels[:, None])).squeeze(1).mean()
    terms = {"foc_loss": foc}
    total = foc * hp.foc.weight
    if hp.triplet.weight > 0.01:
        gram = embedding @ embedding.T
        norms = gram.diag()
        squared = torch.relu(norms[:, None] - 2 * gram + norms[None, :])
        zero = (squared == 0).float()
        dist = torch.sqrt(squared + zero * 1e-16) * (1 - zero)
        same = labels[None, :] == labels[:, None]
        not_self = torch.eye(len(labels), dtype=torch.uint8) ^ 1
        positive = (dist * (not_self * same).float()).max(dim=1, keepdim=True).values
        row_max = dist.max(dim=1, keepdim=True).values
        negative = (dist + row_max * same.float()).min(dim=1, keepdim=True).values
        terms["tri_loss"] = torch.relu(positive - negative + hp.triplet.margin).mean()
        total = total + terms["tri_loss"] * hp.triplet.weight
    if hp.center.weight > 0:
        centres = model.centres
        distmat = (embedding.pow(2).sum(1, keepdim=True) + centres.pow(2).sum(1)[None, :]
                   ).addmm(embedding, centres.T, beta=1, alpha=-2)  # [B, K]
        chosen = labels[:, None] == torch.arange(centres.shape[0])[None, :]
        terms["cen_loss"] = (distmat * chosen.float()).clamp(1e-12, 1e12).sum() / len(labels)
        total = total + terms["cen_loss"] * hp.center.weight
    terms["total"] = total
    return terms


class ReferenceTrainer:
    """The reference's epoch: its three chunk-length loaders zipped, one AdamW step per batch."""

    def __init__(self, hp: TrainingHParams, items: Sequence[FeatureItem], num_classes: int) -> None:
        torch.manual_seed(hp.seed)
        self.hp = hp
        self.model = ReferenceNetwork(ModelConfig.from_hparams(hp, num_classes))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), hp.learning_rate, betas=(hp.adam_b1, hp.adam_b2))
        augment = SpecAugment(hp.spec_augmentation) if hp.spec_augmentation is not None else None
        labels = [it.work_id for it in items]
        self.loaders = [
            DataLoader(ReferenceChunks(items, chunk * hp.mean_size, hp.mean_size, augment, hp.seed + i),
                       batch_sampler=MPerClassBatchSampler(labels, hp.m_per_class, hp.batch_size,
                                                           np.random.default_rng(i)),
                       num_workers=hp.num_workers)
            for i, chunk in enumerate(hp.chunk_frame)
        ]

    def epoch(self) -> Iterator[dict[str, float]]:
        """Run one epoch, yielding each step's loss terms after its optimizer step."""
        self.model.train()
        for batches in zip(*self.loaders):
            for feats, labels in batches:
                terms = reference_losses(self.model, feats, labels, self.hp)
                self.optimizer.zero_grad()
                terms["total"].backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                self.optimizer.step()
                yield {key: value.item() for key, value in terms.items()}
