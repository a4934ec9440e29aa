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
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from csi_assets.assets import ingestion
from csi_assets.identify import Identifier
from csi_assets.ingestion import batch_id_of, ingest_batch
from csi_assets.resources import StoreResource
from csi_assets.sensors.delta_dataset import delta_dataset_sensor
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import embeddings as embedding_store
from csi_assets.store import features as feature_store
from csi_assets.store import ingest as ingest_store
from csi_assets.store import splits as split_store
from csi_model.synth import generate_covers
from tests.graph_fixtures import make_project
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


def _evaluate(instance: dg.DagsterInstance, project, cursor: str | None,
              log_handler: logging.Handler | None = None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=project.resources)
    if log_handler:
        context.log.addHandler(log_handler)
    return delta_dataset_sensor(context)


def test_sensor_ingests_good_and_partly_bad_batches_and_quarantines_unreadable(project, incoming) -> None:
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

    instance = dg.DagsterInstance.ephemeral()
    result = _evaluate(instance, project, None)
    assert len(result.run_requests) == 2
    keys = [r.partition_key for r in result.run_requests]
    assert keys == [batch_id_of(good), batch_id_of(partly)]
    assert list(result.dynamic_partitions_requests[0].partition_keys) == keys
    assert unreadable.exists()  # it may still be being copied in: judged once it held still for a tick
    result = _evaluate(instance, project, result.cursor)
    assert not result.run_requests
    assert result.cursor and set(json.loads(result.cursor)) == {"a_good", "b_partly_bad"}  # quarantined: gone
    assert not unreadable.exists()
    assert (project.dataset_dir / "rejected" / "c_unreadable").is_dir()
    assert "dataset.txt" in (project.dataset_dir / "rejected" / "c_unreadable.error.txt").read_text()
    rejected_state = [b for b in ingest_store.batches(project.store, "dataset") if b.status == "rejected"]
    assert len(rejected_state) == 1

    again = _evaluate(instance, project, result.cursor)
    assert not again.run_requests

    instance.add_dynamic_partitions(ingestion.delta_batches.name, keys)
    for key in keys:
        run = dg.materialize([ingestion.ingested_batch], partition_key=key, instance=instance,
                             resources=project.resources)
        assert run.success
    # A daemon restart that lost the cursor still requests nothing: the partitions exist.
    assert not _evaluate(instance, project, None).run_requests

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


def test_hundred_batches_are_each_ingested_exactly_once(tmp_path) -> None:
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
    instance = dg.DagsterInstance.ephemeral()
    first = _evaluate(instance, project, None)
    assert len(first.run_requests) == 100
    assert len({r.run_key for r in first.run_requests}) == 100
    second = _evaluate(instance, project, first.cursor)
    assert not second.run_requests
    db = project.store
    for request in first.run_requests:
        state = ingest_store.batch(db, request.partition_key)
        counts = ingest_batch(db, project.resources["dataset"], request.partition_key,
                                        Path(state.source), _Quiet())
        ingest_store.record_batch(db, request.partition_key, "dataset", state.source, ingest_store.INGESTED,
                                  n_good=counts["performances"])
    perfs = [r.perf for r in catalog_store.performances(db, "dataset") if r.perf.startswith("drop_")]
    assert sorted(perfs) == [f"drop_{i:03d}" for i in range(100)]
    states = ingest_store.batches(db, "dataset")
    assert len(states) == 100 and {s.status for s in states} == {"ingested"}
    table = feature_store.feature_table(db, "dataset", project.resources["dataset"].cqt_settings()
                                        .settings_hash(), perfs=perfs)
    assert sorted(r.perf for r in table) == sorted(perfs)


class _Quiet:
    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


def _ingest(instance: dg.DagsterInstance, project, batch_id: str) -> dg.ExecuteInJobResult:
    if not instance.has_dynamic_partition(ingestion.delta_batches.name, batch_id):
        instance.add_dynamic_partitions(ingestion.delta_batches.name, [batch_id])
    run = dg.materialize([ingestion.ingested_batch], partition_key=batch_id, instance=instance,
                         resources=project.resources)
    assert run.success
    return run


def _stored(project, prefix: str) -> dict[str, dict]:
    return {r.perf: r for r in catalog_store.performances(project.store, "dataset") if r.perf.startswith(prefix)}


