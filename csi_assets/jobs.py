"""Every job of the project, in one place: which assets each one materializes and why it exists."""

import dagster as dg

from csi_assets.assets import data, evaluation, ingestion, labels, research, serving, training

main_job = dg.define_asset_job(
    "main",
    selection=dg.AssetSelection.groups(data.GROUP, training.GROUP, serving.GROUP, evaluation.GROUP)
    - dg.AssetSelection.assets(*labels.LABEL_ASSETS),
    description="The whole graph: catalog → features → splits → training → references → evaluation.",
)

labels_job = dg.define_asset_job(
    "labels", selection=dg.AssetSelection.assets(labels.label_probe),
    description="Probe one musical category (a partition per label of the data hparams) in the promoted model.",
)

refresh_references_job = dg.define_asset_job(
    "refresh_references",
    selection=[serving.reference_embeddings, serving.reference_index],
    description="Fill every missing (performance, promoted model) embedding; a newly promoted model gets the whole "
                "reference set, and its calibration and centroids are recomputed; then the reference index follows.",
)

sweep_job = dg.define_asset_job(
    "sweep", selection=dg.AssetSelection.assets(research.sweep_runs), partitions_def=research.SWEEP_PARTITIONS,
    description="One sweep experiment per partition (materialise sweep_plan first; backfill to run them all).")

production_job = dg.define_asset_job("production", selection=dg.AssetSelection.assets(research.production_model),
                                     description="Production K-fold training and the final model.")

ingest_job = dg.define_asset_job("ingest_delta_batch", selection=[ingestion.ingested_batch],
                                 partitions_def=ingestion.delta_batches,
                                 description="Ingest one delta batch (a partition per batch).")

ALL_JOBS = [main_job, labels_job, ingest_job, refresh_references_job, sweep_job, production_job]
