"""A delta batch that cannot be ingested is recorded ``failed`` with the reason: not left ``received`` (an embedding
shard failed), not ``ingested`` (no line could be stored)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from csi_assets.errors import RunFailed
from csi_assets.ingestion import batch_id_of, embed_batch_shard, intake_batch
from csi_assets.layouts import DatasetLayout
from csi_assets.shards import staging_dir
from csi_assets.store import catalog as catalog_store
from csi_assets.store import ingest as ingest_store
from tests.graph_fixtures import make_project
from tests.serving_fixtures import ORIGINALS_ONLY, materialize_data, project_with_model


def test_a_failing_embedding_shard_records_the_batch_failed_with_its_reason(tmp_path) -> None:
    project, _, _ = project_with_model(tmp_path, works=3, perfs=2, seconds=4.0)
    layout, db, log = DatasetLayout.at(project.dataset_dir), project.store, logging.getLogger("test")
    wav = sorted((project.dataset_dir / "wav").glob("*.wav"))[0]
    copy = project.dataset_dir / "batch_audio" / "new.wav"
    copy.parent.mkdir()
    shutil.copyfile(wav, copy)
    catalog = layout.incoming_dir / "batch.txt"
    catalog.parent.mkdir()
    catalog.write_text(json.dumps({"perf": "new_perf", "wav": str(copy), "dur_s": 4.0, "work": "new_work"}) + "\n")
    batch_id = batch_id_of(catalog)
    ingest_store.record_batch(db, batch_id, layout.name, str(catalog), ingest_store.RECEIVED)
    intake, shards = intake_batch(db, layout, batch_id, 0, log)
    assert intake.to_embed == 1 and len(shards) == 1
    feature = Path(shards[0].items[0]["feat"])
    feature.unlink()  # the worker that embeds the shard cannot read the batch's feature
    with pytest.raises(OSError):
        embed_batch_shard(db, layout, batch_id, shards[0], staging_dir(project.store_path), log)
    state = ingest_store.batch(db, batch_id)
    assert state is not None and state.status == ingest_store.FAILED
    assert state.reason and feature.name in state.reason


def test_a_batch_without_one_usable_line_fails_with_its_reasons_and_keeps_them(tmp_path) -> None:
    project = make_project(tmp_path, works=2, perfs=2, seconds=2.0, data_hparams=ORIGINALS_ONLY)
    materialize_data(project)
    layout, db = DatasetLayout.at(project.dataset_dir), project.store
    catalog = layout.incoming_dir / "batch.txt"
    catalog.parent.mkdir()
    catalog.write_text(json.dumps({"perf": "lost", "wav": "nowhere.wav", "dur_s": 2.0, "work": "w"}) + "\n{oops\n")
    batch_id = batch_id_of(catalog)
    ingest_store.record_batch(db, batch_id, layout.name, str(catalog), ingest_store.RECEIVED)
    with pytest.raises(RunFailed, match="none of its 2 line"):
        intake_batch(db, layout, batch_id, 0, logging.getLogger("test"))
    state = ingest_store.batch(db, batch_id)
    assert state.status == ingest_store.FAILED and "nowhere.wav" in state.reason
    assert len([r for r in catalog_store.rejected(db, layout.name) if r.source == str(catalog)]) == 2
