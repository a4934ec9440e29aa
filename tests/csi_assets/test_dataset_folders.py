"""One dataset name means the same folders in every process: recorded at first use, then either agreed with (a
process naming the folder itself) or followed (a process resolving the name by the sibling rule)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from csi_assets.assets import data, research
from csi_assets.cli import main as csi
from csi_assets.dataset_folders import FolderConflict, NoDatasetFolder, dataset_folder, training_folder
from csi_assets.importer import ReferenceImportError, import_reference
from csi_assets.locations import training_pair
from csi_assets.partitions import main as register_default
from csi_assets.resources import DatasetResource, StoreResource, TrainingResource
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import folders as folder_store
from csi_model.synth import generate_covers
from tests.graph_fixtures import DATA_HPARAMS, Project, materialize


def _dataset(folder: Path) -> Path:
    generate_covers(folder, 2, 2, seed=0, seconds=3.0)
    (folder / "hparams.yaml").write_text(yaml.safe_dump({**DATA_HPARAMS, "aug_speed_mode": [1.0]}))
    return folder


def _catalogued(folder: Path) -> Path:
    """A folder with a (empty) catalog: enough to be a dataset's folder."""
    folder.mkdir(parents=True)
    (folder / "dataset.txt").write_text("")
    return folder


def test_the_first_use_records_the_folders_and_every_later_use_agrees_or_follows(tmp_path: Path) -> None:
    db = Store(tmp_path / "csi.duckdb")
    elsewhere = _catalogued(tmp_path / "elsewhere" / "covers80")
    _catalogued(tmp_path / "data" / "covers80")
    assert dataset_folder(db, "covers80", elsewhere).root == elsewhere  # named explicitly: recorded
    daemon_default = tmp_path / "data" / "demo"
    assert dataset_folder(db, "covers80", daemon_default).root == elsewhere  # resolved by name: follows the record
    with pytest.raises(FolderConflict) as conflict:  # another folder of the same name, named explicitly
        dataset_folder(db, "covers80", tmp_path / "data" / "covers80")
    message = str(conflict.value)
    assert str(elsewhere) in message and str(tmp_path / "data" / "covers80") in message
    assert "csi datasets --forget covers80" in message
    assert folder_store.forget_folders(db, "covers80")
    assert dataset_folder(db, "covers80", tmp_path / "data" / "covers80").root == tmp_path / "data" / "covers80"


def test_the_training_folder_last_named_is_recorded_and_followed(tmp_path: Path) -> None:
    db = Store(tmp_path / "csi.duckdb")
    runs = tmp_path / "runs" / "exp1"
    assert training_folder(db, "covers80", runs, "covers80").root == runs  # dataset not recorded yet: nothing kept
    assert folder_store.bound_folders(db, "covers80") is None
    dataset_folder(db, "covers80", _catalogued(tmp_path / "data" / "covers80"))
    assert training_folder(db, "covers80", runs, "covers80").root == runs
    assert folder_store.bound_folders(db, "covers80").training_folder == str(runs)
    assert training_folder(db, "covers80", tmp_path / "training" / "demo").root == runs  # the daemon follows it
    bigger = tmp_path / "runs" / "exp2"  # a second training run of the same dataset, named explicitly
    assert training_folder(db, "covers80", bigger, "covers80").root == bigger
    assert training_folder(db, "covers80", tmp_path / "training" / "demo").root == bigger


def test_a_partition_run_from_another_environment_uses_the_recorded_folder(tmp_path: Path) -> None:
    """A shell that exported CSI_DATASET_DIR=elsewhere/covers80 catalogs it; the daemon (default data/demo) runs
    the same partition: it must read elsewhere/covers80, not an unrelated data/covers80."""
    elsewhere = _dataset(tmp_path / "elsewhere" / "covers80")
    impostor = _dataset(tmp_path / "data" / "covers80")  # same name, other folder, other content
    (impostor / "dataset.txt").write_text((impostor / "dataset.txt").read_text().splitlines()[0] + "\n")
    (tmp_path / "training" / "covers80" / "config").mkdir(parents=True)
    shell = Project(tmp_path, elsewhere, tmp_path / "training" / "covers80", tmp_path / "csi.duckdb")
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(shell, [data.dataset_catalog], instance).success
    daemon = {"dataset": DatasetResource(dataset_dir=str(tmp_path / "data" / "demo")),
              "training": TrainingResource(training_dir=str(tmp_path / "training" / "demo")),
              "store": StoreResource(path=str(shell.store_path))}
    result = materialize(shell, [data.dataset_catalog], instance, resources=daemon)
    metadata = result.asset_materializations_for_node("dataset_catalog")[0].metadata
    assert metadata["performances"].value == 4 and metadata["added"].value == 0
    assert len(catalog_store.performances(shell.store, "covers80")) == 4

    named_impostor = {"dataset": DatasetResource(dataset_dir=str(impostor))}
    failed = materialize(shell, [data.dataset_catalog], instance, resources=named_impostor, raise_on_error=False)
    [failure] = [e.step_failure_data for e in failed.all_events if e.is_step_failure]
    assert f"this process names {impostor}" in failure.error.message
    assert len(catalog_store.performances(shell.store, "covers80")) == 4  # nothing of the impostor stored

    sweep = materialize(shell, [research.sweep_plan], instance, resources=daemon, raise_on_error=False)
    assert not sweep.success  # no tuning file; what matters is where it was looked for
    [failure] = [e.step_failure_data for e in sweep.all_events if e.is_step_failure]
    assert str(tmp_path / "training" / "covers80") in failure.error.message


