"""The store never loses what it holds: a catalog file or a delta batch only ever writes the performances it owns,
a perf id held by one is never silently taken over by another, and a catalog with no usable line changes nothing
(nor does reference_embeddings delete embeddings before it knows it can succeed)."""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import dagster as dg
import pytest

from csi_assets.assets import data, serving
from csi_assets.catalog import split_collisions
from csi_assets.ingestion import ingest_batch
from csi_assets.layouts import DatasetLayout
from csi_assets.resources import StoreResource
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import ingest as ingest_store
from csi_assets.store.summary import table_counts
from tests.graph_fixtures import materialize
from tests.serving_fixtures import project_with_model

LOG = logging.getLogger(__name__)


def _row(perf: str, version: int) -> dict:
    return {"perf": perf, "wav": f"/audio/{perf}.wav", "dur_s": 3.0 + version, "work": f"work_{perf[-1]}",
            "version": None, "line_no": version, "audio_hash": f"hash_{perf}_{version}", "audio_size": 1,
            "audio_mtime_ns": 1}


def _rows(store: Store) -> dict[str, tuple]:
    with store.transaction() as con:
        rows = con.execute("SELECT perf, source, batch_id, audio_hash, dur_s FROM performances").fetchall()
    return {r[0]: r for r in rows}


def _owner_of(row: tuple) -> str:
    return row[2] or "main"


def test_catalog_writes_never_touch_rows_they_do_not_own(tmp_path: Path) -> None:
    """Random interleavings of the main catalog (read from one file or another: a moved folder, an imported
    full.txt) and three batches writing random rows over a shared pool of perf ids (the rows of perf ids others hold
    are set aside first by split_collisions, as the assets do)."""
    store = Store(tmp_path / "csi.duckdb")
    rng = random.Random(0)
    owners = ["main.txt", "moved/main.txt", "batch_a", "batch_b", "batch_c"]
    pool = [f"perf_{i:02d}" for i in range(24)]
    for step in range(60):
        owner = rng.choice(owners)
        batch_id = owner if owner.startswith("batch") else None
        source = f"incoming/{owner}/dataset.txt" if batch_id else owner
        before = _rows(store)
        wanted = [_row(p, rng.randrange(3)) for p in rng.sample(pool, rng.randrange(0, 8))]
        held = {r.perf: r for r in catalog_store.performances(store, "d")}
        own, _, _ = split_collisions(wanted, held, source, batch_id)
        if batch_id:
            catalog_store.add_batch_rows(store, "d", source, batch_id, own, [], [])
        else:
            catalog_store.replace_catalog(store, "d", source, own, [], [])
        after = _rows(store)
        mine = {p for p, r in after.items() if _owner_of(r) == (batch_id or "main")}
        others_before = {p: r for p, r in before.items() if _owner_of(r) != (batch_id or "main")}
        assert {p: after.get(p) for p in others_before} == others_before, f"step {step}: {owner} touched others"
        assert {r["perf"] for r in own} <= mine
        if batch_id:  # a batch only adds
            assert {p for p, r in before.items() if _owner_of(r) == batch_id} <= mine, f"step {step}"
        else:  # the main catalog holds exactly what it was given
            assert mine == {r["perf"] for r in own}, f"step {step}"

    taken = next(p for p, r in _rows(store).items() if _owner_of(r) == "batch_a")
    before = _rows(store)
    with pytest.raises(catalog_store.CatalogConflict, match=taken):  # the store refuses a take-over by itself
        catalog_store.replace_catalog(store, "d", "main.txt", [_row(taken, 9)], [], [])
    with pytest.raises(catalog_store.CatalogConflict, match=taken):
        catalog_store.add_batch_rows(store, "d", "x/dataset.txt", "batch_z", [_row(taken, 9)], [], [])
    assert _rows(store) == before


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    project, model_id, _ = project_with_model(tmp_path_factory.mktemp("ownership"), works=3, perfs=2, seconds=4.0)
    run = materialize(project, [serving.reference_embeddings])
    assert run.success
    return project, model_id


