"""Delta batches: the sensor finds them exactly once, bad ones are quarantined, and ingesting a batch makes its
performances identifiable with the promoted model without retraining."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml
from dagster._core.definitions.sensor_definition import SensorExecutionData
from dagster_shared.record import copy

from csi_assets.assets import ingestion
from csi_assets.identify import Identifier
from csi_assets.ingestion import batch_id_of, entry_signature, ingest_batch
from csi_assets.jobs import ingest_job
from csi_assets.layouts import DatasetLayout
from csi_assets.partitions import BATCH, DATASET, dataset_batches, dataset_key, datasets, delta_batches
from csi_assets.resources import StoreResource
from csi_assets.sensors.dataset_folders import dataset_folders_sensor
from csi_assets.sensors.delta_dataset import MAX_RUNS_PER_BATCH, delta_dataset_sensor
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import embeddings as embedding_store
from csi_assets.store import features as feature_store
from csi_assets.store import ingest as ingest_store
from csi_assets.store import splits as split_store
from csi_model.synth import generate_covers
from tests.graph_fixtures import Project, make_project, materialize
from tests.paths import REPO
from tests.serving_fixtures import ORIGINALS_ONLY, materialize_data, project_with_model


def _batch_folder(root: Path, name: str, works: int, perfs: int, seed: int, prefix: str) -> Path:
    """A batch folder: synthetic covers whose perf and work ids are renamed so they are new to the catalog."""
    tmp = root / f".{name}-build"
    generate_covers(tmp, works, perfs, seed=seed, seconds=4.0)
    lines = []
    for line in (tmp / "dataset.txt").read_text().splitlines():
        record = json.loads(line)
        record["perf"] = f"{prefix}_{record['perf']}"
        record["work"] = f"{prefix}_{record['work']}"
        lines.append(json.dumps(record))
    (tmp / "dataset.txt").write_text("\n".join(lines) + "\n")
    target = root / name
    tmp.rename(target)
    return target


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project, model_id, _ = project_with_model(tmp_path_factory.mktemp("ingest"), works=4, perfs=2, seconds=4.0)
    shutil.copyfile(project.store_path, _pristine(project))  # the store before any test ingested anything
    return project, model_id


def _pristine(project) -> Path:
    return project.root / "pristine.duckdb"


@pytest.fixture
def incoming(project) -> Path:
    """The shared project's incoming/ folder, emptied after the test so the next one starts from nothing."""
    folder = project[0].dataset_dir / "incoming"
    folder.mkdir(exist_ok=True)
    yield folder
    shutil.rmtree(folder)


_LAUNCHED: dict[str, set[str]] = {}
"""The run keys the sensor requested on each instance (by its folder): the run keys the daemon launched."""


def _evaluate(instance: dg.DagsterInstance, project: Project, cursor: str | None = None,
              log_handler: logging.Handler | None = None, resources: dict | None = None,
              launched_dropped: bool = True) -> SensorExecutionData:
    """One tick of the delta sensor as the daemon runs it, on a persistent instance: its run requests resolved
    against ``ingest_job`` (a partition key whose parts are neither registered nor requested fails here), then its
    partition requests applied to the instance. A request whose run key an earlier tick on the instance requested
    is dropped, as the daemon drops a request whose run key names a run it launched (the tests launch nothing: a
    batch whose run is missing is requested again under its first run key); ``launched_dropped=False`` returns the
    tick's requests as the sensor made them."""
    resources = resources or project.resources
    defs = dg.Definitions(assets=[ingestion.ingested_batch], jobs=[ingest_job], sensors=[delta_dataset_sensor],
                          resources=resources)
    context = dg.build_sensor_context(instance=instance, instance_ref=instance.get_ref(), cursor=cursor,
                                      resources=resources, definitions=defs)
    if log_handler:
        context.log.addHandler(log_handler)
    tick = delta_dataset_sensor.evaluate_tick(context)
    for request in tick.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    launched = _LAUNCHED.setdefault(instance.root_directory, set())
    new = [r for r in tick.run_requests if r.run_key not in launched]
    launched.update(r.run_key for r in tick.run_requests)
    return copy(tick, run_requests=new) if launched_dropped else tick


