"""Reference embeddings of performances: which need embedding for a model, embedding them, and the sharded form
of that stage (plan → shards embedded anywhere → one commit), without Dagster.

A shard's result is two files beside the store: ``<shard id>.vectors.npy`` (float32 ``[segments, D]``, every
performance's segments in order) and ``<shard id>.rows.json`` (per performance: perf, audio hash, segment starts),
the rows file written last, so its presence means the shard is whole.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from csi_assets.errors import RunFailed, require_upstream
from csi_assets.layouts import DatasetLayout
from csi_assets.model_loading import (
    LoadedModel,
    ModelLoadError,
    dataset_input,
    load_model,
    load_model_fields,
    model_fields,
)
from csi_assets.progress import Log, Progress
from csi_assets.shards import Shard, ShardResult, finished, read_rows, rows_path, split_shards, write_rows
from csi_assets.store import Store
from csi_assets.store import embeddings as embedding_store
from csi_assets.store import features as feature_store
from csi_assets.store import models as model_store
from csi_assets.store import shards as shard_store
from csi_assets.store.records import FeatureTableRecord, ModelRecord
from csi_model.calibration import Calibration, compute_track_calibration
from csi_model.centroids import WorkCentroids, compute_centroids
from csi_model.cqt import load_feature
from csi_model.embedding import TRACKS_PER_BATCH, mean_unit_vectors
from csi_model.identifiers import is_original_speed


def reference_rows(store: Store, dataset: DatasetLayout, perfs: Sequence[str] | None = None
                   ) -> list[FeatureTableRecord]:
    """The original recording (speed 1.0) of every performance that has a feature (of ``perfs`` only, when
    given), with its work id: the references, what alignment and identification compare."""
    settings_hash = dataset.cqt_settings().settings_hash()
    return [r for r in feature_store.feature_table(store, dataset.name, settings_hash, perfs=perfs)
            if is_original_speed(r.speed)]


def promoted_for(store: Store, dataset: DatasetLayout, log: Log) -> LoadedModel:
    """The promoted model, refused (:class:`RunFailed`) unless the dataset's features are the ones it was trained
    on."""
    try:
        model = load_model(store, dataset.name)
        dataset_input(model, dataset.hparams(), log)
        return model
    except ModelLoadError as err:
        raise RunFailed(str(err)) from err


def pending_references(store: Store, dataset: str, model: LoadedModel, references: Sequence[FeatureTableRecord]
                       ) -> tuple[list[FeatureTableRecord], list[str]]:
    """(references to embed, perfs too short for the model) among ``references`` (feature_table rows): those with
    no embedding for ``model``, or one made from another feature (other audio, or another length)."""
    stored = embedding_store.embedded_segments(store, dataset, model.model_id)
    embedder = model.embedder
    todo = [r for r in references
            if stored.get(r.perf) != (len(embedder.segment_starts(r.n_frames)), r.audio_hash)]
    todo, short = embedder.split_by_length(todo, lambda r: r.n_frames)
    return todo, [r.perf for r in short]


def embed_files(model: LoadedModel, perfs: Sequence[str], paths: Sequence[str]
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(segment starts [S_i], vectors [S_i, D]) of each performance's feature file (``perfs[i]``, ``paths[i]``)."""
    features = [load_feature(p) for p in paths]
    vectors = model.embedder.embed(features)
    starts = [model.embedder.segment_starts(len(f)) for f in features]
    for perf, s, v in zip(perfs, starts, vectors):
        if len(s) != len(v):
            raise RuntimeError(f"{perf}: {len(v)} embeddings for {len(s)} segment starts")
    return starts, vectors


@dataclass(frozen=True)
class EmbedStats:
    computed: int  # performances embedded by this call
    reused: int  # performances that already had embeddings for the model
    segments: int  # segments written by this call
    too_short: list[str]  # performances shorter than the model's minimum input
    seconds: float


def warn_too_short(model: LoadedModel, too_short: Sequence[str], log: Log) -> None:
    for perf in too_short:
        log.warning(f"{perf}: too short to embed (fewer than {model.embedder.min_frames} CQT frames)")


