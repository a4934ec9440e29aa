"""Dagster resources: which dataset, which training run, and the metadata store.

The environment variables ``CSI_DATASET_DIR`` and ``CSI_TRAINING_DIR`` (and ``CSI_STORE_PATH``) point any command
at another dataset without editing code; run config may override each field.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from csi_assets import locations
from csi_assets.layouts import DatasetLayout, TrainingLayout
from csi_assets.locations import DEFAULT_DATASET_DIR, DEFAULT_STORE_PATH, DEFAULT_TRAINING_DIR
from csi_assets.store import Store
from csi_model.cqt import CqtSettings
from csi_model.hparams import DataPrepHParams, TrainingHParams


class DatasetResource(dg.ConfigurableResource):
    """A dataset folder in the reference layout: ``dataset.txt`` + ``hparams.yaml`` (data preparation)."""

    dataset_dir: str = DEFAULT_DATASET_DIR

    def layout(self) -> DatasetLayout:
        """The folder as the plain value application code takes."""
        return DatasetLayout.at(self.dataset_dir)

    @property
    def root(self) -> Path:
        return self.layout().root

    @property
    def name(self) -> str:
        """The key of this dataset's rows in the store."""
        return self.layout().name

    @property
    def catalog_path(self) -> Path:
        return self.layout().catalog_path

    @property
    def incoming_dir(self) -> Path:
        return self.layout().incoming_dir

    @property
    def variants_dir(self) -> Path:
        return self.layout().variants_dir

    @property
    def features_dir(self) -> Path:
        return self.layout().features_dir

    def hparams(self) -> DataPrepHParams:
        return self.layout().hparams()

    def cqt_settings(self) -> CqtSettings:
        """The CQT settings of this dataset's features: their hash keys the feature cache."""
        return self.layout().cqt_settings()


class TrainingResource(dg.ConfigurableResource):
    """A training folder in the reference layout: ``config/hparams.yaml`` in; ``checkpoints/`` and ``logs/`` out."""

    training_dir: str = DEFAULT_TRAINING_DIR

    def layout(self) -> TrainingLayout:
        """The folder as the plain value application code takes."""
        return TrainingLayout.at(self.training_dir)

    @property
    def root(self) -> Path:
        return self.layout().root

    @property
    def checkpoints_dir(self) -> Path:
        return self.layout().checkpoints_dir

    @property
    def logs_dir(self) -> Path:
        return self.layout().logs_dir

    def hparams(self) -> TrainingHParams:
        return self.layout().hparams()


class StoreResource(dg.ConfigurableResource):
    """The project's DuckDB metadata file."""

    path: str = DEFAULT_STORE_PATH

    def store(self) -> Store:
        return Store(Path(self.path).resolve())


def default_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources for a local deployment, read from the environment so any command can point elsewhere."""
    return {
        "dataset": DatasetResource(dataset_dir=locations.dataset_dir()),
        "training": TrainingResource(training_dir=locations.training_dir()),
        "store": StoreResource(path=locations.store_path()),
    }
