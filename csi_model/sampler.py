"""The m-per-class batch sampler: every batch holds ``batch_size/m`` distinct works × ``m`` items.

Batch-hard triplet mining needs positives in every batch, so batches are drawn by work rather than by item.
Sampling is with replacement across batches and an epoch is the reference's ``num_iters`` batches. Unlike the
reference, a data set with fewer works than ``batch_size/m`` yields smaller batches of the works it has instead of
padding with index 0, and all randomness comes from the passed generator, whose state a checkpoint can save.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class MPerClassBatchSampler(Sampler[list[int]]):
    """Yields lists of dataset indices; pass it to ``DataLoader(batch_sampler=...)``."""

    def __init__(self, labels: Sequence[int], m: int, batch_size: int, rng: np.random.Generator) -> None:
        if m < 1 or batch_size % m:
            raise ValueError(f"batch_size {batch_size} is not a positive multiple of m {m}")
        if len(labels) == 0:
            raise ValueError("cannot sample batches from an empty data set")
        self.m = m
        self.rng = rng
        label_array = np.asarray(labels)
        works, inverse = np.unique(label_array, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse)
        members = np.split(order, np.cumsum(counts)[:-1])
        # A work with fewer than m items repeats its list until it has at least m (n·⌈m/n⌉ entries).
        self.members = [np.tile(idx, -(-m // len(idx))) for idx in members]
        self.works_per_batch = min(batch_size // m, len(works))
        expanded = sum(len(idx) for idx in self.members)
        self.num_iters = max(1, expanded // (self.works_per_batch * m))

    def __len__(self) -> int:
        return self.num_iters

    def __iter__(self) -> Iterator[list[int]]:
        return self.draw(self.num_iters)

    def draw(self, count: int) -> Iterator[list[int]]:
        """``count`` batches from the generator (an epoch is ``num_iters`` of them)."""
        for _ in range(count):
            works = self.rng.permutation(len(self.members))[: self.works_per_batch]
            yield [int(i) for w in works for i in self.rng.permutation(self.members[w])[: self.m]]
