from collections import Counter

import pytest

from csi_model.splits import Split, assign_work_ids, split_performances


def _ratios(val: float, val_unseen: float, test: float, test_unseen: float) -> dict[str, float]:
    return dict(val_data_split=val, val_unseen=val_unseen, test_data_split=test, test_data_unseen=test_unseen)


PARAMS = _ratios(0.1, 0.05, 0.1, 0.1)


def _catalog(works: int = 40, perfs_per_work: int = 3) -> dict[str, int]:
    return {f"w{w:03d}_p{p}": w for w in range(works) for p in range(perfs_per_work)}


def _variants(work_of: dict[str, int], factors=(0.8, 0.9, 1.1, 1.2)) -> dict[str, str]:
    return {f"sp_{k}-{perf}": perf for perf in work_of for k in factors}


def test_work_ids_are_sorted_for_new_works_and_stable_for_old_ones() -> None:
    first = assign_work_ids(["b", "a", "c", "a"], {})
    assert first == {"a": 0, "b": 1, "c": 2}
    second = assign_work_ids(["c", "zz", "aa", "a"], first)
    assert second == {"a": 0, "b": 1, "c": 2, "aa": 3, "zz": 4}
    assert assign_work_ids(["x"], {"old": 7}) == {"old": 7, "x": 8}
    assert assign_work_ids(reversed(["c", "zz", "aa"]), first) == second  # order of arrival does not matter


def test_split_is_deterministic_for_a_seed_and_changes_with_it() -> None:
    work_of = _catalog()
    a = split_performances(work_of, seed=3, **PARAMS)
    b = split_performances(dict(reversed(work_of.items())), seed=3, **PARAMS)
    c = split_performances(work_of, seed=4, **PARAMS)
    assert a == b
    assert a.split_of != c.split_of


def test_variants_follow_their_original_so_nothing_leaks() -> None:
    work_of = _catalog()
    variants = _variants(work_of)
    result = split_performances(work_of, seed=0, variants_of=variants, **PARAMS)
    assert set(result.split_of) == set(work_of) | set(variants)
    assert all(result.split_of[variant] == result.split_of[original] for variant, original in variants.items())
    # train and the evaluation splits share no recording
    train = {perf for perf, s in result.split_of.items() if s == Split.TRAIN}
    held_out = {perf for perf, s in result.split_of.items() if s != Split.TRAIN}
    assert {variants.get(p, p) for p in train}.isdisjoint({variants.get(p, p) for p in held_out})


def test_unseen_works_are_only_in_their_split_and_seen_works_keep_training_data() -> None:
    work_of = _catalog(works=40)
    result = split_performances(work_of, seed=1, **PARAMS)
    assert len(result.test_only_work_ids) == 4 and len(result.val_only_work_ids) == 2
    assert set(result.test_only_work_ids).isdisjoint(result.val_only_work_ids)
    splits_of_work: dict[int, set[Split]] = {}
    for perf, split in result.split_of.items():
        splits_of_work.setdefault(work_of[perf], set()).add(split)
    for work, splits in splits_of_work.items():
        if work in result.test_only_work_ids:
            assert splits == {Split.TEST}
        elif work in result.val_only_work_ids:
            assert splits == {Split.VAL}
        else:
            assert Split.TRAIN in splits


def test_shares_follow_the_ratios_without_forced_lines() -> None:
    work_of = _catalog(works=50, perfs_per_work=2)
    result = split_performances(work_of, seed=0, **_ratios(0.1, 0, 0.2, 0))
    counts = Counter(result.split_of.values())
    assert counts == {Split.TRAIN: 70, Split.VAL: 10, Split.TEST: 20}
    none = split_performances(work_of, seed=0, **_ratios(0, 0, 0.2, 0))
    assert Split.VAL not in set(none.split_of.values())  # the reference forced one val line per work here
    everything = split_performances(work_of, seed=0, **_ratios(0, 0, 0, 0.5))
    assert set(everything.split_of.values()) == {Split.TRAIN} and everything.test_only_work_ids == []


def test_single_performance_works_stay_in_train() -> None:
    work_of = _catalog(works=30, perfs_per_work=1)
    result = split_performances(work_of, seed=0, **_ratios(0.5, 0, 0.5, 0))
    assert set(result.split_of.values()) == {Split.TRAIN}


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="no work is left for training"):
        split_performances(_catalog(works=2), seed=0, **_ratios(0.1, 0.5, 0.1, 0.5))
    with pytest.raises(ValueError, match="sp_0.8-nope"):
        split_performances(_catalog(works=5), seed=0, variants_of={"sp_0.8-nope": "nope"}, **PARAMS)
