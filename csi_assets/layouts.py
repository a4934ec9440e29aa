"""The folders a run works in, as plain values: a dataset folder and a training folder in the reference layout.

The Dagster resources produce them (``DatasetResource.layout()``, ``TrainingResource.layout()``) and the CLI builds
them from its arguments, so application code takes one typed object for "which dataset" or "which training run"
instead of a resource in some signatures and a bare name in others.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from csi_model.cqt import CqtSettings, settings_for
from csi_model.hparams import DataPrepHParams, TrainingHParams, load_data_hparams, load_training_hparams


@dataclass(frozen=True)
class DatasetLayout:
    """A dataset folder: ``dataset.txt`` + ``hparams.yaml`` (data preparation) in; ``sp_wav/``, ``cqt_feat/`` out."""

    root: Path

    @classmethod
    def at(cls, folder: str | Path) -> DatasetLayout:
        return cls(Path(folder).resolve())

    @property
    def name(self) -> str:
        """The key of this dataset's rows in the store: the folder's name."""
        return self.root.name

    @property
    def catalog_path(self) -> Path:
        return self.root / "dataset.txt"

    @property
    def hparams_path(self) -> Path:
        return self.root / "hparams.yaml"

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
        return load_data_hparams(self.hparams_path)

    def cqt_settings(self) -> CqtSettings:
        """The CQT settings of this dataset's features: their hash keys the feature cache."""
        return settings_for(self.hparams())


@dataclass(frozen=True)
class TrainingLayout:
    """A training folder: ``config/hparams.yaml`` in; ``checkpoints/``, ``logs/``, ``reports/`` and the research
    runs' folders out."""

    root: Path

    @classmethod
    def at(cls, folder: str | Path) -> TrainingLayout:
        return cls(Path(folder).resolve())

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def hparams_path(self) -> Path:
        return self.config_dir / "hparams.yaml"

    @property
    def checkpoints_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def hparams(self) -> TrainingHParams:
        return load_training_hparams(self.hparams_path)
