"""Datasets as partitions: two datasets beside each other live in one Dagster instance and one store, each with its
own history; one's run never touches or marks stale the other's; a partition key that is not a plain folder name
fails before anything is read or written; the dataset-folders sensor and the reference-refresh schedule act per
dataset."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._utils.test.data_versions import get_stale_status_resolver

from csi_assets.assets import data, labels, research, training
from csi_assets.dataset_folders import dataset_folder
from csi_assets.layouts import DatasetLayout
from csi_assets.partitions import datasets, ensure_partition
from csi_assets.partitions import labels as label_partitions
from csi_assets.resources import DatasetResource, StoreResource, TrainingResource
from csi_assets.schedules import reference_refresh_schedule
from csi_assets.sensors.dataset_folders import dataset_folders_sensor
from csi_assets.store import catalog as catalog_store
from csi_assets.store import features as feature_store
from csi_assets.store import splits as split_store
from csi_assets.store.summary import table_counts
from csi_model.synth import generate_covers
from tests.graph_fixtures import DATA_HPARAMS, Project, materialize
from tests.serving_fixtures import random_model, register_model, serving_hparams

DATA_ASSETS = [data.dataset_catalog, data.speed_variants, data.cqt_features, data.work_ids, data.data_splits]
ORIGINALS = {**DATA_HPARAMS, "aug_speed_mode": [1.0]}
SIZES = {"alpha": (3, 2), "beta": (4, 2)}  # works, performances per work


def _dataset(root: Path, name: str, works: int, perfs: int, seed: int = 0, **hparams: object) -> Project:
    """Dataset ``name`` under ``root/data``, training under ``root/training``, the store ``root/csi.duckdb``: the
    reference layout (``data/<name>``, ``training/<name>``), so datasets and their training folders never mix."""
    dataset_dir = root / "data" / name
    generate_covers(dataset_dir, works, perfs, seed=seed, seconds=3.0)
    (dataset_dir / "hparams.yaml").write_text(yaml.safe_dump({**ORIGINALS, **hparams}))
    (root / "training" / name / "config").mkdir(parents=True)
    return Project(root, dataset_dir, root / "training" / name, root / "csi.duckdb")


def _records(instance: dg.DagsterInstance, partition: str) -> dict[str, list[int]]:
    """{asset: storage ids of the partition's materializations}."""
    return {asset.key.to_user_string(): [r.storage_id for r in instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=[partition]), limit=100).records]
        for asset in DATA_ASSETS}


def _latest_metadata(instance: dg.DagsterInstance, asset: dg.AssetsDefinition, partition: str) -> dict:
    [record] = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=[partition]), limit=1).records
    materialization = record.event_log_entry.asset_materialization
    assert materialization.partition == partition
    return {k: getattr(v, "value", v) for k, v in materialization.metadata.items()}


def _stale(instance: dg.DagsterInstance, partition: str) -> dict[str, str]:
    """{asset: Dagster's stale status} of the partition's data assets."""
    resolver = get_stale_status_resolver(instance, DATA_ASSETS)
    return {a.key.to_user_string(): resolver.get_status(a.key, partition).value for a in DATA_ASSETS}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """Datasets alpha and beta beside each other, the same perf ids in both (the same generator), materialised
    in one instance with the same resources (those of alpha: beta is found by name beside it)."""
    root = tmp_path_factory.mktemp("two")
    alpha, beta = (_dataset(root, name, *SIZES[name]) for name in SIZES)
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(alpha, DATA_ASSETS, instance).success
    alpha_records, alpha_stale = _records(instance, "alpha"), _stale(instance, "alpha")
    assert materialize(beta, DATA_ASSETS, instance, resources=alpha.resources).success
    return alpha, beta, instance, alpha_records, alpha_stale


def test_each_dataset_is_its_own_partition_with_its_own_materializations(two) -> None:
    alpha, beta, instance, _, _ = two
    assert sorted(instance.get_dynamic_partitions(datasets.name)) == ["alpha", "beta"]
    for asset in DATA_ASSETS:
        assert instance.get_materialized_partitions(asset.key) == {"alpha", "beta"}
    for project in (alpha, beta):
        works, perfs = SIZES[project.dataset]
        catalog = _latest_metadata(instance, data.dataset_catalog, project.dataset)
        assert (catalog["performances"], catalog["works"], catalog["added"]) == (works * perfs, works, works * perfs)
        features = _latest_metadata(instance, data.cqt_features, project.dataset)
        assert features["features"] == features["computed_now"] == works * perfs
        assert _latest_metadata(instance, data.work_ids, project.dataset)["works"] == works