def test_csi_datasets_lists_and_forgets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = Store(tmp_path / "csi.duckdb")
    dataset_folder(db, "covers80", _catalogued(tmp_path / "elsewhere" / "covers80"))
    assert csi(["datasets", "--store", str(db.path)]) == 0
    assert str(tmp_path / "elsewhere" / "covers80") in capsys.readouterr().out
    assert csi(["datasets", "--store", str(db.path), "--forget", "covers80"]) == 0
    assert folder_store.bound_folders(db, "covers80") is None
    assert csi(["datasets", "--store", str(db.path), "--forget", "covers80"]) == 2
    assert "no folders are recorded for dataset 'covers80'" in capsys.readouterr().err


@pytest.mark.parametrize(("environment", "pair"), [
    ({}, ""),
    ({"CSI_DATASET_DIR": "../CoverHunterMPS/data/covers80"}, ""),  # the demo's training folder is not covers80's
    ({"CSI_TRAINING_DIR": "runs/x"}, ""),
    ({"CSI_DATASET_DIR": "data/covers80/", "CSI_TRAINING_DIR": "runs/x"}, "covers80"),
])
def test_the_default_training_folder_pairs_with_the_default_dataset_only_when_both_are_named(
        monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], pair: str) -> None:
    monkeypatch.delenv("CSI_DATASET_DIR", raising=False)
    monkeypatch.delenv("CSI_TRAINING_DIR", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    assert training_pair() == pair


def test_csi_import_records_the_folders_and_refuses_a_second_folder_of_the_same_name(tmp_path: Path) -> None:
    db = Store(tmp_path / "csi.duckdb")
    first = _dataset(tmp_path / "mps" / "data" / "covers80")
    assert import_reference(db, first, None).performances == 4
    assert folder_store.bound_folders(db, "covers80").folder == str(first)
    second = _dataset(tmp_path / "other" / "covers80")
    with pytest.raises(ReferenceImportError, match="csi datasets --forget covers80"):
        import_reference(db, second, None)
    assert all(Path(p.wav).is_relative_to(first) for p in catalog_store.performances(db, "covers80"))


def test_two_datasets_never_share_a_training_folder(tmp_path: Path) -> None:
    db = Store(tmp_path / "csi.duckdb")
    shared = tmp_path / "training" / "demo"
    dataset_folder(db, "demo", _dataset(tmp_path / "data" / "demo"))
    assert training_folder(db, "demo", shared).root == shared
    dataset_folder(db, "other", _dataset(tmp_path / "data" / "other"))
    with pytest.raises(FolderConflict, match="is the training folder of dataset 'demo'"):  # CSI_TRAINING_DIR paired
        training_folder(db, "other", shared, "other")
    assert folder_store.bound_folders(db, "other").training_folder is None
    assert training_folder(db, "other", shared).root == tmp_path / "training" / "other"  # its own, by name


def test_a_name_without_a_dataset_folder_is_refused_and_never_recorded(tmp_path: Path) -> None:
    db = Store(tmp_path / "csi.duckdb")
    demo = _dataset(tmp_path / "data" / "demo")
    with pytest.raises(NoDatasetFolder, match="check the partition name"):  # a typo, or a folder not made yet
        dataset_folder(db, "nosuch", demo)
    assert folder_store.bound_folders(db, "nosuch") is None
    other = _dataset(tmp_path / "data" / "other")
    dataset_folder(db, "other", demo)
    other.rename(tmp_path / "moved")
    with pytest.raises(NoDatasetFolder, match="csi datasets --forget other"):
        dataset_folder(db, "other", demo)


def test_a_symlink_to_a_recorded_dataset_is_not_a_second_dataset(tmp_path: Path) -> None:
    db = Store(tmp_path / "csi.duckdb")
    demo = _dataset(tmp_path / "data" / "demo")
    dataset_folder(db, "other", _dataset(tmp_path / "data" / "other"))
    (tmp_path / "data" / "otherlink").symlink_to(tmp_path / "data" / "other")
    with pytest.raises(FolderConflict, match="is the folder of dataset 'other'"):
        dataset_folder(db, "otherlink", demo)
    assert folder_store.bound_folders(db, "otherlink") is None


def test_registering_the_default_dataset_refuses_a_folder_without_a_catalog(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    for folder in (tmp_path / "data" / "nosuch", tmp_path / "data" / ".hidden"):
        monkeypatch.setenv("CSI_DATASET_DIR", str(folder))
        assert register_default() == 2
        assert "error:" in capsys.readouterr().err
    monkeypatch.setenv("CSI_DATASET_DIR", str(_dataset(tmp_path / "data" / "demo")))
    assert register_default() == 0 and capsys.readouterr().out.strip() == "demo"
    with dg.DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions("datasets") == ["demo"]


def test_a_training_folder_that_is_a_dataset_folder_is_refused_and_not_recorded(tmp_path: Path) -> None:
    db = Store(tmp_path / "csi.duckdb")
    dataset_folder(db, "beta", _dataset(tmp_path / "data" / "beta"))
    with pytest.raises(FolderConflict, match=r"data/beta, is a dataset folder"):  # trainings beside the datasets
        training_folder(db, "beta", tmp_path / "data" / "alpha_training", "alpha")
    assert folder_store.bound_folders(db, "beta").training_folder is None
