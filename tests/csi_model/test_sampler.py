from collections import Counter

import numpy as np
import pytest

from csi_model.sampler import MPerClassBatchSampler

LABELS = [0] * 5 + [1] * 3 + [2] * 8 + [3] * 1 + [4] * 6 + [5] * 4


def batches(seed: int, labels=LABELS, m=4, batch_size=8) -> list[list[int]]:
    return list(MPerClassBatchSampler(labels, m, batch_size, np.random.default_rng(seed)))


def test_each_batch_has_distinct_works_times_m():
    out = batches(0)
    for batch in out:
        per_work = Counter(LABELS[i] for i in batch)
        assert len(batch) == 8 and len(per_work) == 2 and set(per_work.values()) == {4}


def test_epoch_length_is_the_reference_count():
    # expanded counts: 5, 3·2=6, 8, 1·4=4, 6, 4 -> 33 -> 4 batches of 8
    sampler = MPerClassBatchSampler(LABELS, 4, 8, np.random.default_rng(0))
    assert len(sampler) == 4 and len(list(sampler)) == 4


def test_small_work_repeats_its_items():
    out = batches(3, labels=[0, 1, 1, 1, 1], m=4, batch_size=8)
    for batch in out:
        assert Counter(batch)[0] == 4


def test_fewer_works_than_slots_give_smaller_batches_not_index_zero():
    labels = [7, 7, 7, 7, 7]
    out = batches(1, labels=labels, m=4, batch_size=16)
    assert len(out) == 1 and len(out[0]) == 4 and len(set(out[0])) == 4


def test_determinism_seed_sensitivity_and_state_restore():
    assert batches(5) == batches(5)
    assert batches(5) != batches(6)
    rng = np.random.default_rng(9)
    sampler = MPerClassBatchSampler(LABELS, 4, 8, rng)
    list(sampler)
    state = rng.bit_generator.state
    second_epoch = list(sampler)
    restored = np.random.default_rng(0)
    restored.bit_generator.state = state
    assert list(MPerClassBatchSampler(LABELS, 4, 8, restored)) == second_epoch


def test_every_work_is_drawn_over_many_epochs():
    rng = np.random.default_rng(2)
    sampler = MPerClassBatchSampler(LABELS, 4, 8, rng)
    seen = {LABELS[i] for _ in range(20) for batch in sampler for i in batch}
    assert seen == set(LABELS)


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple"):
        MPerClassBatchSampler(LABELS, 3, 8, np.random.default_rng(0))
    with pytest.raises(ValueError, match="empty"):
        MPerClassBatchSampler([], 4, 8, np.random.default_rng(0))
