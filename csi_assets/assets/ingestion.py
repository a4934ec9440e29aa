"""Group ``ingestion``: delta batches of new performances become references without retraining.

A batch is a folder under the dataset's ``incoming/`` with its own ``dataset.txt`` and audio, or a single ``*.txt``
catalog there. The sensor names each batch by a hash of its content (so dropping the same batch twice ingests it once)
and registers it, paired with its dataset, as a partition of ``ingested_batch``; one run per batch catalogs it with the
main catalog's validation, gives new works new permanent ids, extracts features without tempo augmentation and embeds
the new performances with the promoted model. Nothing already stored is recomputed or changed.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from csi_assets import ingestion
from csi_assets.assets.data import ShardConfig
from csi_assets.assets.upstream import failures
from csi_assets.ingestion import BatchIntake, commit_batch_embeddings, intake_batch
from csi_assets.partitions import BATCH, dataset_batches, dataset_of, key_part
from csi_assets.resources import DatasetResource, StoreResource
from csi_assets.shards import Shard, ShardResult, staging_dir

GROUP = "ingestion"


@dg.op(out={"intake": dg.Out(), "shards": dg.DynamicOut()})
def featurise_batch(context: dg.OpExecutionContext, config: ShardConfig, dataset: DatasetResource,
                    store: StoreResource) -> Iterator[dg.Output | dg.DynamicOutput]:
    """Catalog and featurise the batch, then cut its performances without an embedding of the promoted model into
    shards."""
    with failures():
        intake, shards = intake_batch(store.store(), dataset_of(context, dataset, store), key_part(context, BATCH),
                                      config.items_per_shard, context.log)
    yield dg.Output(intake, "intake")
    for shard in shards:
        yield dg.DynamicOutput(shard, output_name="shards", mapping_key=shard.shard_id)


@dg.op
def embed_batch_shard(context: dg.OpExecutionContext, shard: Shard, dataset: DatasetResource,
                      store: StoreResource) -> ShardResult:
    """Embed one shard of the batch on whichever worker runs it; a failure is recorded on the batch's row."""
    return ingestion.embed_batch_shard(store.store(), dataset_of(context, dataset, store), key_part(context, BATCH),
                                       shard, staging_dir(store.path), context.log)


@dg.op(out=dg.Out(dg.Nothing))
def commit_batch(context: dg.OpExecutionContext, dataset: DatasetResource, store: StoreResource,
                 intake: BatchIntake, results: list[ShardResult]) -> dg.Output:
    """Store the batch's embeddings in one transaction, add them to the model's index, mark the batch ingested."""
    commit_batch_embeddings(store.store(), dataset_of(context, dataset, store), intake, results, context.log)
    counts = intake.counts
    return dg.Output(None, metadata={
        "performances": counts["performances"], "added_now": counts["added"],
        "already_present": counts["already_present"],
        "rejected_lines": counts["rejected"], "features": counts["features"], "embedded": intake.to_embed,
        "embedding_shards": len(results),
        "new_works": counts["new_works"], "catalog": dg.MetadataValue.path(intake.catalog),
        "rejected": dg.MetadataValue.md("\n".join(f"- {r['reason']}" for r in counts["rejected_lines"]) or "none"),
    })


@dg.graph_asset(group_name=GROUP, partitions_def=dataset_batches, kinds={"duckdb"})
def ingested_batch() -> Any:
    """One delta batch catalogued, featurised (no tempo augmentation) and embedded with the promoted model: the
    embedding fans out in shards (one op each) and is committed in one transaction with the batch's status."""
    intake, shards = featurise_batch()
    return commit_batch(intake, shards.map(embed_batch_shard).collect())