def _persistent(home: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.from_config(str(home))


@pytest.fixture
def instance(tmp_path) -> Iterator[dg.DagsterInstance]:
    """A persistent instance of the test's own (the daemon's sensor ticks need one to resolve partition keys)."""
    with _persistent(tmp_path / "dagster_home") as persistent:
        yield persistent


def _parts(request: dg.RunRequest) -> dict[str, str]:
    """The (dataset, batch) of a run request's partition key."""
    return dict(dataset_batches.get_partition_key_from_str(str(request.partition_key)).keys_by_dimension)


def _batches(tick: SensorExecutionData) -> list[str]:
    return [_parts(r)[BATCH] for r in tick.run_requests]


def _ingest(instance: dg.DagsterInstance, project: Project, request: dg.RunRequest,
            resources: dict | None = None) -> dg.ExecuteInJobResult:
    """Run ``ingested_batch`` for a request of the sensor: its partition must already be registered (the tick did
    it), and the run is on exactly the requested key."""
    parts = _parts(request)
    assert parts[DATASET] == project.dataset
    assert instance.has_dynamic_partition(datasets.name, parts[DATASET])
    assert instance.has_dynamic_partition(delta_batches.name, parts[BATCH])
    run = materialize(project, [ingestion.ingested_batch], instance=instance, resources=resources,
                      batch=parts[BATCH])
    assert run.success and run.dagster_run.tags["dagster/partition"] == str(request.partition_key)
    return run


def test_sensor_ingests_good_and_partly_bad_batches_and_quarantines_unreadable(project, incoming, instance,
                                                                               tmp_path) -> None:
    project, model_id = project
    good = _batch_folder(incoming, "a_good", works=2, perfs=2, seed=11, prefix="new")
    partly = _batch_folder(incoming, "b_partly_bad", works=1, perfs=2, seed=12, prefix="mixed")
    catalog = partly / "dataset.txt"
    existing = catalog_store.performances(project.store, "dataset")[0]
    clash = json.loads(catalog.read_text().splitlines()[0]) | {"perf": existing.perf, "work": "someone_else"}
    (partly / "wav" / "broken.wav").write_bytes(b"not audio at all")
    catalog.write_text(catalog.read_text() + "{broken json\n"
                       + json.dumps({"perf": "mixed_broken", "wav": "wav/broken.wav", "dur_s": 1.0,
                                     "work": "mixed_work"}) + "\n" + json.dumps(clash) + "\n")
    unreadable = incoming / "c_unreadable"
    unreadable.mkdir()
    (unreadable / "notes.md").write_text("no catalog here")
    before = {r.perf: r for r in catalog_store.performances(project.store, "dataset")}

    first = _evaluate(instance, project, None)
    assert len(first.run_requests) == 2
    keys = _batches(first)
    assert keys == [batch_id_of(good), batch_id_of(partly)]
    assert all(_parts(r)[DATASET] == "dataset" for r in first.run_requests)
    assert {r.partitions_def_name: list(r.partition_keys) for r in first.dynamic_partitions_requests} == \
        {datasets.name: ["dataset"], delta_batches.name: keys}  # the default dataset registered with its batches
    assert unreadable.exists()  # it may still be being copied in: judged once it held still for a tick
    result = _evaluate(instance, project, first.cursor)
    assert not result.run_requests
    assert result.cursor and json.loads(result.cursor).keys() == {"dataset"}
    assert set(json.loads(result.cursor)["dataset"]) == {"a_good", "b_partly_bad"}  # quarantined: gone
    assert not unreadable.exists()
    assert (project.dataset_dir / "rejected" / "c_unreadable").is_dir()
    assert "dataset.txt" in (project.dataset_dir / "rejected" / "c_unreadable.error.txt").read_text()
    rejected_state = [b for b in ingest_store.batches(project.store, "dataset") if b.status == "rejected"]
    assert len(rejected_state) == 1

    again = _evaluate(instance, project, result.cursor)
    assert not again.run_requests

    for request in first.run_requests:
        _ingest(instance, project, request)
    # A daemon restart that lost the cursor still requests nothing: the partitions exist.
    assert not _evaluate(instance, project, None).run_requests
    # the single-dataset sensor's cursor (entries at the top level) is read as the default dataset's: a fresh
    # instance knows no partition nor run, so only the cursor keeps the (ingested) batches from being requested again
    flat = json.dumps(json.loads(again.cursor)["dataset"])
    with _persistent(tmp_path / "fresh_home") as fresh:
        migrated = _evaluate(fresh, project, flat, launched_dropped=False)
    assert not migrated.run_requests and json.loads(migrated.cursor) == json.loads(again.cursor)

    after = {r.perf: r for r in catalog_store.performances(project.store, "dataset")}
    assert {p: after[p] for p in before} == before  # nothing already stored changed
    new = sorted(set(after) - set(before))
    assert len(new) == 2 * 2 + 2
    embedded = embedding_store.embedded_perfs(project.store, "dataset", model_id)
    assert set(new) <= embedded
    reasons = [r.reason for r in catalog_store.rejected(project.store, "dataset")
               if r.source == str(catalog)]
    assert len(reasons) == 3
    assert any("invalid JSON" in r for r in reasons)
    assert any("broken.wav" in r for r in reasons)
    assert any("already exists with different content" in r for r in reasons)
    states = {b.batch_id: b for b in ingest_store.batches(project.store, "dataset")}
    assert states[keys[0]].status == "ingested" and states[keys[0]].n_good == 4
    assert states[keys[1]].status == "ingested" and states[keys[1]].n_bad == 3
    ids = split_store.work_ids(project.store, "dataset")
    assert {"new_work_000", "new_work_001", "mixed_work_000"} <= set(ids)

    # identify finds a newly ingested work, with the model it was embedded by (no retraining)
    identifier = Identifier(project.store_path, project.dataset_dir)
    query = good / "wav" / "w001_p1.wav"
    top = identifier.identify([query], top=3, works=True)[0]
    assert top.model == model_id
    assert top.matches[0].work == "new_work_001"


def test_hundred_batches_are_each_ingested_exactly_once(tmp_path, instance) -> None:
    """No model is promoted here: the batches are catalogued and featurised (embedding is the other test's)."""
    project = make_project(tmp_path, works=2, perfs=2, seconds=3.0, data_hparams=ORIGINALS_ONLY)
    materialize_data(project)
    incoming = project.dataset_dir / "incoming"
    incoming.mkdir()
    source = project.dataset_dir / "wav"
    wavs = sorted(source.glob("*.wav"))
    for i in range(100):  # single-file batches: a .txt catalog that points at one recording each
        wav = wavs[i % len(wavs)]
        copy = incoming.parent / "batch_audio" / f"b{i:03d}.wav"
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(wav, copy)
        (incoming / f"batch_{i:03d}.txt").write_text(json.dumps(
            {"perf": f"drop_{i:03d}", "wav": str(copy), "dur_s": 3.0, "work": f"drop_work_{i % 7}"}) + "\n")
    first = _evaluate(instance, project, None)
    assert len(first.run_requests) == 100
    assert len({r.run_key for r in first.run_requests}) == len(set(_batches(first))) == 100
    second = _evaluate(instance, project, first.cursor)
    assert not second.run_requests
    db = project.store
    layout = DatasetLayout.at(project.dataset_dir)
    for batch_id in _batches(first):
        state = ingest_store.batch(db, batch_id)
        counts = ingest_batch(db, layout, batch_id, Path(state.source), _Quiet())
        ingest_store.record_batch(db, batch_id, "dataset", state.source, ingest_store.INGESTED,
                                  n_good=counts["performances"])
    perfs = [r.perf for r in catalog_store.performances(db, "dataset") if r.perf.startswith("drop_")]
    assert sorted(perfs) == [f"drop_{i:03d}" for i in range(100)]
    states = ingest_store.batches(db, "dataset")
    assert len(states) == 100 and {s.status for s in states} == {"ingested"}
    table = feature_store.feature_table(db, "dataset", layout.cqt_settings().settings_hash(), perfs=perfs)
    assert sorted(r.perf for r in table) == sorted(perfs)


class _Quiet:
    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


def _stored(project, prefix: str) -> dict[str, dict]:
    return {r.perf: r for r in catalog_store.performances(project.store, "dataset") if r.perf.startswith(prefix)}


def test_grown_batch_is_a_new_batch_and_rerunning_a_batch_never_removes_what_it_stored(project, incoming,
                                                                                        instance) -> None:
    """A folder's own mtime does not change when a line is appended to its dataset.txt and the audio goes into its
    wav/ sub-folder: the sensor must see the content. Re-running an ingested partition (a retry, a re-execution
    from the UI) or ingesting the grown folder must keep every performance already stored."""
    project, model_id = project
    folder = _batch_folder(incoming, "grows", works=2, perfs=2, seed=21, prefix="grow")
    first = _evaluate(instance, project, None)
    [request] = first.run_requests
    _ingest(instance, project, request)
    stored = _stored(project, "grow_")
    assert len(stored) == 4
    _ingest(instance, project, request)  # the same batch a second time
    assert _stored(project, "grow_") == stored

    late = _batch_folder(project.root, "late_source", works=1, perfs=1, seed=22, prefix="grow_late")
    [line] = (late / "dataset.txt").read_text().splitlines()
    record = json.loads(line)
    mtime = folder.stat().st_mtime_ns
    shutil.copyfile(late / record["wav"], folder / "wav" / "late.wav")
    with (folder / "dataset.txt").open("a") as f:
        f.write(json.dumps(record | {"wav": "wav/late.wav"}) + "\n")
    assert folder.stat().st_mtime_ns == mtime

    grown = _evaluate(instance, project, first.cursor)
    [again] = grown.run_requests
    assert _parts(again)[BATCH] == batch_id_of(folder) != _parts(request)[BATCH]
    result = _ingest(instance, project, again)
    metadata = result.asset_materializations_for_node("ingested_batch")[0].metadata
    assert metadata["performances"].value == 1 and metadata["already_present"].value == 4
    after = _stored(project, "grow_")
    assert {p: after[p] for p in stored} == stored
    assert set(after) - set(stored) == {record["perf"]}
    assert after[record["perf"]].batch_id == _parts(again)[BATCH]
    assert set(after) <= embedding_store.embedded_perfs(project.store, "dataset", model_id)
    _ingest(instance, project, request)  # the first batch again, now reading the grown file
    assert _stored(project, "grow_") == after
    states = {b.batch_id: b for b in ingest_store.batches(project.store, "dataset")}
    assert states[_parts(again)[BATCH]].status == states[_parts(request)[BATCH]].status == "ingested"
    assert not _evaluate(instance, project, grown.cursor).run_requests


def _failure(result: dg.ExecuteInJobResult) -> str:
    [event] = [e for e in result.all_events if e.is_step_failure]
    return str(event.step_failure_data.user_failure_data.description)


def test_two_datasets_get_their_own_batches_and_content_one_holds_is_skipped_in_the_other(
        tmp_path, instance, caplog) -> None:
    """Two sibling dataset folders, registered by the dataset-folders sensor: a batch dropped into each one's
    incoming/ is requested and stored under that (dataset, batch) key; the same content dropped into the second
    dataset once the first holds it is skipped with one warning naming the holder (and a cursor marker), is not
    ingested by hand either, and the first dataset's rows stay as they were."""
    project = make_project(tmp_path, works=2, perfs=2, seconds=2.0, data_hparams=ORIGINALS_ONLY)
    second = Project(tmp_path, tmp_path / "second", tmp_path / "second_training", project.store_path)
    generate_covers(second.dataset_dir, 2, 2, seed=3, seconds=2.0)
    (second.dataset_dir / "hparams.yaml").write_text(yaml.safe_dump(ORIGINALS_ONLY))
    materialize_data(project)
    materialize_data(second)

    assert not instance.get_dynamic_partitions(datasets.name)  # the dataset-folders sensor registers both:
    folders = dataset_folders_sensor.evaluate_tick(dg.build_sensor_context(instance=instance,
                                                                           resources=project.resources))
    for request in folders.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    assert instance.get_dynamic_partitions(datasets.name) == ["dataset", "second"]

    sources = tmp_path / "sources"
    one = _batch_folder(sources, "one", works=1, perfs=2, seed=61, prefix="one")
    two = _batch_folder(sources, "two", works=1, perfs=2, seed=62, prefix="two")
    first_incoming, second_incoming = (DatasetLayout.at(p.dataset_dir).incoming_dir for p in (project, second))
    shutil.copytree(one, first_incoming / "one")
    shutil.copytree(two, second_incoming / "two")
    tick = _evaluate(instance, project, None, caplog.handler)
    assert [_parts(r) for r in tick.run_requests] == [{DATASET: "dataset", BATCH: batch_id_of(one)},
                                                      {DATASET: "second", BATCH: batch_id_of(two)}]
    _ingest(instance, project, tick.run_requests[0])
    _ingest(instance, second, tick.run_requests[1], resources=project.resources)  # the deployment's resources
    firsts, seconds = (catalog_store.performances(project.store, name) for name in ("dataset", "second"))
    assert {r.perf for r in firsts if r.batch_id} == {"one_w000_p0", "one_w000_p1"}
    assert {r.perf for r in seconds if r.batch_id} == {"two_w000_p0", "two_w000_p1"}
    held = ingest_store.batch(project.store, batch_id_of(one))
    assert (held.dataset, held.status) == ("dataset", "ingested")
    assert ingest_store.batch(project.store, batch_id_of(two)).dataset == "second"

    shutil.copytree(one, second_incoming / "again")  # the first dataset's batch, under another name
    assert batch_id_of(second_incoming / "again") == held.batch_id
    caplog.clear()
    skipped = _evaluate(instance, project, tick.cursor, caplog.handler)
    quiet = _evaluate(instance, project, skipped.cursor, caplog.handler)
    assert not skipped.run_requests and not quiet.run_requests
    assert json.loads(quiet.cursor)["second"]["again"] == [entry_signature(second_incoming / "again"), held.batch_id]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "again" in r.getMessage()]
    assert held.batch_id in warning and "'dataset'" in warning and "skipped" in warning
    assert (second_incoming / "again").is_dir()  # left for the user to change or remove

    by_hand = materialize(second, [ingestion.ingested_batch], instance=instance, resources=project.resources,
                          batch=held.batch_id, raise_on_error=False)  # the (second, batch of dataset) pair
    assert not by_hand.success
    assert f"batch {held.batch_id} was received by dataset 'dataset', not 'second'" in _failure(by_hand)
    assert catalog_store.performances(project.store, "dataset") == firsts
    assert catalog_store.performances(project.store, "second") == seconds
    assert ingest_store.batch(project.store, held.batch_id) == held


