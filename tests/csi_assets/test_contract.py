"""A model only ever sees the input it was trained on: every path that feeds features to a registered model
compares the dataset's CQT settings with the model's recorded input contract, and a mismatch is an error
naming both values and where each comes from."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import warnings
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np
import pytest
import yaml

from csi_assets.assets import evaluation, serving
from csi_assets.cli import main as csi
from csi_assets.ingestion import ingest_batch
from csi_assets.layouts import DatasetLayout
from csi_assets.model_loading import ModelLoadError, dataset_input, load_model
from csi_assets.resources import DatasetResource, StoreResource
from csi_assets.store import Store
from csi_assets.store import folders as folder_store
from csi_assets.store import models as model_store
from csi_assets.store.schema import MIGRATIONS, migrate
from csi_model.contract import (
    CONTRACT_FIELDS,
    InputContract,
    InputContractError,
    InputContractWarning,
    check_input_contract,
)
from csi_model.cqt import CqtSettings
from csi_model.hparams import load_data_hparams
from csi_model.synth import generate_covers
from tests.graph_fixtures import Project, materialize
from tests.serving_fixtures import project_with_model


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Project, str]:
    """A tiny promoted model with the reference embeddings of 3 works × 2 performances of 4 s (hop 0.04 s)."""
    project, model_id, _ = project_with_model(tmp_path_factory.mktemp("contract"), works=3, perfs=2, seconds=4.0)
    assert materialize(project, [serving.reference_embeddings]).success
    return project, model_id


def _copy_with_hop(project: Project, folder: Path, hop_size: float) -> Path:
    """The project's dataset folder copied under ``folder`` (same name, so the same promoted model) with
    ``hop_size`` in its ``hparams.yaml``: a user pointing a command at other features."""
    copy = folder / project.dataset_dir.name
    shutil.copytree(project.dataset_dir, copy)
    raw = yaml.safe_load((copy / "hparams.yaml").read_text())
    (copy / "hparams.yaml").write_text(yaml.safe_dump({**raw, "hop_size": hop_size}))
    return copy


def _names_both_hops(message: str, model_source: Path, features_source: Path) -> None:
    assert "hop_size 0.04 s (640 samples at 16000 Hz)" in message and str(model_source) in message
    assert "hop_size 0.02 s (320 samples at 16000 Hz)" in message and str(features_source) in message


# -- the comparison itself --------------------------------------------------------------------------------------------

def _other_value(name: str, value: object, rng: np.random.Generator) -> object:
    if name == "cqt_class":
        return "CQT2010v2"
    if name == "fmin":
        return float(value) * float(rng.uniform(1.01, 1.5))
    return int(value) + int(rng.integers(1, 50))


def test_every_differing_field_is_named_with_both_values_and_sources() -> None:
    rng = np.random.default_rng(0)
    trained = InputContract.from_settings(CqtSettings(), "train/hparams.yaml")
    check_input_contract(trained, InputContract.from_settings(CqtSettings(), "same/hparams.yaml"), "m")
    for _ in range(30):
        changed = [n for n in CONTRACT_FIELDS if rng.random() < 0.4] or [str(rng.choice(CONTRACT_FIELDS))]
        given = dataclasses.replace(trained, source="data/x/hparams.yaml",
                                    **{n: _other_value(n, getattr(trained, n), rng) for n in changed})
        with pytest.raises(InputContractError) as raised:
            check_input_contract(trained, given, "m")
        message = str(raised.value)
        assert message.count("model m expects") == len(changed)
        for name in changed:
            assert f"{trained.describe(name)} (train/hparams.yaml) but data/x/hparams.yaml says " \
                   f"{given.describe(name)}" in message
        for name in set(CONTRACT_FIELDS) - set(changed):
            assert f"expects {trained.describe(name)}" not in message


def test_unknown_fields_are_a_warning_never_a_silent_pass() -> None:
    legacy = InputContract("old model", sample_rate=16000, hop=640, n_bins=96)
    with pytest.warns(InputContractWarning, match=r"fmin, bins_per_octave, cqt_class unknown in old model"):
        check_input_contract(legacy, InputContract.from_settings(CqtSettings(), "d.yaml"), "m")
    with pytest.raises(InputContractError, match="expects hop_size 0.04 s"):
        check_input_contract(legacy, InputContract.from_settings(CqtSettings(hop=320), "d.yaml"), "m")


def test_a_contract_survives_the_store_round_trip() -> None:
    contract = InputContract.from_settings(CqtSettings(fmin=40.0, n_bins=84), "d.yaml")
    assert InputContract.from_dict(contract.to_dict()) == contract
    with pytest.raises(ValueError, match="unknown keys"):
        InputContract.from_dict({**contract.to_dict(), "typo": 1})


# -- every path checks it -----------------------------------------------------------------------------------------

def test_identify_refuses_a_dataset_whose_hop_differs_from_the_models(served, tmp_path: Path, capsys) -> None:
    project, model_id = served
    copy = _copy_with_hop(project, tmp_path, 0.02)
    query = str(project.dataset_dir / "wav" / "w001_p1.wav")
    store = ["--store", str(project.store_path), "--json", "--top", "1"]
    assert csi(["identify", query, "--dataset-dir", str(project.dataset_dir), *store]) == 0
    match = json.loads(capsys.readouterr().out)[0]["matches"][0]  # on the model's own features: itself, at ~0
    assert match["perf"] == "w001_p1" and match["distance"] < 1e-3
    assert csi(["identify", query, "--dataset-dir", str(copy), *store]) == 2
    err = capsys.readouterr().err
    assert f"model {model_id} expects" in err
    _names_both_hops(err, project.dataset_dir / "hparams.yaml", copy / "hparams.yaml")


def _failure_message(result: dg.ExecuteInJobResult) -> str:
    assert not result.success
    return "\n".join(event.step_failure_data.error.message for event in result.get_step_failure_events())


@pytest.mark.parametrize("asset", [serving.reference_embeddings, evaluation.eval_report],
                         ids=["reference_embeddings", "eval_report"])
def test_assets_refuse_features_the_model_was_not_trained_on(served, tmp_path: Path, asset) -> None:
    project, _ = served
    copy = _copy_with_hop(project, tmp_path, 0.02)
    store_path = tmp_path / "csi.duckdb"
    shutil.copy(project.store_path, store_path)  # the shared store stays as it is
    folder_store.forget_folders(Store(store_path), project.dataset)  # the copy stands in for the moved dataset
    result = materialize(project, [asset], raise_on_error=False, resources={
        "dataset": DatasetResource(dataset_dir=str(copy)), "store": StoreResource(path=str(store_path))})
    _names_both_hops(_failure_message(result), project.dataset_dir / "hparams.yaml", copy / "hparams.yaml")


def test_ingestion_refuses_to_embed_a_batch_with_a_mismatched_model(served, tmp_path: Path) -> None:
    project, _ = served
    copy = _copy_with_hop(project, tmp_path, 0.02)
    store_path = tmp_path / "csi.duckdb"
    shutil.copy(project.store_path, store_path)  # the shared store stays as it is
    catalog = generate_covers(tmp_path / "incoming" / "b1", works=1, perfs=1, seed=9, seconds=3.0)
    lines = [json.loads(line) for line in catalog.read_text().splitlines()]
    catalog.write_text("".join(json.dumps({**r, "perf": f"b1_{r['perf']}"}) + "\n" for r in lines))  # new perf ids
    with pytest.raises(ModelLoadError) as raised:
        ingest_batch(Store(store_path), DatasetLayout.at(copy), "b1", catalog,
                     logging.getLogger("test"))
    _names_both_hops(str(raised.value), project.dataset_dir / "hparams.yaml", copy / "hparams.yaml")


def test_a_model_registered_before_contracts_loads_with_a_warning_and_is_still_checked(served,
                                                                                        tmp_path: Path) -> None:
    """An old store (schema 2: no contract column) upgrades in place; the model's hop and bins come from its
    hparams, the rest is reported as unchecked."""
    project, model_id = served
    row = model_store.get_model(project.store, model_id)
    old = tmp_path / "old.duckdb"
    with duckdb.connect(str(old)) as con:
        migrate(con, [m for m in MIGRATIONS if m[0] <= 2])
        con.execute("INSERT INTO models (model_id, dataset, training_dir, checkpoint, epoch, fingerprint, hparams, "
                    "metrics, promoted) VALUES (?, ?, ?, ?, ?, ?, ?, '{}', true)",
                    [model_id, row.dataset, row.training_dir, row.checkpoint, row.epoch,
                     row.fingerprint, json.dumps(row.hparams)])
    store = Store(old)
    assert model_store.get_model(store, model_id).input_contract is None
    with pytest.warns(InputContractWarning, match=f"model {model_id} was registered before input contracts"):
        model = load_model(store, row.dataset)
    assert (model.contract.hop, model.contract.n_bins, model.contract.fmin) == (640, 96, None)
    with pytest.warns(InputContractWarning, match="fmin, bins_per_octave, cqt_class unknown"):
        dataset_input(model, load_data_hparams(project.dataset_dir / "hparams.yaml"))
    copy = _copy_with_hop(project, tmp_path, 0.02)
    with pytest.raises(ModelLoadError, match=f"hop_size 0.04 s .*hparams stored with model {model_id}"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", InputContractWarning)
        dataset_input(model, load_data_hparams(copy / "hparams.yaml"))


def test_registered_models_record_the_settings_of_their_training_features(served) -> None:
    project, model_id = served
    recorded = model_store.get_model(project.store, model_id).input_contract
    assert recorded == {"source": str(project.dataset_dir / "hparams.yaml"), "sample_rate": 16000, "hop": 640,
                        "fmin": 32.0, "n_bins": 96, "bins_per_octave": 12, "cqt_class": "CQT1992v2"}
