"""The one place that assembles the project: assets, checks, resources, jobs, sensors, schedules.

``CSI_DEPLOYMENT`` picks where steps run: ``local`` (default: multiprocess on this machine, or in-process by run
config; SQLite instance, DuckDB file) or ``cluster`` (the same assets on a Dask cluster -- an existing scheduler, a
local cluster, or Slurm/PBS jobs -- see ``csi_assets.dask_execution``, with step outputs kept beside the store on
shared storage; the instance, e.g. PostgreSQL, comes from ``deploy/dagster.yaml``). docs/scaling.md has the recipes.
"""

import os
from typing import Any

import dagster as dg

from csi_assets import locations
from csi_assets.assets import data, evaluation, ingestion, labels, research, serving, tools, training
from csi_assets.jobs import ALL_JOBS
from csi_assets.resources import default_resources
from csi_assets.schedules import reference_refresh_schedule
from csi_assets.sensors.dataset_folders import dataset_folders_sensor
from csi_assets.sensors.delta_dataset import delta_dataset_sensor
from csi_assets.shards import staging_dir

_ASSET_MODULES = [data, training, serving, evaluation, ingestion, research, tools, labels]


def _cluster() -> bool:
    deployment = os.environ.get("CSI_DEPLOYMENT", "local")
    if deployment not in ("local", "cluster"):
        raise ValueError(f"CSI_DEPLOYMENT={deployment!r}: expected 'local' (the default) or 'cluster'")
    return deployment == "cluster"


def _executor() -> dg.ExecutorDefinition:
    if _cluster():
        from csi_assets.dask_execution import csi_dask_executor

        return csi_dask_executor
    # Each step in its own process, as many at once as there are cores; a run config can pick ``in_process``
    # instead (``make demo`` does: on a small dataset, starting a process per step costs more than the steps).
    return dg.multi_or_in_process_executor


def _resources() -> dict[str, Any]:
    """The local resources; on a cluster, step outputs (shard lists, plans) go beside the store, where every
    worker already reads and writes, instead of under each machine's own $DAGSTER_HOME."""
    resources: dict[str, Any] = default_resources()
    if _cluster():
        base = staging_dir(locations.store_path()) / "io"
        resources["io_manager"] = dg.FilesystemIOManager(base_dir=str(base.resolve()))
    return resources


defs = dg.Definitions(
    assets=dg.load_assets_from_modules(_ASSET_MODULES),
    asset_checks=dg.load_asset_checks_from_modules(_ASSET_MODULES),
    resources=_resources(),
    jobs=ALL_JOBS,
    sensors=[dataset_folders_sensor, delta_dataset_sensor],
    schedules=[reference_refresh_schedule],
    executor=_executor(),
)
