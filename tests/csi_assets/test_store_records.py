"""Typed store records: what is written through the store API reads back as equal records (random rows, several
seeds), and a query whose columns are not its record's fields fails naming both lists."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest

from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import embeddings as embedding_store
from csi_assets.store import evaluations as evaluation_store
from csi_assets.store import features as feature_store
from csi_assets.store import ingest as ingest_store
from csi_assets.store import models as model_store
from csi_assets.store import splits as split_store
from csi_assets.store.records import (
    CatalogWarningRecord,
    CentroidRecord,
    EvaluationRecord,
    FeatureRecord,
    FeatureTableRecord,
    IngestBatchRecord,
    ModelRecord,
    PerformanceRecord,
    RecordMismatch,
    RejectedLineRecord,
    VariantRecord,
)
from csi_assets.store.rows import fetch_records
from csi_model.calibration import Calibration

DATASET = "d"
SOURCE = "/data/d/dataset.txt"


def _text(rng: random.Random) -> str:
    """Ids are data: any text, including quotes, separators and non-ASCII."""
    return "".join(rng.choice("abcXYZ09_-. '\"/\\\u00e9\u4e2d\U0001f3b5") for _ in range(rng.randint(1, 12)))


def _number(rng: random.Random) -> float:
    """A value float32 holds exactly (vectors are stored as FLOAT)."""
    return rng.randint(-64, 64) / 8


def _performances(rng: random.Random) -> list[dict]:
    perfs = {_text(rng) for _ in range(rng.randint(1, 8))}
    works = [_text(rng) for _ in range(rng.randint(1, 3))]
    return [{"perf": perf, "wav": f"/audio/{_text(rng)}.wav", "dur_s": rng.uniform(0.5, 600.0),
             "work": rng.choice(works), "version": rng.choice([None, _text(rng)]), "line_no": line_no,
             "audio_hash": _text(rng), "audio_size": rng.randint(0, 2**40), "audio_mtime_ns": rng.randint(0, 2**62),
             "labels": {}} for line_no, perf in enumerate(sorted(perfs), start=1)]


def _variants(rng: random.Random, rows: list[dict]) -> list[VariantRecord]:
    variants = []
    for row in rows:
        for speed in sorted(rng.sample([0.8, 0.9, 1.0, 1.1], rng.randint(1, 3)) + [1.0]):
            if speed == 1.0 and any(v.variant == row["perf"] for v in variants):
                continue
            name = row["perf"] if speed == 1.0 else f"sp_{speed}-{row['perf']}"
            variants.append(VariantRecord(name, row["perf"], speed, f"/v/{name}.wav", row["dur_s"] / speed,
                                          row["audio_hash"]))
    return variants


def _features(rng: random.Random, variants: list[VariantRecord]) -> list[FeatureRecord]:
    settings = {"hop_size": rng.choice([0.02, 0.04]), "n_bins": 96, "origin": rng.choice(["import", _text(rng)])}
    return [FeatureRecord(v.variant, f"/f/{_text(rng)}.npy", rng.randint(1, 10_000), 96, v.source_hash, settings)
            for v in variants if rng.random() < 0.8]


@pytest.mark.parametrize("seed", range(4))
def test_catalog_variants_features_and_splits_read_back_as_written(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = Store(tmp_path / "csi.duckdb")
    rows = _performances(rng)
    rejected = [{"line_no": rng.randint(1, 99), "raw": _text(rng), "reason": _text(rng)} for _ in range(3)]
    warned = [{"line_no": r["line_no"], "perf": r["perf"], "message": _text(rng)} for r in rows[:2]]
    catalog_store.replace_catalog(store, DATASET, SOURCE, rows, rejected, warned)
    assert catalog_store.performances(store, DATASET) == [
        PerformanceRecord(**{k: v for k, v in r.items() if k != "labels"}, source=SOURCE, batch_id=None)
        for r in rows]
    assert catalog_store.rejected(store, DATASET) == sorted(
        (RejectedLineRecord(SOURCE, r["line_no"], None, r["reason"]) for r in rejected), key=lambda r: r.line_no)
    assert catalog_store.warnings(store, DATASET) == [CatalogWarningRecord(SOURCE, w["line_no"], w["perf"],
                                                                           w["message"]) for w in warned]

    variants = _variants(rng, rows)
    feature_store.replace_variants(store, DATASET, [r["perf"] for r in rows], variants)
    assert feature_store.variants(store, DATASET) == sorted(variants, key=lambda v: (v.perf, v.speed))
    features = _features(rng, variants)
    feature_store.record_features(store, DATASET, "h1", features)
    assert feature_store.features(store, DATASET, "h1") == {f.variant: f for f in features}

    work_ids = {w: i for i, w in enumerate(sorted({r["work"] for r in rows}))}
    split_store.add_work_ids(store, DATASET, work_ids)
    split_of = {r["perf"]: rng.choice(["train", "val", "test"]) for r in rows if rng.random() < 0.7}
    split_store.replace_splits(store, DATASET, split_of, {}, seed)
    by_perf, feature_of = {r["perf"]: r for r in rows}, {f.variant: f for f in features}
    assert feature_store.feature_table(store, DATASET, "h1") == [
        FeatureTableRecord(v.variant, v.perf, v.speed, v.wav, v.dur_s, p["wav"], p["dur_s"], p["work"], p["version"],
                           p["line_no"], None, feature_of[v.variant].path, feature_of[v.variant].n_frames,
                           feature_of[v.variant].audio_hash, work_ids[p["work"]], split_of.get(v.perf))
        for v in sorted(variants, key=lambda v: (v.perf, v.speed)) if v.variant in feature_of
        for p in [by_perf[v.perf]]]

    batch_rows = [dict(r, perf=f"new-{r['perf']}") for r in _performances(rng)]
    catalog_store.add_batch_rows(store, DATASET, "/in/b1/dataset.txt", "b1", batch_rows, [], [])
    known = ingest_store.known_perfs(store, DATASET, [r["perf"] for r in batch_rows])
    assert known == {r["perf"]: PerformanceRecord(**{k: v for k, v in r.items() if k != "labels"},
                                                  source="/in/b1/dataset.txt", batch_id="b1") for r in batch_rows}


def _without_time(record: object) -> object:
    times = {f.name: None for f in dataclasses.fields(record) if f.name in ("created_at", "received_at", "updated_at")}
    return dataclasses.replace(record, **times)


@pytest.mark.parametrize("seed", range(4))
def test_models_evaluations_batches_and_serving_statistics_read_back_as_written(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = Store(tmp_path / "csi.duckdb")
    models = []
    for i in range(rng.randint(1, 4)):
        model = ModelRecord(model_id=f"m{i}-{_text(rng)}", dataset=DATASET, training_dir=f"/t/{_text(rng)}",
                            checkpoint=f"/t/g_{i:08d}", epoch=rng.choice([None, rng.randint(0, 99)]),
                            fingerprint=_text(rng), hparams={"lr": _number(rng), "name": _text(rng)},
                            metrics={"mAP": {_text(rng): _number(rng)}}, promoted=False, created_at=None,
                            input_contract=rng.choice([None, {"hop": 640, "n_bins": rng.choice([84, 96])}]))
        written = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)}
        model_store.register_model(store, promote=False, **{k: v for k, v in written.items()
                                                             if k not in ("promoted", "created_at")})
        models.append(model)
    promoted = rng.choice(models)
    model_store.promote(store, DATASET, promoted.model_id)
    expected = [dataclasses.replace(m, promoted=m is promoted) for m in models]
    assert [_without_time(m) for m in model_store.models(store, DATASET)] == expected
    assert _without_time(model_store.get_model(store, promoted.model_id)) == dataclasses.replace(promoted,
                                                                                                  promoted=True)
    assert _without_time(model_store.promoted_model(store, DATASET)) == dataclasses.replace(promoted, promoted=True)
    assert model_store.get_model(store, "no such model") is None

    evaluations = {f"set-{_text(rng)}": {"mean_ap": _number(rng), "n_queries": rng.randint(1, 9)} for _ in range(3)}
    for name, metrics in evaluations.items():
        evaluation_store.record_evaluation(store, DATASET, promoted.model_id, name, metrics, f"/r/{name}")
    assert [_without_time(e) for e in evaluation_store.evaluations(store, DATASET, promoted.model_id)] == [
        EvaluationRecord(name, evaluations[name], f"/r/{name}", None) for name in sorted(evaluations)]

    batch_id = f"batch-{_text(rng)}"
    ingest_store.record_batch(store, batch_id, DATASET, "/in/x.txt", ingest_store.RECEIVED)
    ingest_store.record_batch(store, batch_id, DATASET, "/in/x.txt", ingest_store.FAILED, 3, 1, _text(rng))
    state = ingest_store.batch(store, batch_id)
    assert _without_time(state) == IngestBatchRecord(batch_id, DATASET, "/in/x.txt", ingest_store.FAILED, 3, 1,
                                                      state.reason, None, None)
    assert state.received_at <= state.updated_at and ingest_store.batches(store, DATASET) == [state]

    n, dim = rng.randint(1, 5), rng.choice([2, 8])
    work_ids = np.array(sorted(rng.sample(range(100), n)))
    centroids = np.array([[_number(rng) for _ in range(dim)] for _ in range(n)], dtype=np.float32)
    radii, coherence = [_number(rng) for _ in range(n)], [_number(rng) for _ in range(n)]
    members = [rng.randint(1, 9) for _ in range(n)]
    embedding_store.replace_centroids(store, DATASET, promoted.model_id, work_ids, centroids, np.array(radii),
                                      np.array(coherence), np.array(members))
    assert embedding_store.centroids(store, DATASET, promoted.model_id) == [
        CentroidRecord(int(w), c.tolist(), r, k, m) for w, c, r, k, m in zip(work_ids, centroids, radii, coherence,
                                                                             members)]

    quantiles = np.sort(np.array([_number(rng) for _ in range(5)], dtype=np.float32))
    calibration = Calibration(_number(rng), abs(_number(rng)) + 1, quantiles,
                              np.linspace(0, 1, 5, dtype=np.float32), rng.randint(10, 99), 5)
    embedding_store.save_calibration(store, DATASET, promoted.model_id, calibration)
    stored = embedding_store.calibration(store, DATASET, promoted.model_id)
    assert stored.model_id == promoted.model_id and stored.created_at is not None
    assert stored.calibration.to_dict() == calibration.to_dict()
    assert embedding_store.calibration(store, DATASET, "no such model") is None


def test_a_record_whose_fields_are_not_the_selected_columns_is_refused_naming_both(tmp_path: Path) -> None:
    store = Store(tmp_path / "csi.duckdb")
    catalog_store.replace_catalog(store, DATASET, SOURCE, _performances(random.Random(0)), [], [])
    with store.transaction() as con:
        with pytest.raises(RecordMismatch, match=r"\['perf', 'wav'\].*PerformanceRecord.*\['perf', 'wav', 'dur_s'"):
            fetch_records(con, "SELECT perf, wav FROM performances", [], PerformanceRecord)
        with pytest.raises(RecordMismatch, match=r"\['line_no', 'source', 'perf', 'reason'\].*RejectedLineRecord"):
            fetch_records(con, "SELECT line_no, source, perf, reason FROM rejected", [], RejectedLineRecord)
        with pytest.raises(RecordMismatch):  # refused before any row is read: an empty result is no excuse
            fetch_records(con, "SELECT perf, wav FROM performances WHERE false", [], PerformanceRecord)
