"""The one place that assembles the project: assets, checks, resources, jobs, sensors, schedules.

``CSI_DEPLOYMENT`` picks the executor: ``local`` (default: multiprocess on this machine, or in-process by run config;
SQLite instance, DuckDB file) or ``cluster`` (the same assets; the instance's run launcher and executor come from its dagster.yaml).
"""

import os

import dagster as dg

from csi_assets.assets import data, evaluation, ingestion, labels, research, serving, tools, training
from csi_assets.jobs import ALL_JOBS
from csi_assets.resources import default_resources
from csi_assets.schedules import reference_refresh_schedule
from csi_assets.sensors.delta_dataset import delta_dataset_sensor

_ASSET_MODULES = [data, training, serving, evaluation, ingestion, research, tools, labels]


def _executor() -> dg.ExecutorDefinition:
    if os.environ.get("CSI_DEPLOYMENT", "local") == "cluster":
        return dg.in_process_executor  # a cluster's dagster.yaml supplies its run launcher; steps stay together
    # Each step in its own process, as many at once as there are cores; a run config can pick ``in_process``
    # instead (``make demo`` does: on a small dataset, starting a process per step costs more than the steps).
    return dg.multi_or_in_process_executor


defs = dg.Definitions(
    assets=dg.load_assets_from_modules(_ASSET_MODULES),
    asset_checks=dg.load_asset_checks_from_modules(_ASSET_MODULES),
    resources=default_resources(),
    jobs=ALL_JOBS,
    sensors=[delta_dataset_sensor],
    schedules=[reference_refresh_schedule],
    executor=_executor(),
)
