"""The dataset-folders sensor: every dataset folder becomes a partition of the dataset assets.

A dataset folder is the default one (``$CSI_DATASET_DIR``) or any plain-named folder beside it that holds a
``dataset.txt``; its partition key is its name. The labels its hparams list are registered with it (the second dimension
of ``label_probe`` and ``label_model``), so a label added to the hparams appears within a tick, without a code reload.
Registration only adds: a dataset whose folder is removed keeps its partition and its history. No cursor: each tick
compares the folders with the instance's partitions, so partitions deleted by hand come back.
"""

import dagster as dg

from csi_assets.partitions import registration_requests
from csi_assets.resources import DatasetResource


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def dataset_folders_sensor(context: dg.SensorEvaluationContext, dataset: DatasetResource) -> dg.SensorResult:
    requests = registration_requests(context.instance, dataset.default().siblings())
    for request in requests:
        context.log.info(f"registering {request.partitions_def_name}: {', '.join(request.partition_keys)}")
    return dg.SensorResult(dynamic_partitions_requests=requests,
                           skip_reason=None if requests else "no new dataset folder or label")
