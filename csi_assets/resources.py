"""Dagster resources: which dataset, which training run, and the metadata store.

The environment variables ``CSI_DATASET_DIR`` and ``CSI_TRAINING_DIR`` (and ``CSI_STORE_PATH``) say where the default
dataset and its training folder are; the other datasets (partitions) sit beside them. Run config may override each
field.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from csi_assets import locations
from csi_assets.layouts import DatasetLayout, TrainingLayout
from csi_assets.locations import DEFAULT_DATASET_DIR, DEFAULT_STORE_PATH, DEFAULT_TRAINING_DIR
from csi_assets.store import Store


class DatasetResource(dg.ConfigurableResource):
    """Where datasets live: ``dataset_dir`` is the default dataset's folder (``dataset.txt`` + ``hparams.yaml``);
    every other dataset is the folder named after it beside that one. Assets ask for their partition's dataset."""

    dataset_dir: str = DEFAULT_DATASET_DIR

    def layout(self, name: str) -> DatasetLayout:
        """The folder of dataset ``name`` (a partition key) as the plain value application code takes. Raises
        :class:`~csi_assets.layouts.DatasetNameError` for a name that is not a plain folder name."""
        return DatasetLayout.named(name, self.dataset_dir)

    def default(self) -> DatasetLayout:
        """The default dataset (its partition is what sensors and schedules act on when nothing else is named)."""
        return DatasetLayout.at(self.dataset_dir)


class TrainingResource(dg.ConfigurableResource):
    """Where training runs live: ``training_dir`` is the training folder (``config/hparams.yaml`` in;
    ``checkpoints/`` and ``logs/`` out) of dataset ``dataset_name`` (empty: the dataset named like the folder);
    every other dataset trains in the folder named after it beside that one."""

    training_dir: str = DEFAULT_TRAINING_DIR
    dataset_name: str = ""

    def layout(self, dataset: str) -> TrainingLayout:
        """The training folder of dataset ``dataset`` (a partition key) as the plain value application code takes."""
        return TrainingLayout.named(dataset, self.training_dir, self.dataset_name)


class StoreResource(dg.ConfigurableResource):
    """The project's DuckDB metadata file."""

    path: str = DEFAULT_STORE_PATH

    def store(self) -> Store:
        return Store(Path(self.path).resolve())


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources for a local deployment, read from the environment so any command can point elsewhere."""
    return {
        "dataset": DatasetResource(dataset_dir=locations.dataset_dir()),
        "training": TrainingResource(training_dir=locations.training_dir(), dataset_name=locations.training_pair()),
        "store": StoreResource(path=locations.store_path()),
    }