def test_the_store_holds_each_datasets_rows_apart(two) -> None:
    alpha, beta, *_ = two
    assert alpha.store_path == beta.store_path
    shared = {p.perf for p in catalog_store.performances(alpha.store, "alpha")} & {
        p.perf for p in catalog_store.performances(beta.store, "beta")}
    assert len(shared) == 3 * 2  # the same perf ids, stored twice: once per dataset
    for project in (alpha, beta):
        works, perfs = SIZES[project.dataset]
        performances = catalog_store.performances(project.store, project.dataset)
        assert len(performances) == works * perfs
        assert all(str(project.dataset_dir) in p.wav for p in performances)  # each dataset's own audio
        settings = DatasetLayout.at(project.dataset_dir).cqt_settings().settings_hash()
        stored = feature_store.features(project.store, project.dataset, settings)
        assert len(stored) == works * perfs
        assert all(Path(r.path).parent == project.dataset_dir / "cqt_feat" / settings for r in stored.values())
        assert len(split_store.work_ids(project.store, project.dataset)) == works
        assert (project.dataset_dir / "full.txt").is_file()
    assert table_counts(alpha.store, "gamma")["performances"] == 0


def test_materialising_one_dataset_leaves_the_others_history_and_freshness_alone(two) -> None:
    alpha, beta, instance, alpha_records, alpha_stale = two
    assert set(alpha_stale.values()) == {"FRESH"}
    assert _records(instance, "alpha") == alpha_records
    assert _stale(instance, "alpha") == alpha_stale
    assert set(_stale(instance, "beta").values()) == {"FRESH"}
    # The resolver does see a partition go stale: alpha's catalog again makes alpha's downstream stale, not beta's.
    assert materialize(alpha, [data.dataset_catalog], instance).success
    stale = _stale(instance, "alpha")
    assert stale["dataset_catalog"] == "FRESH" and stale["work_ids"] == "STALE"
    assert set(_stale(instance, "beta").values()) == {"FRESH"}


def test_rematerialising_a_dataset_with_nothing_changed_recomputes_nothing(two) -> None:
    alpha, beta, instance, _, _ = two
    beta_records = _records(instance, "beta")
    features = {p: p.stat().st_mtime_ns for p in (alpha.dataset_dir / "cqt_feat").rglob("*.npy")}
    ids = split_store.work_ids(alpha.store, "alpha")
    result = materialize(alpha, DATA_ASSETS, instance)
    assert result.success
    catalog = _latest_metadata(instance, data.dataset_catalog, "alpha")
    assert catalog["added"] == catalog["changed"] == catalog["removed"] == 0
    assert _latest_metadata(instance, data.speed_variants, "alpha")["rendered_now"] == 0
    assert _latest_metadata(instance, data.cqt_features, "alpha")["computed_now"] == 0
    assert _latest_metadata(instance, data.work_ids, "alpha")["new_works"] == 0
    assert {p: p.stat().st_mtime_ns for p in features} == features
    assert split_store.work_ids(alpha.store, "alpha") == ids
    assert _records(instance, "beta") == beta_records
    assert set(_stale(instance, "alpha").values()) == set(_stale(instance, "beta").values()) == {"FRESH"}


# -- a partition key that is not a plain folder name ----------------------------------------------------------------

