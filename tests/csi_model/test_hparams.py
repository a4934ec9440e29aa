"""The reference tool's YAML files load unchanged; bad values name the key and the file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from csi_model.devices import pick_device
from csi_model.hparams import (
    HParamsError,
    UnknownHParamWarning,
    data_hparams_from_dict,
    load_data_hparams,
    load_training_hparams,
    to_dict,
    training_hparams_from_dict,
    with_overrides,
)
from tests.paths import FIXTURES, REPO

REFERENCE = FIXTURES / "reference"


def _no_unknown_keys(load, path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnknownHParamWarning)
        return load(path)


@pytest.mark.parametrize("name", ["covers80_training_hparams.yaml", "hparams_prod.yaml"])
def test_reference_training_files_load_every_key(name: str) -> None:
    hp = _no_unknown_keys(load_training_hparams, REFERENCE / name)
    raw = yaml.safe_load((REFERENCE / name).read_text())
    assert hp.chunk_frame == tuple(raw["chunk_frame"])
    assert hp.encoder.num_blocks == raw["encoder"]["num_blocks"]
    assert hp.foc.output_dims == 30000
    assert hp.spec_augmentation.random_erase.region_size == (0.25, 0.1)
    assert set(hp.test_sets) == {"covers80"}
    assert hp.test_sets["covers80"].query_path == "data/covers80_testset/full.txt"
    assert hp.fps() == 25.0 and hp.eval_chunk_raw_frames == 3375


def test_training_round_trip_is_lossless() -> None:
    hp = load_training_hparams(REFERENCE / "hparams_prod.yaml")
    again = training_hparams_from_dict(to_dict(hp), source=hp.source)
    assert again == hp
    assert hp.k_folds == 5 and hp.final_fold_position == 4.5 and hp.early_stop_metric == "mAP"


@pytest.mark.parametrize("name", ["covers80_data_hparams.yaml", "covers80_testset_data_hparams.yaml"])
def test_reference_data_files_load_every_key(name: str) -> None:
    hp = _no_unknown_keys(load_data_hparams, REFERENCE / name)
    raw = yaml.safe_load((REFERENCE / name).read_text())
    assert hp.aug_speed_mode == tuple(float(k) for k in raw["aug_speed_mode"])
    assert (hp.fmin, hp.n_bins, hp.bins_per_octave) == (32, 96, 12)
    assert hp.val_data_split == raw["val_data_split"]


def test_project_configs_load_cleanly() -> None:
    _no_unknown_keys(load_training_hparams, REPO / "training" / "demo" / "config" / "hparams.yaml")
    _no_unknown_keys(load_data_hparams, REPO / "data" / "demo" / "hparams.yaml")


def test_wrong_type_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "hparams.yaml"
    path.write_text("batch_size: 32\nencoder:\n  num_blocks: six\n")
    with pytest.raises(HParamsError, match=rf"{path}.*encoder\.num_blocks.*integer"):
        load_training_hparams(path)


def test_bad_value_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "hparams.yaml"
    path.write_text("batch_size: 30\nm_per_class: 8\n")
    with pytest.raises(HParamsError, match=rf"{path}: batch_size: 30 is not a multiple of m_per_class 8"):
        load_training_hparams(path)
    path.write_text("spec_augmentation:\n  roll_pitch: {prob: 0.5, shift_num: 12, method: sideways}\n")
    with pytest.raises(HParamsError, match="roll_pitch.method"):
        load_training_hparams(path)
    path.write_text("val_data_split: 1.5\n")
    with pytest.raises(HParamsError, match=rf"{path}: val_data_split"):
        load_data_hparams(path)


def test_unknown_key_warns_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "hparams.yaml"
    path.write_text("learning_rate: 0.001\nlearning_rat: 0.01\n")
    with pytest.warns(UnknownHParamWarning, match="learning_rat"):
        hp = load_training_hparams(path)
    assert hp.learning_rate == 0.001


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(HParamsError, match="cannot read"):
        load_training_hparams(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(HParamsError, match="not valid YAML"):
        load_training_hparams(bad)


def test_overrides_deep_merge_and_skip_nulls() -> None:
    hp = load_training_hparams(REFERENCE / "covers80_training_hparams.yaml")
    changed = with_overrides(hp, {"learning_rate": 0.01, "lr_decay": None, "foc": {"gamma": 3}})
    assert changed.learning_rate == 0.01 and changed.lr_decay == hp.lr_decay
    assert changed.foc.gamma == 3.0 and changed.foc.output_dims == 30000


def test_unavailable_device_falls_back_with_warning() -> None:
    hp = load_training_hparams(REFERENCE / "covers80_training_hparams.yaml")
    assert hp.device == "mps"
    with pytest.warns(RuntimeWarning, match="'mps' is not available"):
        device = pick_device(hp.device)
    assert device.type in ("cuda", "cpu")
    assert pick_device("cpu").type == "cpu"


# -- hyper-parameters that cannot work are refused when loaded -------------------------------------------------------

def test_a_top_cqt_bin_above_nyquist_names_the_file_and_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "hparams.yaml"
    path.write_text(yaml.safe_dump({"fmin": 65.4, "n_bins": 96, "bins_per_octave": 12}))
    with pytest.raises(HParamsError) as raised:
        load_data_hparams(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: fmin, n_bins, bins_per_octave: ")
    assert "15802.7 Hz is above the Nyquist frequency 8000 Hz" in message
    assert "at most 84 bins from fmin 65.4 Hz, or fmin ≤ 33.1 Hz for 96 bins" in message


def test_the_cqt_range_rule_is_the_one_nnaudio_applies() -> None:
    """Random bin layouts around the limit: the hparams accept exactly those the CQT layers can be built for
    (and both CQT classes agree), so nothing refused would have worked and nothing accepted fails later."""
    import math

    import nnAudio.features

    rng = np.random.default_rng(3)
    outcomes = set()
    for _ in range(25):
        bpo = int(rng.choice([6, 12, 24]))
        fmin = float(rng.uniform(40.0, 3000.0))
        limit = math.floor(bpo * math.log2(8000.0 / fmin)) + 1
        n_bins = max(1, limit + int(rng.integers(-2, 3)))
        try:
            data_hparams_from_dict({"fmin": fmin, "n_bins": n_bins, "bins_per_octave": bpo})
            accepted = True
        except HParamsError:
            accepted = False
        for layer in (nnAudio.features.CQT1992v2, nnAudio.features.CQT2010v2):
            try:
                layer(sr=16000, hop_length=640, fmin=fmin, n_bins=n_bins, bins_per_octave=bpo, verbose=False)
                built = True
            except ValueError as err:
                assert "Nyquist" in str(err)
                built = False
            assert accepted == built, (fmin, n_bins, bpo, layer.__name__)
        outcomes.add(accepted)
    assert outcomes == {True, False}


def test_the_reference_and_demo_cqt_settings_stay_accepted() -> None:
    from csi_model.cqt import settings_for

    for path in [*REFERENCE.glob("*data_hparams.yaml"), REPO / "data" / "demo" / "hparams.yaml"]:
        settings = settings_for(load_data_hparams(path))
        assert (settings.fmin, settings.n_bins, settings.bins_per_octave, settings.hop) == (32.0, 96, 12, 640)


@pytest.mark.parametrize("hop", [0.0, -0.04, 1e-5])
def test_a_hop_below_one_sample_is_refused_in_both_files(hop: float) -> None:
    with pytest.raises(HParamsError, match=r"d\.yaml: hop_size: "):
        data_hparams_from_dict({"hop_size": hop}, source="d.yaml")
    with pytest.raises(HParamsError, match=r"t\.yaml: cqt\.hop_size: "):
        training_hparams_from_dict({"cqt": {"hop_size": hop}}, source="t.yaml")
