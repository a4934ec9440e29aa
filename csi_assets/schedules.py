"""Scheduled work: the nightly refresh of reference embeddings, calibration and centroids."""

import os

import dagster as dg

from csi_assets.assets.serving import reference_embeddings, reference_index

refresh_references_job = dg.define_asset_job(
    "refresh_references",
    selection=[reference_embeddings, reference_index],
    description="Fill every missing (performance, promoted model) embedding; a newly promoted model gets the whole "
                "reference set, and its calibration and centroids are recomputed; then the reference index follows.",
)

reference_refresh_schedule = dg.ScheduleDefinition(
    name="reference_refresh",
    job=refresh_references_job,
    cron_schedule=os.environ.get("CSI_REFRESH_CRON", "0 3 * * *"),
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily (CSI_REFRESH_CRON, default 03:00) reference refresh.",
)
