import numpy as np
import pytest

from csi_model.augment import (
    ERASE_FLOOR_DB,
    SpecAugment,
    random_erase,
    roll_default,
    roll_flex_melody,
    roll_low_melody,
)
from csi_model.dataset import PAD_VALUE
from csi_model.hparams import RandomEraseHParams, RollPitchHParams, SpecAugHParams

T, F = 40, 48


def chunk(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-80, 0, size=(T, F)).astype(np.float32)


def test_default_roll_wraps_by_minus_zero_or_plus_shift():
    feat = chunk()
    seen = set()
    rng = np.random.default_rng(0)
    for _ in range(60):
        out = roll_default(feat, 12, rng)
        shift = next(s for s in (-12, 0, 12) if np.array_equal(out, np.roll(feat, s, axis=1)))
        seen.add(shift)
    assert seen == {-12, 0, 12}
    assert np.array_equal(np.sort(out, axis=1), np.sort(feat, axis=1))  # wrap-around keeps every value


def test_low_melody_shifts_up_without_wrap_and_bounds_the_fill():
    feat = chunk(1)
    target = feat.mean(axis=0).min()
    for seed in range(20):
        out = roll_low_melody(feat, 12, np.random.default_rng(seed))
        shift = int(np.random.default_rng(seed).integers(1, 13))
        assert np.array_equal(out[:, shift:], feat[:, : F - shift])  # content moved up, top discarded
        bands = [out[:, shift : shift + b] for b in (6, 7, 8)]
        mu = np.stack([b.mean(axis=1) for b in bands])
        sigma = np.stack([b.std(axis=1) for b in bands])
        mirror = out[:, shift : shift + 5]
        hi = np.maximum((mu + sigma).max(axis=0), mirror.max(axis=1)) + 1e-3
        lo = np.minimum(np.minimum(mu - sigma, target - sigma).min(axis=0), mirror.min(axis=1)) - 1e-3
        fill = out[:, :shift]
        assert np.all(fill <= hi[:, None]) and np.all(fill >= lo[:, None])
        assert not np.any(np.isin(fill, feat[:, F - shift :]))  # no wrap-around


def test_low_melody_leaves_chunk_alone_when_shift_exceeds_bins():
    narrow = chunk()[:, :3]
    rng = np.random.default_rng(0)
    outs = [roll_low_melody(narrow, 12, rng) for _ in range(10)]
    assert any(out is narrow for out in outs)


def test_flex_melody_fills_vacated_bins_with_floor_and_stays_in_range():
    feat = chunk(2)
    shifts = set()
    for seed in range(30):
        out = roll_flex_melody(feat, 12, np.random.default_rng(seed))
        shift = next(s for s in range(-12, 13) if _shifted(feat, s, out))
        shifts.add(shift)
        if shift > 0:
            assert np.all(out[:, :shift] == ERASE_FLOOR_DB)
        if shift < 0:
            assert np.all(out[:, shift:] == ERASE_FLOOR_DB)
    assert min(shifts) < 0 < max(shifts)


def _shifted(feat: np.ndarray, s: int, out: np.ndarray) -> bool:
    if s >= 0:
        return np.array_equal(out[:, s:], feat[:, : F - s])
    return np.array_equal(out[:, :s], feat[:, -s:])


def test_flex_melody_centre_limits_the_shift():
    feat = np.full((T, F), -60.0, dtype=np.float32)
    feat[:, 2] = 0.0  # all loud cells in bin 2: the centre is 2, so at most 2 bins down
    for seed in range(30):
        out = roll_flex_melody(feat, 12, np.random.default_rng(seed))
        loud = int(np.argmax(out[0]))
        assert 0 <= loud <= 14


def test_random_erase_blocks_are_always_full_size():
    feat = chunk(3)
    hp = RandomEraseHParams(prob=1.0, erase_num=1, region_size=(0.25, 0.1))
    for seed in range(200):
        out = random_erase(feat, hp, np.random.default_rng(seed))
        changed = out != feat
        rows, cols = np.nonzero(changed.any(axis=1))[0], np.nonzero(changed.any(axis=0))[0]
        assert changed.sum() == int(T * 0.25) * int(F * 0.1)
        assert rows.size == 10 and cols.size == 4
        value = out[changed][0]
        assert ERASE_FLOOR_DB <= value <= 0 and np.all(out[changed] == value)


def test_random_erase_blocks_share_one_value():
    out = random_erase(chunk(), RandomEraseHParams(erase_num=4), np.random.default_rng(1))
    assert np.unique(out[out != chunk()]).size == 1


def test_padding_frames_are_never_touched():
    feat = chunk(4)
    feat[25:] = PAD_VALUE
    for method in ("default", "low_melody", "flex_melody"):
        hp = SpecAugHParams(RandomEraseHParams(prob=1.0), RollPitchHParams(prob=1.0, method=method))
        aug = SpecAugment(hp)
        for seed in range(10):
            out = aug(feat, 25, np.random.default_rng(seed))
            assert np.all(out[25:] == PAD_VALUE)


def test_probability_zero_is_identity_and_input_is_not_modified():
    feat = chunk(5)
    keep = feat.copy()
    aug = SpecAugment(SpecAugHParams(RandomEraseHParams(prob=0.0), RollPitchHParams(prob=0.0)))
    assert np.array_equal(aug(feat, T, np.random.default_rng(0)), keep)
    full = SpecAugment(SpecAugHParams(RandomEraseHParams(prob=1.0), RollPitchHParams(prob=1.0)))
    full(feat, T, np.random.default_rng(0))
    assert np.array_equal(feat, keep)


def test_roll_happens_before_erase():
    feat = chunk(6)
    hp = SpecAugHParams(RandomEraseHParams(prob=1.0, erase_num=1), RollPitchHParams(prob=1.0, method="flex_melody"))
    out = SpecAugment(hp)(feat, T, np.random.default_rng(0))
    # an erase block after the roll is a full rectangle of one value even inside the −128 fill region
    values, counts = np.unique(out, return_counts=True)
    erased = values[(counts >= 40) & (values != ERASE_FLOOR_DB)]
    assert erased.size == 1


def test_unknown_method_is_rejected_by_hparams():
    with pytest.raises(ValueError, match="method"):
        RollPitchHParams(method="sideways")
