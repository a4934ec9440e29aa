"""Delta batches: the sensor finds them exactly once, bad ones are quarantined, and ingesting a batch makes its
performances identifiable with the promoted model without retraining."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from csi_assets.assets import ingestion
from csi_assets.identify import Identifier
from csi_assets.sensors.delta_dataset import delta_dataset_sensor
from csi_assets.store import catalog as catalog_store
from csi_assets.store import embeddings as embedding_store
from csi_assets.store import ingest as ingest_store
from csi_assets.store import splits as split_store
from csi_model.synth import generate_covers
from csi_assets.store import features as feature_store
from tests.graph_fixtures import make_project
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
    return project, model_id


def _evaluate(instance: dg.DagsterInstance, project, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=project.resources)
    return delta_dataset_sensor(context)


def test_sensor_ingests_good_and_partly_bad_batches_and_quarantines_unreadable(project) -> None:
    project, model_id = project
    incoming = project.dataset_dir / "incoming"
    incoming.mkdir()
    good = _batch_folder(incoming, "a_good", works=2, perfs=2, seed=11, prefix="new")
    partly = _batch_folder(incoming, "b_partly_bad", works=1, perfs=2, seed=12, prefix="mixed")
    catalog = partly / "dataset.txt"
    existing = catalog_store.performances(project.store, "dataset")[0]
    clash = json.loads(catalog.read_text().splitlines()[0]) | {"perf": existing["perf"], "work": "someone_else"}
    (partly / "wav" / "broken.wav").write_bytes(b"not audio at all")
    catalog.write_text(catalog.read_text() + "{broken json\n"
                       + json.dumps({"perf": "mixed_broken", "wav": "wav/broken.wav", "dur_s": 1.0,
                                     "work": "mixed_work"}) + "\n" + json.dumps(clash) + "\n")
    unreadable = incoming / "c_unreadable"
    unreadable.mkdir()
    (unreadable / "notes.md").write_text("no catalog here")
    before = {r["perf"]: r for r in catalog_store.performances(project.store, "dataset")}

    instance = dg.DagsterInstance.ephemeral()
    result = _evaluate(instance, project, None)
    assert len(result.run_requests) == 2
    keys = [r.partition_key for r in result.run_requests]
    assert keys == [ingestion.batch_id_of(good), ingestion.batch_id_of(partly)]
    assert list(result.dynamic_partitions_requests[0].partition_keys) == keys
    assert result.cursor and set(json.loads(result.cursor)) == {"a_good", "b_partly_bad"}  # quarantined: gone
    assert not unreadable.exists()
    assert (project.dataset_dir / "rejected" / "c_unreadable").is_dir()
    assert "dataset.txt" in (project.dataset_dir / "rejected" / "c_unreadable.error.txt").read_text()
    rejected_state = [b for b in ingest_store.batches(project.store, "dataset") if b["status"] == "rejected"]
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

    after = {r["perf"]: r for r in catalog_store.performances(project.store, "dataset")}
    assert {p: after[p] for p in before} == before  # nothing already stored changed
    new = sorted(set(after) - set(before))
    assert len(new) == 2 * 2 + 2
    embedded = embedding_store.embedded_perfs(project.store, "dataset", model_id)
    assert set(new) <= embedded
    reasons = [r["reason"] for r in catalog_store.rejected(project.store, "dataset")
               if r["source"] == str(catalog)]
    assert len(reasons) == 3
    assert any("invalid JSON" in r for r in reasons)
    assert any("broken.wav" in r for r in reasons)
    assert any("already exists with different content" in r for r in reasons)
    states = {b["batch_id"]: b for b in ingest_store.batches(project.store, "dataset")}
    assert states[keys[0]]["status"] == "ingested" and states[keys[0]]["n_good"] == 4
    assert states[keys[1]]["status"] == "ingested" and states[keys[1]]["n_bad"] == 3
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
        counts = ingestion.ingest_batch(db, project.resources["dataset"], request.partition_key,
                                        Path(state["source"]), _Quiet())
        ingest_store.record_batch(db, request.partition_key, "dataset", state["source"], ingest_store.INGESTED,
                                  n_good=counts["performances"])
    perfs = [r["perf"] for r in catalog_store.performances(db, "dataset") if r["perf"].startswith("drop_")]
    assert sorted(perfs) == [f"drop_{i:03d}" for i in range(100)]
    states = ingest_store.batches(db, "dataset")
    assert len(states) == 100 and {s["status"] for s in states} == {"ingested"}
    table = feature_store.feature_table(db, "dataset", project.resources["dataset"].cqt_settings()
                                        .settings_hash(), perfs=perfs)
    assert sorted(r["perf"] for r in table) == sorted(perfs)


class _Quiet:
    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...