def embed_missing(store: Store, dataset: str, model: LoadedModel, references: Sequence[FeatureTableRecord],
                  log: Log, tracks_per_batch: int = TRACKS_PER_BATCH) -> EmbedStats:
    """Embed the ``references`` (feature_table rows) that have no embedding for ``model`` yet and store them, in
    this process (the delta-ingestion path for one batch's performances)."""
    start = time.monotonic()
    todo, too_short = pending_references(store, dataset, model, references)
    warn_too_short(model, too_short, log)
    progress = Progress(log, f"embedding references with {model.model_id}", len(todo), "tracks")
    segments = 0
    for first in range(0, len(todo), tracks_per_batch):
        batch = todo[first:first + tracks_per_batch]
        starts, vectors = embed_files(model, [r.perf for r in batch], [r.feat for r in batch])
        segments += embedding_store.write_embeddings(store, dataset, model.model_id, [r.perf for r in batch],
                                                     starts, vectors, [r.audio_hash for r in batch])
        progress.advance(len(batch))
    return EmbedStats(len(todo), len(references) - len(todo) - len(too_short), segments, too_short,
                      time.monotonic() - start)


def perf_tracks(stored: embedding_store.StoredEmbeddings) -> list[np.ndarray]:
    """The segment vectors of each performance, [S_i, D] views in ``stored.perfs`` order."""
    return np.split(stored.vectors, np.flatnonzero(np.diff(stored.segment_perf)) + 1)


def perf_vectors(stored: embedding_store.StoredEmbeddings) -> np.ndarray:
    """One unit vector per performance: the normalised mean of its segment vectors, [P, D] (``[0, 0]`` when
    nothing is stored).

    Centroids need one point per *recording*: with segments as points a 10-minute track would weigh five times
    as much as a 2-minute one in its work's centroid."""
    if len(stored) == 0:
        return np.empty((0, 0), np.float32)
    return mean_unit_vectors(stored.vectors, stored.segment_perf)


def refresh_statistics(store: Store, dataset: str, model_id: str) -> tuple[Calibration, WorkCentroids, int, int]:
    """Recompute and store the model's calibration and work centroids from its stored embeddings.

    The calibration is the null of the very statistic identification reports -- the distance between two
    *tracks*, their nearest segment pair -- sampled over performances of different works (each recording counts
    once, whatever its length). A null of single vectors (e.g. one mean per performance) would be larger than
    a minimum over many segment pairs, so multi-segment queries would get falsely small p-values.
    Returns (calibration, centroids, performances, segments); raises ValueError without stored embeddings."""
    stored = embedding_store.load_embeddings(store, dataset, model_id)
    if len(stored) == 0:
        raise ValueError(f"no reference embeddings of model {model_id} in dataset {dataset!r}")
    calibration = compute_track_calibration(perf_tracks(stored), stored.work_ids)
    centroids = compute_centroids(perf_vectors(stored), stored.work_ids)
    embedding_store.save_calibration(store, dataset, model_id, calibration)
    embedding_store.replace_centroids(store, dataset, model_id, centroids.work_ids, centroids.centroids,
                                      centroids.radii, centroids.coherence, centroids.n_members)
    return calibration, centroids, len(stored.perfs), len(stored)


# ---------------------------------------------------------------------------------------------------------------
# the sharded stage


def reference_stage(dataset: str, model_id: str) -> str:
    """The ledger name of one dataset's references for one model."""
    return f"reference_embeddings/{dataset}/{model_id}"


@dataclass(frozen=True)
class ReferencePlan:
    """What the planning step found, for the commit."""

    stage: str
    model_id: str
    references: int
    todo: int
    too_short: tuple[str, ...]


def reference_shards(stage: str, todo: Sequence[FeatureTableRecord], model_row: ModelRecord,
                     device: str | None, items_per_shard: int = 0) -> list[Shard]:
    """Shards of the references to embed (``perf``, ``feat``, ``audio_hash`` each, JSON) with what loads the
    model (its :func:`~csi_assets.model_loading.model_fields`)."""
    items = [{"perf": r.perf, "feat": str(r.feat), "audio_hash": r.audio_hash} for r in todo]
    params = {"model": model_fields(model_row), "device": device}
    return split_shards(stage, items, params, items_per_shard)


def embed_shard(shard: Shard, staging: Path, log: Any) -> ShardResult:
    """Embed a shard's references into its vectors and rows files (see the module); a shard whose files exist
    already (a retried worker) is not embedded again."""
    path = rows_path(staging, shard)
    vectors_path = path.with_name(f"{shard.shard_id}.vectors.npy")
    done = finished(path, shard, lambda row: [vectors_path])
    if done is not None:
        log.info(f"shard {shard.shard_id}: found embedded ({done.rows} performances)")
        return done
    model = load_model_fields(**shard.params["model"], device=shard.params["device"])
    starts, vectors = embed_files(model, [i["perf"] for i in shard.items], [i["feat"] for i in shard.items])
    tmp = vectors_path.with_name(f".{vectors_path.name}.tmp{os.getpid()}.npy")
    vectors_path.parent.mkdir(parents=True, exist_ok=True)
    np.save(tmp, np.concatenate(vectors).astype(np.float32))
    os.replace(tmp, vectors_path)
    rows = [{"perf": item["perf"], "audio_hash": item["audio_hash"], "starts": [int(x) for x in s]}
            for item, s in zip(shard.items, starts)]
    log.info(f"shard {shard.shard_id}: {len(rows)} performances, {sum(len(s) for s in starts)} segments")
    return write_rows(path, shard, rows, [])