def _same_size_and_time(path: Path) -> None:
    """Rewrite a file with other bytes of the same length and put its modification time back: its entry's signature
    is as it was, its content hash is not."""
    info = path.stat()
    data = path.read_bytes()
    path.write_bytes(data[len(data) // 2:] + data[:len(data) // 2])
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_content_another_dataset_holds_is_hashed_once_while_it_stays_unchanged(tmp_path, instance, caplog) -> None:
    """An entry skipped because another dataset holds its content is remembered with its signature: later ticks
    neither hash it again nor warn again. Shown by changing one of its recordings without changing the file's
    size or modification time: the sensor still knows the entry as the skipped one (a hash would name new content,
    which nobody holds, and request it)."""
    project = make_project(tmp_path, works=1, perfs=1, seconds=2.0, data_hparams=ORIGINALS_ONLY)
    second = tmp_path / "second"
    generate_covers(second, 1, 1, seed=3, seconds=2.0)
    (second / "hparams.yaml").write_text(yaml.safe_dump(ORIGINALS_ONLY))
    instance.add_dynamic_partitions(datasets.name, ["dataset", "second"])
    one = _batch_folder(tmp_path / "sources", "one", works=1, perfs=1, seed=81, prefix="held")
    shutil.copytree(one, project.dataset_dir / "incoming" / "one")
    [request] = _evaluate(instance, project).run_requests
    assert _parts(request) == {DATASET: "dataset", BATCH: batch_id_of(one)}

    again = second / "incoming" / "again"
    shutil.copytree(one, again)
    caplog.clear()
    skipped = _evaluate(instance, project, None, caplog.handler)
    assert not skipped.run_requests
    signature = entry_signature(again)

    [wav] = sorted((again / "wav").glob("*.wav"))
    _same_size_and_time(wav)
    assert entry_signature(again) == signature and batch_id_of(again) != batch_id_of(one)
    for _ in range(2):
        tick = _evaluate(instance, project, skipped.cursor, caplog.handler)
        assert not tick.run_requests  # hashed again, it would be new content of the second dataset's
        assert json.loads(tick.cursor)["second"]["again"] == json.loads(skipped.cursor)["second"]["again"] == \
            [signature, batch_id_of(one)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "again" in r.getMessage()]
    assert len(warnings) == 1 and "'dataset'" in warnings[0].getMessage()


def test_a_stuck_batch_without_any_run_is_requested_under_its_first_run_key(tmp_path, instance) -> None:
    """A batch left ``received`` with no run under its (dataset, batch) partition -- received before batches were
    dataset partitions (its runs carry the batch id alone), or its run deleted -- is requested as run 1 under the
    run key of the sensor's own first request (the daemon launches nothing for a run key it launched). Its batch
    partition is registered in the same tick when it is missing. Once its run exists it is not requested again."""
    project = make_project(tmp_path, works=2, perfs=2, seconds=2.0, data_hparams=ORIGINALS_ONLY)
    materialize_data(project)
    sources = tmp_path / "before_upgrade"  # not in incoming/: received long ago, its folder kept elsewhere
    folders = [_batch_folder(sources, name, works=1, perfs=1, seed=91 + i, prefix=name)
               for i, name in enumerate(["registered", "unregistered"])]
    ids = [batch_id_of(folder) for folder in folders]
    for batch_id, folder in zip(ids, folders, strict=True):
        ingest_store.record_batch(project.store, batch_id, "dataset", str(folder / "dataset.txt"),
                                  ingest_store.RECEIVED)
    instance.add_dynamic_partitions(delta_batches.name, ids[:1])

    tick = _evaluate(instance, project, launched_dropped=False)  # a request of an unregistered partition fails here
    keys = [str(dataset_key("dataset", batch=batch_id)) for batch_id in ids]
    assert sorted((str(r.partition_key), r.run_key) for r in tick.run_requests) == sorted(zip(keys, keys, strict=True))
    assert {r.partitions_def_name: list(r.partition_keys) for r in tick.dynamic_partitions_requests
            }[delta_batches.name] == ids[1:]
    again = _evaluate(instance, project, tick.cursor, launched_dropped=False)  # no run yet: the same run keys
    assert sorted(r.run_key for r in again.run_requests) == sorted(keys)
    for request in tick.run_requests:
        _ingest(instance, project, request)
    assert {ingest_store.batch(project.store, batch_id).status for batch_id in ids} == {"ingested"}
    assert not _evaluate(instance, project, again.cursor, launched_dropped=False).run_requests


def test_a_batch_whose_runs_fail_is_requested_again_up_to_the_cap(tmp_path, instance) -> None:
    """A batch left ``failed`` is requested again -- its runs found by their (dataset, batch) partition tag, a
    failed run of another partition not counted -- until ``MAX_RUNS_PER_BATCH`` runs of it failed."""
    project = make_project(tmp_path, works=1, perfs=1, seconds=2.0, data_hparams=ORIGINALS_ONLY)
    folder = _batch_folder(project.dataset_dir / "incoming", "fails", works=1, perfs=1, seed=71, prefix="fails")
    tick = _evaluate(instance, project)
    [request] = tick.run_requests
    batch_id = _parts(request)[BATCH]
    shutil.rmtree(folder)  # its catalog is gone: every run of the batch fails
    other = materialize(project, [ingestion.ingested_batch], instance=instance, batch="0" * 16,
                        raise_on_error=False)
    assert not other.success  # never received: a failed run of another partition
    runs = []
    for attempt in range(1, MAX_RUNS_PER_BATCH + 1):
        if attempt > 1:
            [request] = tick.run_requests
            assert str(request.partition_key) == str(dataset_key("dataset", batch=batch_id))
            assert request.run_key == f"{request.partition_key}-run{attempt}"
            assert request.tags["csi/retry_of"] == runs[-1].run_id
        run = materialize(project, [ingestion.ingested_batch], instance=instance, batch=batch_id,
                          raise_on_error=False)
        assert not run.success and ingest_store.batch(project.store, batch_id).status == "failed"
        runs.append(run)
        tick = _evaluate(instance, project, tick.cursor)
    assert not tick.run_requests  # MAX_RUNS_PER_BATCH runs failed: left to the user, its reason stored
    assert ingest_store.batch(project.store, batch_id).reason


@pytest.mark.parametrize("kind", ["dangling_symlink", "symlink_loop", "named_pipe"])
def test_entry_that_cannot_be_a_batch_is_skipped_with_one_warning_and_blocks_no_other(
        project, incoming, kind, caplog, instance) -> None:
    project, _ = project
    bad = incoming / "a_bad.txt"
    if kind == "dangling_symlink":
        bad.symlink_to(incoming / "gone_away")
    elif kind == "symlink_loop":
        bad.symlink_to(bad)
    else:
        os.mkfifo(bad)  # reading it would wait for a writer for ever
    good = _batch_folder(incoming, "b_good", works=1, perfs=1, seed=31, prefix="after_bad")
    first = _evaluate(instance, project, None, caplog.handler)
    again = _evaluate(instance, project, first.cursor, caplog.handler)
    assert _batches(first) == [batch_id_of(good)]
    assert not again.run_requests
    assert len([r for r in caplog.records if "a_bad.txt" in r.getMessage() and r.levelno == logging.WARNING]) == 1
    assert bad.is_symlink() or bad.exists()  # left where it is: it may be a mount or a transfer in progress


CHURN = """
import shutil, sys, time
from pathlib import Path
template, incoming, cycles = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for i in range(cycles):
    shutil.copytree(template, incoming / ".z_churn")
    (incoming / ".z_churn").rename(incoming / "z_churn")
    time.sleep(0.3)  # listed and read by the scans, then
    if i % 2:
        shutil.rmtree(incoming / "z_churn")  # deleted in place, file by file
    else:
        (incoming / "z_churn").rename(incoming / ".z_gone")  # or renamed away
        shutil.rmtree(incoming / ".z_gone")
"""


def test_sensor_scan_survives_batches_that_come_and_go_while_it_reads(project, incoming, tmp_path, instance) -> None:
    """A batch folder appears, is read by back-to-back sensor ticks, and is deleted or renamed away (as users and
    sync tools do) in another process: no tick fails, and the batch that stays is requested exactly once."""
    project, _ = project
    stays = _batch_folder(incoming, "a_stays", works=1, perfs=1, seed=41, prefix="stays")
    template = _batch_folder(tmp_path, "template", works=1, perfs=1, seed=42, prefix="churn")
    for i in range(300):  # many files: reading the folder takes long enough to be overtaken
        (template / f"note_{i:03d}.md").write_text(f"note {i}\n")
    churn = subprocess.Popen([sys.executable, "-c", CHURN, str(template), str(incoming), "8"],
                             stderr=subprocess.PIPE, text=True)
    requested, cursor = [], None
    try:
        while churn.poll() is None:
            result = _evaluate(instance, project, cursor)  # registers the requested batches, as the daemon does
            cursor = result.cursor
            requested += _batches(result)
    finally:
        churn.kill()
        churn.wait()
    assert churn.returncode == 0, churn.stderr.read()
    assert requested.count(batch_id_of(stays)) == 1


KILL_STAGES = ["rows", "variants", "features", "embeddings"]


def _case_store(project, root: Path) -> dict:
    """Resources on a private copy of the store as it was before any test ingested anything."""
    store = root / "csi.duckdb"
    shutil.copyfile(_pristine(project), store)
    return {**project.resources, "store": StoreResource(path=str(store))}


def _end_state(store: Store) -> tuple[dict, np.ndarray]:
    """Every stored row a batch ingestion writes (tables as sorted tuples) and the embedding vectors."""
    queries = {
        "performances": "SELECT perf, wav, dur_s, work, source, line_no, audio_hash, batch_id FROM performances",
        "works": "SELECT work, work_id FROM works",
        "variants": "SELECT variant, perf, speed, wav, source_hash FROM variants",
        "features": "SELECT variant, settings_hash, path, n_frames, n_bins, audio_hash FROM features",
        "embeddings": "SELECT perf, model_id, segment, start_frame, audio_hash FROM embeddings",
        "batches": "SELECT batch_id, source, status, n_good, n_bad, reason FROM ingest_batches",
        "rejected": "SELECT source, line_no, perf, reason FROM rejected",
    }
    with store.transaction() as con:
        tables = {name: sorted(con.execute(sql).fetchall()) for name, sql in queries.items()}
        vectors = np.array(con.execute("SELECT vector FROM embeddings ORDER BY perf, model_id, segment").fetchall())
    return tables, vectors


def _receive(project: Project, tmp_path: Path, resources: dict) -> tuple[dg.DagsterInstance, dg.RunRequest, str]:
    """A persistent instance of its own, the one batch of incoming/ received (and its partition registered) by the
    sensor: (instance, run request, cursor)."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    instance = _persistent(home)
    first = _evaluate(instance, project, resources=resources)
    [request] = first.run_requests
    return instance, request, first.cursor


@pytest.fixture(scope="module")
def kill_batch(project, tmp_path_factory) -> tuple[Path, tuple[dict, np.ndarray]]:
    """A 4-performance batch folder (kept outside incoming/) and the end state of its uninterrupted ingestion."""
    project, _ = project
    batch = _batch_folder(tmp_path_factory.mktemp("kill"), "killed", works=2, perfs=2, seed=51, prefix="kill")
    root = tmp_path_factory.mktemp("uninterrupted")
    resources = _case_store(project, root)
    target = project.dataset_dir / "incoming" / batch.name
    target.parent.mkdir(exist_ok=True)
    shutil.copytree(batch, target)
    try:
        instance, request, _ = _receive(project, root, resources)
        _ingest(instance, project, request, resources)
    finally:
        shutil.rmtree(target)
    return batch, _end_state(Store(resources["store"].path))


@pytest.mark.parametrize("stage", KILL_STAGES)
def test_ingestion_killed_at_any_stage_resumes_to_the_uninterrupted_end_state(
        project, incoming, kill_batch, stage, tmp_path) -> None:
    project, _ = project
    batch, expected = kill_batch
    resources = _case_store(project, tmp_path)
    shutil.copytree(batch, incoming / batch.name)
    instance, request, cursor = _receive(project, tmp_path, resources)
    batch_id = _parts(request)[BATCH]
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "PYTHONPATH": str(REPO)}
    worker = subprocess.run(
        [sys.executable, "-m", "tests.ingest_until_killed", stage, str(project.dataset_dir),
         resources["store"].path, batch_id], env=env, capture_output=True, text=True)
    assert worker.returncode == -signal.SIGKILL, worker.stderr[-3000:]
    assert ingest_store.batch(Store(resources["store"].path), batch_id).status == "received"
    [killed] = instance.get_runs()
    assert killed.tags["dagster/partition"] == str(request.partition_key)  # what the retry looks runs up by

    retry = _evaluate(instance, project, cursor, resources=resources)
    assert [str(r.partition_key) for r in retry.run_requests] == [str(request.partition_key)], \
        "the killed batch was not requested again"
    assert retry.run_requests[0].tags["csi/retry_of"] == killed.run_id
    _ingest(instance, project, retry.run_requests[0], resources)
    tables, vectors = _end_state(Store(resources["store"].path))
    assert tables == expected[0]
    np.testing.assert_allclose(vectors, expected[1], atol=1e-5)
    assert not _evaluate(instance, project, retry.cursor, resources=resources).run_requests
