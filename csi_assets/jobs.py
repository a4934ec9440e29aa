"""Every job of the project, in one place: which assets each one materializes and why it exists."""

import dagster as dg

from csi_assets import partitions
from csi_assets.assets import data, evaluation, ingestion, labels, research, serving, training

main_job = dg.define_asset_job(
    "main",
    selection=dg.AssetSelection.groups(data.GROUP, training.GROUP, serving.GROUP, evaluation.GROUP)
    - dg.AssetSelection.assets(*labels.LABEL_ASSETS),
    partitions_def=partitions.datasets,
    description="The whole graph of a dataset (a partition per dataset): catalog → features → splits → training → "
                "references → evaluation.",
)

labels_job = dg.define_asset_job(
    "labels", selection=dg.AssetSelection.assets(labels.label_probe), partitions_def=partitions.dataset_labels,
    description="Probe one musical category (a partition per dataset and label) in the promoted model.",
)

refresh_references_job = dg.define_asset_job(
    "refresh_references",
    selection=[serving.reference_embeddings, serving.reference_index],
    partitions_def=partitions.datasets,
    description="Fill every missing (performance, promoted model) embedding of a dataset; a newly promoted model gets "
                "the whole reference set, and its calibration and centroids are recomputed; then the reference index "
                "follows.",
)

sweep_job = dg.define_asset_job(
    "sweep", selection=dg.AssetSelection.assets(research.sweep_runs), partitions_def=partitions.dataset_experiments,
    description="One sweep experiment of a dataset per partition (materialise its sweep_plan first; backfill to run "
                "them all).")

production_job = dg.define_asset_job("production", selection=dg.AssetSelection.assets(research.production_model),
                                     partitions_def=partitions.datasets,
                                     description="Production K-fold training and the final model of a dataset.")

ingest_job = dg.define_asset_job("ingest_delta_batch", selection=[ingestion.ingested_batch],
                                 partitions_def=partitions.dataset_batches,
                                 description="Ingest one delta batch (a partition per dataset and batch).")

ALL_JOBS = [main_job, labels_job, ingest_job, refresh_references_job, sweep_job, production_job]