def commit_reference_shards(store: Store, dataset: str, model_id: str, stage: str,
                            results: Sequence[ShardResult]) -> int:
    """Store every shard's segments in one transaction (shards already committed are skipped), then delete the
    shards' files. Returns the segment rows written."""
    loaded = []
    for result in results:
        rows, _ = read_rows(result.path, result.shard_id)
        vectors = np.load(Path(result.path).with_name(f"{result.shard_id}.vectors.npy"))
        counts = [len(r["starts"]) for r in rows]
        if sum(counts) != len(vectors):
            raise ValueError(f"{result.path}: {sum(counts)} segment starts for {len(vectors)} vectors")
        split = np.split(vectors, np.cumsum(counts)[:-1]) if rows else []
        loaded.append((result.shard_id, [dict(r, vectors=v) for r, v in zip(rows, split)]))

    def write(con: Any, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        return embedding_store.insert_embeddings(
            con, dataset, model_id, [r["perf"] for r in rows], [np.asarray(r["starts"]) for r in rows],
            [r["vectors"] for r in rows], [r["audio_hash"] for r in rows])

    written = shard_store.commit(store, stage, loaded, write)
    for result in results:
        Path(result.path).unlink(missing_ok=True)
        Path(result.path).with_name(f"{result.shard_id}.vectors.npy").unlink(missing_ok=True)
    return written


def plan_references(store: Store, dataset: DatasetLayout, items_per_shard: int, log: Log
                    ) -> tuple[ReferencePlan, list[Shard]]:
    """The references without an embedding of the promoted model, cut into shards. Raises :class:`RunFailed`
    without a usable promoted model or without references."""
    model = promoted_for(store, dataset, log)
    references = reference_rows(store, dataset)
    require_upstream(references, "cqt_features", dataset.name, "CQT features of its catalogued performances "
                     "(nothing was deleted)")
    todo, too_short = pending_references(store, dataset.name, model, references)
    warn_too_short(model, too_short, log)
    stage = reference_stage(dataset.name, model.model_id)
    shards = reference_shards(stage, todo, model_store.get_model(store, model.model_id),
                              None, items_per_shard)  # device: the model's own rule, on the worker
    shard_store.forget(store, stage, [s.shard_id for s in shards])
    log.info(f"{len(todo)} of {len(references)} references to embed, in {len(shards)} shard(s)")
    return ReferencePlan(stage, model.model_id, len(references), len(todo), tuple(too_short)), shards


@dataclass(frozen=True)
class ReferencesRun:
    """What :func:`commit_references` did: the model, segments written now, stale rows removed, the refreshed
    statistics (over its ``performances`` and ``stored_segments``)."""

    model_id: str
    segments: int
    removed: int
    calibration: Calibration
    centroids: WorkCentroids
    performances: int
    stored_segments: int


def commit_references(store: Store, dataset: DatasetLayout, plan: ReferencePlan, results: Sequence[ShardResult]
                      ) -> ReferencesRun:
    """Store every shard's segments in one transaction, forget performances gone from the catalog, and recompute
    the model's calibration and work centroids from all its embeddings (:class:`RunFailed` when that fails)."""
    segments = commit_reference_shards(store, dataset.name, plan.model_id, plan.stage, results)
    removed = embedding_store.forget_uncatalogued(store, dataset.name)
    try:
        calibration, centroids, n_perfs, n_segments = refresh_statistics(store, dataset.name, plan.model_id)
    except ValueError as err:
        raise RunFailed(f"calibration/centroids of {plan.model_id} failed: {err}") from err
    return ReferencesRun(plan.model_id, segments, removed, calibration, centroids, n_perfs, n_segments)


def embed_references(store: Store, dataset: DatasetLayout, staging: Path, log: Log) -> ReferencesRun:
    """The whole stage in this process: plan, embed every shard (files in ``staging``), commit."""
    plan, shards = plan_references(store, dataset, 0, log)
    return commit_references(store, dataset, plan, [embed_shard(s, staging, log) for s in shards])
