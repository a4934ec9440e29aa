"""The data assets and reference_embeddings as one job on the cluster deployment's Dask executor, rebuilt by name
in every Dask worker (``dg.build_reconstructable_job("tests.cluster_job", "data_and_references")``). Resources
come from run config (``resources: {dataset: ..., store: ..., training: ...}``); the job is partitioned by dataset
like its assets, and the run's partition comes from its ``dagster/partition`` tag (workers read the run by id)."""

from __future__ import annotations

import dagster as dg

from csi_assets.assets import data, serving, training
from csi_assets.dask_execution import csi_dask_executor
from csi_assets.resources import default_resources

JOB = "data_and_references"
ASSETS = ["dataset_catalog", "speed_variants", "cqt_features", "work_ids", "data_splits", "reference_embeddings"]


def data_and_references() -> dg.JobDefinition:
    defs = dg.Definitions(
        assets=dg.load_assets_from_modules([data, training, serving]),
        asset_checks=dg.load_asset_checks_from_modules([data, serving]),
        resources=default_resources(),
        jobs=[dg.define_asset_job(JOB, selection=dg.AssetSelection.assets(*ASSETS))],
        executor=csi_dask_executor,
    )
    return defs.resolve_job_def(JOB)