def _counts(project) -> dict[str, int]:
    return table_counts(project.store, "dataset")


@pytest.mark.parametrize("content", ["", "\n\n", "{not json\nperf_only\n",
                                     json.dumps({"perf": "x", "wav": "wav/none.wav", "dur_s": 3, "work": "w"})])
def test_catalog_with_no_usable_line_fails_and_changes_nothing(served, content: str) -> None:
    project, _ = served
    catalog = project.dataset_dir / "dataset.txt"
    original = catalog.read_text()
    before = _counts(project)
    catalog.write_text(content)
    try:
        with pytest.raises(dg.Failure, match="no usable line"):
            materialize(project, [data.dataset_catalog])
    finally:
        catalog.write_text(original)
    assert _counts(project) == before


def test_reference_embeddings_without_references_fails_before_deleting(served, tmp_path: Path) -> None:
    """A store whose catalog lost every performance (as an empty dataset.txt once did)."""
    project, model_id = served
    copy = tmp_path / "csi.duckdb"
    shutil.copyfile(project.store_path, copy)
    store = Store(copy)
    catalog_store.replace_catalog(store, "dataset", str(project.dataset_dir / "dataset.txt"), [], [], [])
    embedded = table_counts(store, "dataset")["embeddings"]
    assert embedded > 0
    with pytest.raises(dg.Failure, match="cqt_features first"):
        materialize(project, [serving.reference_embeddings], resources={"store": StoreResource(path=str(copy))})
    assert table_counts(store, "dataset")["embeddings"] == embedded


@pytest.mark.parametrize("recording", ["other_audio", "same_recording"])
def test_main_catalog_never_takes_over_a_perf_id_an_ingested_batch_holds(served, tmp_path: Path,
                                                                         recording: str) -> None:
    project, _ = served
    dataset = DatasetLayout.at(project.dataset_dir)
    batch = tmp_path / "batch"
    shutil.copytree(project.dataset_dir / "wav", batch / "wav")
    wav = sorted((batch / "wav").glob("*.wav"))[0]
    line = {"perf": f"held_{recording}", "wav": f"wav/{wav.name}", "dur_s": 4.0, "work": "held_work"}
    (batch / "dataset.txt").write_text(json.dumps(line) + "\n")
    ingest_batch(project.store, dataset, "batch_held", batch / "dataset.txt", LOG)
    stored = {r.perf: r for r in catalog_store.performances(project.store, "dataset")}[line["perf"]]
    assert stored.batch_id == "batch_held"

    catalog = project.dataset_dir / "dataset.txt"
    original = catalog.read_text()
    main_line = {**line, "wav": str(wav)} if recording == "same_recording" else {
        **line, "wav": str(sorted((project.dataset_dir / "wav").glob("*.wav"))[-1]), "work": "another_work"}
    catalog.write_text(original + json.dumps(main_line) + "\n")
    line_no = len(original.splitlines()) + 1
    try:
        run = materialize(project, [data.dataset_catalog])
        metadata = run.asset_materializations_for_node("dataset_catalog")[0].metadata
        rejected = [r for r in catalog_store.rejected(project.store, "dataset") if r.source == str(catalog)]
    finally:
        catalog.write_text(original)
    after = {r.perf: r for r in catalog_store.performances(project.store, "dataset")}[line["perf"]]
    assert after == stored
    if recording == "same_recording":
        assert metadata["already_present"].value == 1 and not rejected
    else:
        [reason] = [r.reason for r in rejected if r.line_no == line_no]
        assert str(catalog) in reason and f"line {line_no}" in reason and "batch_held" in reason
    assert ingest_store.known_perfs(project.store, "dataset", [line["perf"]])[line["perf"]].batch_id == "batch_held"
    materialize(project, [data.dataset_catalog])
