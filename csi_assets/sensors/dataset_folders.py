"""The dataset-folders sensor: every dataset folder becomes a partition of the dataset assets.

A dataset folder is the default one (``$CSI_DATASET_DIR``), any plain-named folder beside it that holds a
``dataset.txt``, or one the store has recorded for a dataset name (``csi import`` of a folder elsewhere, a run from a
shell with another ``CSI_DATASET_DIR``: :mod:`csi_assets.dataset_folders`); its partition key is its name. The labels
its hparams list are registered with it (the second dimension of ``label_probe`` and ``label_model``), so a label added
to the hparams appears within a tick, without a code reload. Registration only adds: a dataset whose folder is removed
keeps its partition and its history. No cursor: each tick compares the folders with the instance's partitions, so
partitions deleted by hand come back.
"""

from pathlib import Path

import dagster as dg

from csi_assets.layouts import DatasetLayout
from csi_assets.partitions import registration_requests
from csi_assets.resources import DatasetResource, StoreResource
from csi_assets.store import folders as folder_store


@dg.sensor(minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def dataset_folders_sensor(context: dg.SensorEvaluationContext, dataset: DatasetResource,
                           store: StoreResource) -> dg.SensorResult:
    found = {layout.name: layout for layout in dataset.default().siblings()}
    for bound in folder_store.every_binding(store.store()):
        found.setdefault(bound.dataset, DatasetLayout(Path(bound.folder)))
    requests = registration_requests(context.instance, list(found.values()))
    for request in requests:
        context.log.info(f"registering {request.partitions_def_name}: {', '.join(request.partition_keys)}")
    return dg.SensorResult(dynamic_partitions_requests=requests,
                           skip_reason=None if requests else "no new dataset folder or label")
