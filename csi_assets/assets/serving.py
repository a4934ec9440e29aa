"""Group ``serving``: reference embeddings of every known performance, their calibration and work centroids.

A reference is the original recording of a performance (its speed-1.0 variant; tempo copies are training
augmentation, not recordings anyone will query for), from the main catalog or from an ingested batch. Each is
embedded with the model's ``csi_model.embedding.Embedder`` -- every segment, tail included -- exactly as evaluation and
identification embed their tracks, so the three measure the same thing (the reference tool used one 135 s chunk
here and all segments elsewhere).
"""


import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import numpy as np

from csi_assets.assets.data import ShardConfig
from csi_assets.assets.upstream import failures
from csi_assets.partitions import dataset_check, dataset_of, datasets, key_part
from csi_assets.reference_index import IndexUnavailable, ReferenceIndex, model_dir, sync_index
from csi_assets.references import ReferencePlan, commit_references, embed_shard, plan_references, reference_rows
from csi_assets.resources import DatasetResource, StoreResource
from csi_assets.shards import Shard, ShardResult, staging_dir
from csi_assets.store import embeddings as embedding_store
from csi_assets.store import models as model_store
from csi_model.segment_index import IndexConfig

GROUP = "serving"


@dg.op(ins={"after_model": dg.In(dg.Nothing), "after_features": dg.In(dg.Nothing)},
       out={"plan": dg.Out(), "shards": dg.DynamicOut()})
def plan_reference_shards(context: dg.OpExecutionContext, config: ShardConfig, dataset: DatasetResource,
                          store: StoreResource) -> Iterator[dg.Output | dg.DynamicOutput]:
    """The references without an embedding of the promoted model, cut into shards."""
    with failures():
        plan, shards = plan_references(store.store(), dataset_of(context, dataset, store), config.items_per_shard,
                                       context.log)
    yield dg.Output(plan, "plan")
    for shard in shards:
        yield dg.DynamicOutput(shard, output_name="shards", mapping_key=shard.shard_id)


@dg.op
def embed_reference_shard(context: dg.OpExecutionContext, shard: Shard, store: StoreResource) -> ShardResult:
    """Embed one shard on whichever worker runs it; its vectors and rows go to files beside the store."""
    return embed_shard(shard, staging_dir(store.path), context.log)


@dg.op(out=dg.Out(dg.Nothing))
def commit_reference_embeddings(context: dg.OpExecutionContext, dataset: DatasetResource, store: StoreResource,
                                plan: ReferencePlan, results: list[ShardResult]) -> dg.Output:
    """Store every shard's segments in one transaction, forget performances gone from the catalog, and recompute
    the model's calibration and work centroids from all its embeddings."""
    start = time.monotonic()
    with failures():
        run = commit_references(store.store(), dataset_of(context, dataset, store), plan, results)
    calibration, centroids = run.calibration, run.centroids
    context.log.info(f"{plan.todo} performances ({run.segments} segments) from {len(results)} shard(s) committed in "
                     f"{time.monotonic() - start:.1f} s; {plan.references - plan.todo - len(plan.too_short)} "
                     f"reused; {run.removed} stale segment rows removed")
    return dg.Output(None, metadata={
        "model_id": plan.model_id,
        "performances": run.performances,
        "segments": run.stored_segments,
        "computed_now": plan.todo,
        "reused": plan.references - plan.todo - len(plan.too_short),
        "segments_computed_now": run.segments,
        "shards": len(results),
        "removed_segment_rows": run.removed,
        "too_short": dg.MetadataValue.json(list(plan.too_short)),
        "works": int(centroids.work_ids.size),
        "calibration_mu": round(calibration.mu, 6),
        "calibration_sigma": round(calibration.sigma, 6),
        "calibration_pairs": calibration.n_pairs,
        "centroid_coherence_median": round(float(np.median(centroids.coherence)), 4),
    })


@dg.graph_asset(group_name=GROUP, partitions_def=datasets, kinds={"pytorch", "duckdb"},
                ins={"trained_model": dg.AssetIn(dagster_type=dg.Nothing),
                     "cqt_features": dg.AssetIn(dagster_type=dg.Nothing)})
def reference_embeddings(trained_model: None, cqt_features: None) -> Any:
    """Segment embeddings of every reference performance for the promoted model (only missing (perf, model)
    pairs are computed, one op per shard; performances gone from the catalog lose theirs), committed in one
    store transaction, then the model's calibration and work centroids, recomputed from all of them. Without any
    reference it fails before deleting anything."""
    plan, shards = plan_reference_shards(after_model=trained_model, after_features=cqt_features)
    return commit_reference_embeddings(plan, shards.map(embed_reference_shard).collect())