BAD_KEYS = ["../x", "..", "a/b", "/abs", ".hidden", "a|b", "a\\b", "x\ny"]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` by content hash (folders as such)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
@pytest.mark.parametrize("assets", [DATA_ASSETS, [research.sweep_plan], [training.trained_model]],
                         ids=["data", "sweep_plan", "trained_model"])
def test_a_partition_key_that_is_not_a_folder_name_fails_the_run_and_touches_nothing(two, key, assets) -> None:
    """Dagster accepts these keys (the UI, the API or a script may add them); the run must refuse them before it
    reads or writes a folder or the store."""
    alpha, _, instance, _, _ = two
    before = _snapshot(alpha.root)
    run = dg.materialize(assets, instance=instance, resources=alpha.resources, raise_on_error=False,
                         partition_key=str(ensure_partition(instance, key)))
    failures = [e.step_failure_data for e in run.all_events if e.is_step_failure]
    assert not run.success and failures
    for failure in failures:
        assert failure.user_failure_data is not None  # a dg.Failure, not a crash
        assert f"dataset name {key!r} is not a plain folder name" in failure.error.message
    assert not run.get_asset_materialization_events()
    assert _snapshot(alpha.root) == before
    assert not (alpha.root.parent / "x").exists() and not Path("/abs").exists()


def test_an_empty_partition_key_fails_asking_for_a_partition(two) -> None:
    """Dagster registers an empty key too; a run on it is a run without a partition."""
    alpha, _, instance, _, _ = two
    before = _snapshot(alpha.root)
    run = dg.materialize([data.dataset_catalog], instance=instance, resources=alpha.resources, raise_on_error=False,
                         partition_key=str(ensure_partition(instance, "")))
    [failure] = [e.step_failure_data for e in run.all_events if e.is_step_failure]
    assert "this asset is partitioned by dataset: pick a partition" in failure.error.message
    assert _snapshot(alpha.root) == before


def test_a_label_partition_of_a_bad_dataset_name_fails_naming_it(two) -> None:
    alpha, _, instance, _, _ = two
    before = _snapshot(alpha.root)
    key = ensure_partition(instance, "../alpha", label="genre")
    run = dg.materialize([labels.label_probe], instance=instance, resources=alpha.resources, raise_on_error=False,
                         partition_key=str(key))
    [failure] = [e.step_failure_data for e in run.all_events if e.is_step_failure]
    assert "dataset name '../alpha' is not a plain folder name" in failure.error.message
    assert _snapshot(alpha.root) == before


# -- the dataset-folders sensor ---------------------------------------------------------------------------------


def _apply(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    """What the daemon does with the sensor's registration requests."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def test_dataset_folders_sensor_registers_each_dataset_folder_and_its_labels_once(tmp_path: Path) -> None:
    demo = _dataset(tmp_path, "demo", 2, 2, labels=["genre"])
    _dataset(tmp_path, "other", 2, 2, labels=["genre", "era"])
    _dataset(tmp_path, "plain", 2, 2)
    (tmp_path / "data" / "no_catalog").mkdir()
    (tmp_path / "data" / "no_catalog" / "hparams.yaml").write_text(yaml.safe_dump({**ORIGINALS, "labels": ["x"]}))
    (tmp_path / "data" / ".hidden").mkdir()
    (tmp_path / "data" / ".hidden" / "dataset.txt").write_text("")
    (tmp_path / "data" / "a_file.txt").write_text("")
    instance = dg.DagsterInstance.ephemeral()
    resources = {"dataset": DatasetResource(dataset_dir=str(demo.dataset_dir)),
                 "store": StoreResource(path=str(demo.store_path))}

    def evaluate() -> dg.SensorResult:
        with dg.build_sensor_context(instance=instance, resources=resources) as context:
            result = dataset_folders_sensor(context)
        _apply(instance, result)
        return result

    first = evaluate()
    requested = {r.partitions_def_name: sorted(r.partition_keys) for r in first.dynamic_partitions_requests}
    assert requested == {"datasets": ["demo", "other", "plain"], "labels": ["era", "genre"]}
    assert sorted(instance.get_dynamic_partitions(datasets.name)) == ["demo", "other", "plain"]

    second = evaluate()
    assert not second.dynamic_partitions_requests and second.skip_reason is not None

    hparams = tmp_path / "data" / "plain" / "hparams.yaml"
    hparams.write_text(yaml.safe_dump({**ORIGINALS, "labels": ["genre", "mood"]}))
    third = evaluate()
    assert [(r.partitions_def_name, list(r.partition_keys)) for r in third.dynamic_partitions_requests] == [
        ("labels", ["mood"])]
    assert sorted(instance.get_dynamic_partitions(label_partitions.name)) == ["era", "genre", "mood"]

    generate_covers(tmp_path / "data" / "no_catalog", 1, 2, seed=1, seconds=2.0)  # now it is a dataset
    fourth = evaluate()
    assert {r.partitions_def_name: list(r.partition_keys) for r in fourth.dynamic_partitions_requests} == {
        "datasets": ["no_catalog"], "labels": ["x"]}
    assert not evaluate().dynamic_partitions_requests

    elsewhere = _dataset(tmp_path / "elsewhere", "imported", 1, 2, labels=["tala"])  # not beside the default one
    dataset_folder(demo.store, "imported", elsewhere.dataset_dir)  # recorded, as `csi import` records it
    fifth = evaluate()
    assert {r.partitions_def_name: list(r.partition_keys) for r in fifth.dynamic_partitions_requests} == {
        "datasets": ["imported"], "labels": ["tala"]}


# -- the reference-refresh schedule -----------------------------------------------------------------------------


def _tick(instance: dg.DagsterInstance, store: Path) -> dg.SkipReason | list[dg.RunRequest]:
    when = datetime(2026, 1, 2, 3, 0, tzinfo=UTC)
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=when,
                                   resources={"store": StoreResource(path=str(store))}) as context:
        return reference_refresh_schedule(context)


def test_reference_refresh_requests_one_run_per_registered_dataset_with_a_promoted_model(tmp_path: Path) -> None:
    alpha, _, gamma = (_dataset(tmp_path, name, 2, 2) for name in ("alpha", "beta", "gamma"))
    with dg.instance_for_test() as instance:  # a schedule's context needs a persistent instance
        skipped = _tick(instance, alpha.store_path)
        assert isinstance(skipped, dg.SkipReason)
        assert "no registered dataset has a promoted model" in skipped.skip_message
        instance.add_dynamic_partitions(datasets.name, ["alpha", "beta"])
        assert isinstance(_tick(instance, alpha.store_path), dg.SkipReason)  # registered, no model yet

        hp = serving_hparams()
        register_model(alpha, random_model(hp), hp)
        register_model(gamma, random_model(hp, seed=1), hp)  # promoted, but gamma is not a registered partition
        requests = _tick(instance, alpha.store_path)
        assert [(r.partition_key, r.run_key) for r in requests] == [("alpha", "alpha@2026-01-02T03:00:00+00:00")]
        assert reference_refresh_schedule.job_name == "refresh_references"

        instance.add_dynamic_partitions(datasets.name, ["gamma"])
        assert sorted(r.partition_key for r in _tick(instance, alpha.store_path)) == ["alpha", "gamma"]  # not beta


def test_a_dataset_named_like_the_default_training_folder_is_refused_not_given_that_folder(tmp_path: Path) -> None:
    """``CSI_TRAINING_DIR=training/main`` paired with dataset ``alpha``: a dataset folder ``data/main`` must not
    train in (and resume from) alpha's training folder."""
    alpha = _dataset(tmp_path, "alpha", 2, 2)
    main = _dataset(tmp_path, "main", 2, 2)
    resources = {"training": TrainingResource(training_dir=str(tmp_path / "training" / "main"), dataset_name="alpha")}
    (tmp_path / "training" / "main" / "config" / "hp_tuning.yaml").write_text("early_stopping_patience: 2\n")
    run = materialize(main, [research.sweep_plan], resources=resources, raise_on_error=False)
    [failure] = [e.step_failure_data for e in run.all_events if e.is_step_failure]
    assert "dataset 'main' would train in" in failure.error.message
    assert "the training folder of dataset 'alpha'" in failure.error.message
    assert materialize(alpha, [data.dataset_catalog], resources=resources).success  # alpha itself is fine


def test_a_training_folder_that_is_a_dataset_folder_fails_the_step_and_writes_nothing_there(tmp_path: Path) -> None:
    """Training folders put beside the dataset folders (``CSI_TRAINING_DIR=data/alpha_training``): dataset
    ``beta`` would train in ``data/beta``, its own dataset folder."""
    alpha = _dataset(tmp_path, "alpha", 2, 2)
    beta = _dataset(tmp_path, "beta", 2, 2)
    resources = {"training": TrainingResource(training_dir=str(tmp_path / "data" / "alpha_training"),
                                              dataset_name="alpha")}
    before = _snapshot(beta.dataset_dir)
    run = materialize(beta, [research.sweep_plan], resources=resources, raise_on_error=False)
    [failure] = [e.step_failure_data for e in run.all_events if e.is_step_failure]
    assert f"{beta.dataset_dir}, is a dataset folder" in failure.error.message
    assert _snapshot(beta.dataset_dir) == before
    assert alpha.dataset_dir.is_dir()


def test_a_default_dataset_folder_without_a_catalog_is_not_registered(tmp_path: Path) -> None:
    """Before `csi synth` (or a copy) fills it, the default folder is no partition any run could use."""
    instance = dg.DagsterInstance.ephemeral()
    resources = {"dataset": DatasetResource(dataset_dir=str(tmp_path / "data" / "demo")),
                 "store": StoreResource(path=str(tmp_path / "csi.duckdb"))}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = dataset_folders_sensor(context)
    assert not result.dynamic_partitions_requests
