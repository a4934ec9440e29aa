"""Reference embeddings of performances: which need embedding for a model, embedding them, and the sharded form
of that stage (plan → shards embedded anywhere → one commit), without Dagster.

A shard's result is two files beside the store: ``<shard id>.vectors.npy`` (float32 ``[segments, D]``, every
performance's segments in order) and ``<shard id>.rows.json`` (per performance: perf, audio hash, segment starts),
the rows file written last, so its presence means the shard is whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from csi_assets.model_loading import LoadedModel, load_model_fields, model_fields
from csi_assets.shards import Shard, ShardResult, finished, read_rows, rows_path, split_shards, write_rows
from csi_assets.store import Store
from csi_assets.store import embeddings as embedding_store
from csi_assets.store import shards as shard_store
from csi_assets.store.records import FeatureTableRecord, ModelRecord
from csi_model.cqt import load_feature


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