@dataset_check(reference_embeddings, "Every reference performance has embeddings for the promoted model.")
def reference_embeddings_cover_catalog(context: dg.AssetCheckExecutionContext, dataset: DatasetResource,
                                       store: StoreResource) -> dg.AssetCheckResult:
    db, layout = store.store(), dataset_of(context, dataset, store)
    model = model_store.promoted_model(db, layout.name)
    if model is None:
        return dg.AssetCheckResult(passed=False, metadata={"reason": f"no promoted model for {layout.name}"})
    references = reference_rows(db, layout)
    embedded = embedding_store.embedded_segments(db, layout.name, model.model_id)
    missing = sorted(r.perf for r in references if r.perf not in embedded)
    return dg.AssetCheckResult(passed=not missing, metadata={
        "model_id": model.model_id, "references": len(references), "embedded": len(references) - len(missing),
        "missing": dg.MetadataValue.json(missing[:20])})


class ReferenceIndexConfig(dg.Config):
    """Exact (flat) search below ``exact_below`` segments; above it ``approximate``: ``ivf_refine`` (IVF over
    ``codes``-compressed vectors, its ``refine_factor``·k candidates re-ranked by vectors stored as ``store``)
    or ``ivf`` (IVF-Flat), with ``nlist`` lists (0: 4·√rows) of which ``nprobe`` are searched per query
    segment; ``candidates`` segment hits per query segment before the exact re-rank (see
    ``csi_model.segment_index.IndexConfig``). A change of these rebuilds the index."""

    exact_below: int = IndexConfig.exact_below
    approximate: str = IndexConfig.approximate
    nlist: int = 0
    nprobe: int = IndexConfig.nprobe
    candidates: int = IndexConfig.candidates
    codes: str = IndexConfig.codes
    store: str = IndexConfig.store
    refine_factor: int = IndexConfig.refine_factor

    def index_config(self) -> IndexConfig:
        return IndexConfig(exact_below=self.exact_below, approximate=self.approximate, nlist=self.nlist or None,
                           nprobe=self.nprobe, candidates=self.candidates, codes=self.codes, store=self.store,
                           refine_factor=self.refine_factor)


@dg.asset(group_name=GROUP, partitions_def=datasets, deps=[reference_embeddings], kinds={"faiss"})
def reference_index(context: dg.AssetExecutionContext, config: ReferenceIndexConfig,
                    store: StoreResource) -> dg.MaterializeResult:
    """A FAISS index of the promoted model's reference segments beside the store (``<store>.index/``), what
    ``csi identify`` and ``csi serve`` search. Built for a newly promoted model, updated in place otherwise
    (ingested batches are added by their own runs)."""
    db, name = store.store(), key_part(context)
    promoted = model_store.promoted_model(db, name)
    if promoted is None:
        raise dg.Failure(description=f"no promoted model for dataset {name!r}: materialize trained_model")
    try:
        report = sync_index(db, store.path, name, promoted.model_id, config.index_config(),
                            context.log.info)
    except IndexUnavailable as err:
        raise dg.Failure(description=str(err)) from err
    manifest = report.manifest
    return dg.MaterializeResult(metadata={
        "model_id": manifest.model_id, "index_kind": manifest.kind, "exact": manifest.kind == "flat",
        "rows": manifest.rows, "performances": manifest.performances, "version": manifest.version,
        "action": report.action, "performances_added": report.added, "performances_removed": report.removed,
        "seconds": round(report.seconds, 3), "config": dg.MetadataValue.json(manifest.config),
        "path": dg.MetadataValue.path(str(model_dir(store.path, name, manifest.model_id))),
    })


@dataset_check(reference_index, "The index holds exactly the stored embeddings of the promoted model: same rows, same "
                                 "performances and segment counts.")
def reference_index_matches_store(context: dg.AssetCheckExecutionContext, store: StoreResource) -> dg.AssetCheckResult:
    db, name = store.store(), key_part(context)
    promoted = model_store.promoted_model(db, name)
    if promoted is None:
        return dg.AssetCheckResult(passed=False, metadata={"reason": f"no promoted model for {name}"})
    stored = embedding_store.catalogued_segments(db, name, promoted.model_id)
    index = ReferenceIndex.read(store.path, name, promoted.model_id)
    if index is None:
        return dg.AssetCheckResult(passed=False, metadata={"reason": "no index for the promoted model"})
    drop, add = index.differences(stored)
    stored_rows = sum(n for n, _ in stored.values())
    return dg.AssetCheckResult(passed=len(index) == stored_rows and not drop and not add, metadata={
        "model_id": promoted.model_id, "index_rows": len(index), "stored_rows": stored_rows,
        "to_add": dg.MetadataValue.json(add[:20]), "to_drop": dg.MetadataValue.json(drop[:20])})