def test_grown_batch_is_a_new_batch_and_rerunning_a_batch_never_removes_what_it_stored(project, incoming) -> None:
    """A folder's own mtime does not change when a line is appended to its dataset.txt and the audio goes into its
    wav/ sub-folder: the sensor must see the content. Re-running an ingested partition (a retry, a re-execution
    from the UI) or ingesting the grown folder must keep every performance already stored."""
    project, model_id = project
    folder = _batch_folder(incoming, "grows", works=2, perfs=2, seed=21, prefix="grow")
    instance = dg.DagsterInstance.ephemeral()
    first = _evaluate(instance, project, None)
    [request] = first.run_requests
    _ingest(instance, project, request.partition_key)
    stored = _stored(project, "grow_")
    assert len(stored) == 4
    _ingest(instance, project, request.partition_key)  # the same batch a second time
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
    assert again.partition_key == batch_id_of(folder) != request.partition_key
    result = _ingest(instance, project, again.partition_key)
    metadata = result.asset_materializations_for_node("ingested_batch")[0].metadata
    assert metadata["performances"].value == 1 and metadata["already_present"].value == 4
    after = _stored(project, "grow_")
    assert {p: after[p] for p in stored} == stored
    assert set(after) - set(stored) == {record["perf"]}
    assert after[record["perf"]].batch_id == again.partition_key
    assert set(after) <= embedding_store.embedded_perfs(project.store, "dataset", model_id)
    _ingest(instance, project, request.partition_key)  # the first batch again, now reading the grown file
    assert _stored(project, "grow_") == after
    states = {b.batch_id: b for b in ingest_store.batches(project.store, "dataset")}
    assert states[again.partition_key].status == states[request.partition_key].status == "ingested"
    assert not _evaluate(instance, project, grown.cursor).run_requests


@pytest.mark.parametrize("kind", ["dangling_symlink", "symlink_loop", "named_pipe"])
def test_entry_that_cannot_be_a_batch_is_skipped_with_one_warning_and_blocks_no_other(
        project, incoming, kind, caplog) -> None:
    project, _ = project
    bad = incoming / "a_bad.txt"
    if kind == "dangling_symlink":
        bad.symlink_to(incoming / "gone_away")
    elif kind == "symlink_loop":
        bad.symlink_to(bad)
    else:
        os.mkfifo(bad)  # reading it would wait for a writer for ever
    good = _batch_folder(incoming, "b_good", works=1, perfs=1, seed=31, prefix="after_bad")
    instance = dg.DagsterInstance.ephemeral()
    first = _evaluate(instance, project, None, caplog.handler)
    again = _evaluate(instance, project, first.cursor, caplog.handler)
    assert [r.partition_key for r in first.run_requests] == [batch_id_of(good)]
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


def test_sensor_scan_survives_batches_that_come_and_go_while_it_reads(project, incoming, tmp_path) -> None:
    """A batch folder appears, is read by back-to-back sensor ticks, and is deleted or renamed away (as users and
    sync tools do) in another process: no tick fails, and the batch that stays is requested exactly once."""
    project, _ = project
    stays = _batch_folder(incoming, "a_stays", works=1, perfs=1, seed=41, prefix="stays")
    template = _batch_folder(tmp_path, "template", works=1, perfs=1, seed=42, prefix="churn")
    for i in range(300):  # many files: reading the folder takes long enough to be overtaken
        (template / f"note_{i:03d}.md").write_text(f"note {i}\n")
    churn = subprocess.Popen([sys.executable, "-c", CHURN, str(template), str(incoming), "8"],
                             stderr=subprocess.PIPE, text=True)
    instance = dg.DagsterInstance.ephemeral()
    requested, cursor = [], None
    try:
        while churn.poll() is None:
            result = _evaluate(instance, project, cursor)
            cursor = result.cursor
            requested += [r.partition_key for r in result.run_requests]
            instance.add_dynamic_partitions(ingestion.delta_batches.name,
                                            [r.partition_key for r in result.run_requests])
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


def _receive(tmp_path: Path, resources: dict) -> tuple[dg.DagsterInstance, str, str]:
    """A persistent instance of its own, the one batch of incoming/ received by the sensor: (instance, batch id,
    cursor)."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    instance = dg.DagsterInstance.from_config(str(home))
    first = delta_dataset_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    [request] = first.run_requests
    instance.add_dynamic_partitions(ingestion.delta_batches.name, [request.partition_key])
    return instance, request.partition_key, first.cursor


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
        instance, batch_id, _ = _receive(root, resources)
        run = dg.materialize([ingestion.ingested_batch], partition_key=batch_id, instance=instance,
                             resources=resources)
        assert run.success
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
    instance, batch_id, cursor = _receive(tmp_path, resources)
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home"),
           "PYTHONPATH": str(REPO)}
    worker = subprocess.run(
        [sys.executable, "-m", "tests.ingest_until_killed", stage, str(project.dataset_dir),
         resources["store"].path, batch_id], env=env, capture_output=True, text=True)
    assert worker.returncode == -signal.SIGKILL, worker.stderr[-3000:]
    assert ingest_store.batch(Store(resources["store"].path), batch_id).status == "received"

    retry = delta_dataset_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources))
    assert [r.partition_key for r in retry.run_requests] == [batch_id], "the killed batch was not requested again"
    run = dg.materialize([ingestion.ingested_batch], partition_key=batch_id, instance=instance,
                         resources=resources, tags=retry.run_requests[0].tags)
    assert run.success
    tables, vectors = _end_state(Store(resources["store"].path))
    assert tables == expected[0]
    np.testing.assert_allclose(vectors, expected[1], atol=1e-5)
    assert not delta_dataset_sensor(dg.build_sensor_context(instance=instance, cursor=retry.cursor,
                                                            resources=resources)).run_requests
