"""Scheduled work: the nightly refresh of reference embeddings, calibration and centroids of every dataset."""

import os

import dagster as dg

from csi_assets.jobs import refresh_references_job
from csi_assets.partitions import datasets
from csi_assets.resources import StoreResource
from csi_assets.store import models as model_store


@dg.schedule(name="reference_refresh", job=refresh_references_job,
             cron_schedule=os.environ.get("CSI_REFRESH_CRON", "0 3 * * *"),
             default_status=dg.DefaultScheduleStatus.RUNNING,
             description="Daily (CSI_REFRESH_CRON, default 03:00) reference refresh of each registered dataset "
                         "with a promoted model.")
def reference_refresh_schedule(context: dg.ScheduleEvaluationContext, store: StoreResource) -> dg.SkipReason | list:
    db = store.store()
    names = [name for name in context.instance.get_dynamic_partitions(datasets.name)
             if model_store.promoted_model(db, name) is not None]
    if not names:
        return dg.SkipReason("no registered dataset has a promoted model")
    tick = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "now"
    return [dg.RunRequest(run_key=f"{name}@{tick}", partition_key=name) for name in names]
