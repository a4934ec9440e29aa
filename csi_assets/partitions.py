"""Partitions: every asset that reads a dataset is partitioned by it, so the UI keeps each dataset's history and
one dataset's run never marks another's assets stale.

A dataset partition is keyed by the dataset's name -- its folder's name, the key of its rows in the store -- and
resolved to folders by the ``dataset`` and ``training`` resources (:meth:`DatasetResource.layout`). The partitions
are dynamic: the ``dataset_folders`` sensor registers every dataset folder it finds (and the labels its hparams
name), ``python -m csi_assets.partitions`` registers the default dataset from a shell (``make demo`` does).

Second dimensions: a delta batch of a dataset (``ingested_batch``), a label (``label_probe``, ``label_model``) and
a sweep experiment (``sweep_runs``). Labels and experiments are one list across datasets; a pair whose dataset
does not name the label or the experiment fails with a message saying so.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import dagster as dg

from csi_assets import locations
from csi_assets.assets.upstream import failures
from csi_assets.dataset_folders import dataset_folder, training_folder
from csi_assets.layouts import DatasetLayout, DatasetNameError, TrainingLayout, check_dataset_name
from csi_assets.resources import DatasetResource, StoreResource, TrainingResource

DATASET, BATCH, LABEL, EXPERIMENT = "dataset", "batch", "label", "experiment"

datasets = dg.DynamicPartitionsDefinition(name="datasets")
delta_batches = dg.DynamicPartitionsDefinition(name="delta_batches")
labels = dg.DynamicPartitionsDefinition(name="labels")
sweep_experiments = dg.DynamicPartitionsDefinition(name="sweep_experiments")

DIMENSIONS = {DATASET: datasets, BATCH: delta_batches, LABEL: labels, EXPERIMENT: sweep_experiments}

dataset_batches = dg.MultiPartitionsDefinition({DATASET: datasets, BATCH: delta_batches})
dataset_labels = dg.MultiPartitionsDefinition({DATASET: datasets, LABEL: labels})
dataset_experiments = dg.MultiPartitionsDefinition({DATASET: datasets, EXPERIMENT: sweep_experiments})

AnyContext = dg.AssetExecutionContext | dg.OpExecutionContext | dg.AssetCheckExecutionContext


def dataset_check(asset: dg.AssetsDefinition, description: str) -> Callable[..., dg.AssetChecksDefinition]:
    """``@dg.asset_check`` on the dataset partitions of ``asset``: the check runs for the partition it is asked
    for (a run of that partition, or "Execute" on the partition in the UI). Dagster 1.13 marks partitioned checks
    as a preview and warns at every import; the project relies on them knowingly (tests cover each check), so that
    one warning is silenced here and nowhere else."""
    def decorate(fn: Callable[..., dg.AssetCheckResult]) -> dg.AssetChecksDefinition:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec",
                                    category=dg.PreviewWarning)
            return dg.asset_check(asset=asset, partitions_def=datasets, description=description)(fn)
    return decorate


def key_part(context: AnyContext, dimension: str = DATASET) -> str:
    """One dimension of the run's partition key: the dataset name of a single-dimension key, or the named
    dimension of a multi-dimension one. Raises ``dg.Failure`` for a run without a partition (a dataset asset
    materialised without ``--partition``) and for a dataset name that is not a plain folder name."""
    if not context.has_partition_key:
        raise dg.Failure(description="this asset is partitioned by dataset: pick a partition (the dataset's folder "
                                     "name), e.g. `dagster asset materialize --partition demo ...`")
    key = context.partition_key
    if isinstance(key, dg.MultiPartitionKey):
        key = key.keys_by_dimension[dimension]
    elif dimension != DATASET:
        raise ValueError(f"partition key {key!r} has no {dimension!r} dimension")
    if dimension == DATASET:  # it names folders and index paths: a plain folder name or nothing
        with failures():
            check_dataset_name(key)
    return key


def dataset_of(context: AnyContext, dataset: DatasetResource, store: StoreResource) -> DatasetLayout:
    """The folder of the run's dataset partition (the one recorded for its name, see
    :mod:`csi_assets.dataset_folders`); a name that is not a plain folder name, or a folder other than the
    recorded one, fails the step."""
    with failures():
        return dataset_folder(store.store(), key_part(context), dataset.dataset_dir)


def training_of(context: AnyContext, training: TrainingResource, store: StoreResource) -> TrainingLayout:
    """The training folder of the run's dataset partition (see :func:`csi_assets.dataset_folders.training_folder`
    for the folders it refuses)."""
    with failures():
        return training_folder(store.store(), key_part(context), training.training_dir, training.dataset_name)


def dataset_key(dataset: str, **other: str) -> str | dg.MultiPartitionKey:
    """The partition key of a dataset, or of a (dataset, label/batch/experiment) pair: ``dataset_key("demo")``,
    ``dataset_key("demo", label="register")``."""
    return dg.MultiPartitionKey({DATASET: dataset, **other}) if other else dataset


def ensure_partition(instance: dg.DagsterInstance, dataset: str, **other: str) -> str | dg.MultiPartitionKey:
    """Register each part of the key that the instance does not know yet; returns the key (see
    :func:`dataset_key`). For a run on a partition whose parts may not exist yet (tests, scripts)."""
    for dimension, key in {DATASET: dataset, **other}.items():
        if not instance.has_dynamic_partition(DIMENSIONS[dimension].name, key):
            instance.add_dynamic_partitions(DIMENSIONS[dimension].name, [key])
    return dataset_key(dataset, **other)


def registration_requests(instance: dg.DagsterInstance, layouts: list[DatasetLayout]
                          ) -> list[dg.AddDynamicPartitionsRequest]:
    """The requests that add the datasets not yet registered, and the labels their hparams name. A folder without
    a catalog is left out: a partition no run could use (a folder not made yet) would only collect failures."""
    layouts = [layout for layout in layouts if layout.has_catalog()]
    known = set(instance.get_dynamic_partitions(datasets.name))
    known_labels = set(instance.get_dynamic_partitions(labels.name))
    new = sorted({layout.name for layout in layouts} - known)
    new_labels = sorted({label for layout in layouts for label in layout.labels()} - known_labels)
    return ([datasets.build_add_request(new)] if new else []) + (
        [labels.build_add_request(new_labels)] if new_labels else [])


def register(instance: dg.DagsterInstance, layouts: list[DatasetLayout]) -> None:
    """Add the datasets (and their labels) to the instance now."""
    for request in registration_requests(instance, layouts):
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def main() -> int:
    """Register the default dataset (``$CSI_DATASET_DIR``) and its labels with the instance of ``$DAGSTER_HOME``;
    print the dataset's partition key. A folder without a catalog, or whose name cannot be a dataset's, is refused
    (exit status 2) rather than registered as a partition no run could use."""
    layout = DatasetLayout.at(locations.dataset_dir())
    try:
        check_dataset_name(layout.name)
    except DatasetNameError as err:
        print(f"error: $CSI_DATASET_DIR={locations.dataset_dir()}: {err}", file=sys.stderr)
        return 2
    if not layout.has_catalog():
        print(f"error: {layout.root} holds no catalog (dataset.txt): not registered; check $CSI_DATASET_DIR",
              file=sys.stderr)
        return 2
    with dg.DagsterInstance.get() as instance:
        register(instance, [layout])
    print(layout.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
