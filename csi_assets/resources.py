"""Dagster resources: which dataset, which training run, and the metadata store.

The environment variables ``CSI_DATASET_DIR`` and ``CSI_TRAINING_DIR`` (and ``CSI_STORE_PATH``) point any command
at another dataset without editing code; run config may override each field.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from csi_assets import locations
from csi_assets.locations import DEFAULT_DATASET_DIR, DEFAULT_STORE_PATH, DEFAULT_TRAINING_DIR
from csi_assets.store import Store
from csi_model.cqt import CqtSettings, settings_for
from csi_model.hparams import DataPrepHParams, TrainingHParams, load_data_hparams, load_training_hparams


class DatasetResource(dg.ConfigurableResource):
    """A dataset folder in the reference layout: ``dataset.txt`` + ``hparams.yaml`` (data preparation)."""

    dataset_dir: str = DEFAULT_DATASET_DIR

    @property
    def root(self) -> Path:
        return Path(self.dataset_dir).resolve()

    @property
    def name(self) -> str:
        """The key of this dataset's rows in the store."""
        return self.root.name

    @property
    def catalog_path(self) -> Path:
        return self.root / "dataset.txt"

    @property
    def incoming_dir(self) -> Path:
        return self.root / "incoming"

    @property
    def variants_dir(self) -> Path:
        return self.root / "sp_wav"

    @property
    def features_dir(self) -> Path:
        return self.root / "cqt_feat"

    def hparams(self) -> DataPrepHParams:
        return load_data_hparams(self.root / "hparams.yaml")

    def cqt_settings(self) -> CqtSettings:
        """The CQT settings of this dataset's features: their hash keys the feature cache."""
        return settings_for(self.hparams())


class TrainingResource(dg.ConfigurableResource):
    """A training folder in the reference layout: ``config/hparams.yaml`` in; ``checkpoints/`` and ``logs/`` out."""

    training_dir: str = DEFAULT_TRAINING_DIR

    @property
    def root(self) -> Path:
        return Path(self.training_dir).resolve()

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def hparams(self) -> TrainingHParams:
        return load_training_hparams(self.root / "config" / "hparams.yaml")


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
