"""Work ids and the train / val / test split.

Both fix weaknesses of the reference tool (see docs/reference_tool.md):

* Work ids are reproducible and permanent. The reference numbered works in the completion order of its
  feature workers, so ids changed between runs. Here new works are numbered in sorted order after the current
  maximum, and an id once given is never changed, so checkpoints, embeddings and maps stay valid when a delta
  catalog brings new works.
* The split is over *original* performances, and every tempo variant follows its original. The reference split
  lines that already included the variants, so copies of one recording sat in train and in val/test at once
  and inflated validation scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


def assign_work_ids(works: Iterable[str], existing: Mapping[str, int]) -> dict[str, int]:
    """The full work -> id map: ``existing`` unchanged plus new works, sorted, numbered from max + 1.

    Sorting (not order of appearance) makes the numbering independent of file or worker order.
    """
    work_ids = dict(existing)
    next_id = max(work_ids.values(), default=-1) + 1
    for offset, work in enumerate(sorted(set(works) - work_ids.keys())):
        work_ids[work] = next_id + offset
    return work_ids


@dataclass(frozen=True)
class SplitAssignment:
    split_of: dict[str, Split]
    """Every performance (originals and, when given, their tempo variants) -> its split."""
    test_only_work_ids: list[int]
    """Works held out entirely in test (never seen in training): ``test-only-work-ids.txt``."""
    val_only_work_ids: list[int]


def split_performances(
    work_of: Mapping[str, int],
    *,
    val_data_split: float,
    val_unseen: float,
    test_data_split: float,
    test_data_unseen: float,
    seed: int,
    variants_of: Mapping[str, str] | None = None,
) -> SplitAssignment:
    """Split original performances (``perf -> work_id``) into train, val and test; variants follow.

    The reference algorithm's intent (see docs/reference_tool.md), its bugs fixed:

    1. Unseen test works: if ``test_data_unseen > 0`` and ``test_data_split > 0``,
       ``max(1, int(W * test_data_unseen))`` works go entirely to test.
    2. Unseen val works: if ``val_unseen > 0``, ``max(1, int(W * val_unseen))`` of the other works go
       entirely to val.
    3. Every other work ("seen" works) keeps at least one performance in train, otherwise it would not be
       seen. In a random order of works, each gives val and then test the number of performances that brings
       the running share of val (test) closest to ``val_data_split`` (``test_data_split``):
       ``round(ratio x performances so far) - already taken``, never more than the work can spare.
       This is the reference's intended "do not exceed the test share" rule; it replaces the forced
       one-val-and-one-test per work, which was harmless on lines with five tempo copies each but would send
       half of a two-performance work to val and test, and which gave a val line even with
       ``val_data_split`` 0. A ratio of 0 now gives exactly no line.

    Works are visited in id order before shuffling and performances in sorted order, and all randomness comes
    from ``numpy.random.default_rng(seed)``, so the same inputs and seed give the same split.
    Raises ValueError when the unseen holdouts leave no work for training, or a variant's original is unknown.
    """
    rng = np.random.default_rng(seed)
    members = _performances_by_work(work_of)
    works = sorted(members)
    n_test_only = _holdout_size(len(works), test_data_unseen if test_data_split > 0 else 0.0)
    test_only = _pick_works(rng, works, n_test_only)
    remaining = [work for work in works if work not in test_only]
    val_only = _pick_works(rng, remaining, _holdout_size(len(works), val_unseen))
    seen = [work for work in works if work not in test_only and work not in val_only]
    if not seen:
        raise ValueError(
            f"the unseen holdouts take all {len(works)} works (test_data_unseen={test_data_unseen}, "
            f"val_unseen={val_unseen}); no work is left for training"
        )
    split_of = {perf: Split.TEST for work in test_only for perf in members[work]}
    split_of |= {perf: Split.VAL for work in val_only for perf in members[work]}
    split_of |= _split_seen_works(rng, [members[work] for work in seen], val_data_split, test_data_split)
    split_of |= _follow_originals(split_of, variants_of or {})
    return SplitAssignment(split_of, sorted(test_only), sorted(val_only))


def _performances_by_work(work_of: Mapping[str, int]) -> dict[int, list[str]]:
    members: dict[int, list[str]] = {}
    for perf in sorted(work_of):
        members.setdefault(work_of[perf], []).append(perf)
    return members


def _holdout_size(total_works: int, fraction: float) -> int:
    """``max(1, int(W x fraction))`` works when the fraction is positive, W counting *all* works."""
    return max(1, int(total_works * fraction)) if fraction > 0 else 0


def _pick_works(rng: np.random.Generator, works: Sequence[int], count: int) -> set[int]:
    if count == 0 or not works:
        return set()
    return {int(work) for work in rng.choice(works, size=min(count, len(works)), replace=False)}


def _split_seen_works(
    rng: np.random.Generator, groups: Sequence[list[str]], val_ratio: float, test_ratio: float
) -> dict[str, Split]:
    split_of: dict[str, Split] = {}
    counted = val_taken = test_taken = 0
    for group in rng.permutation(len(groups)):
        perfs = rng.permutation(groups[group]).tolist()
        counted += len(perfs)
        spare = len(perfs) - 1
        n_val = _share(val_ratio, counted, val_taken, spare)
        n_test = _share(test_ratio, counted, test_taken, spare - n_val)
        val_taken, test_taken = val_taken + n_val, test_taken + n_test
        split_of |= {perf: Split.VAL for perf in perfs[:n_val]}
        split_of |= {perf: Split.TEST for perf in perfs[n_val : n_val + n_test]}
        split_of |= {perf: Split.TRAIN for perf in perfs[n_val + n_test :]}
    return split_of


def _share(ratio: float, counted: int, taken: int, spare: int) -> int:
    """How many to take now so the running share is closest to ``ratio`` (half rounds up), within ``spare``."""
    wanted = math.floor(ratio * counted + 0.5) - taken
    return min(spare, max(0, wanted))


def _follow_originals(split_of: Mapping[str, Split], variants_of: Mapping[str, str]) -> dict[str, Split]:
    unknown = sorted(variant for variant, original in variants_of.items() if original not in split_of)
    if unknown:
        raise ValueError(f"tempo variants of unknown original performances: {', '.join(unknown[:5])}")
    return {variant: split_of[original] for variant, original in variants_of.items()}
