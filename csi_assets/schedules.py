"""Scheduled work: the nightly refresh of reference embeddings, calibration and centroids."""

import os

import dagster as dg

from csi_assets.jobs import refresh_references_job

reference_refresh_schedule = dg.ScheduleDefinition(
    name="reference_refresh",
    job=refresh_references_job,
    cron_schedule=os.environ.get("CSI_REFRESH_CRON", "0 3 * * *"),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily (CSI_REFRESH_CRON, default 03:00) reference refresh.",
)
