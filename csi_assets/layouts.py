"""The folders a run works in, as plain values: a dataset folder and a training folder in the reference layout.

The Dagster resources produce them (``DatasetResource.layout(name)``, ``TrainingResource.layout(name)``) and the
CLI builds them from its arguments, so application code takes one typed object for "which dataset" or "which
training run" instead of a resource in some signatures and a bare name in others.

A dataset is named by its folder's name (the key of its rows in the store and of its Dagster partition), the folder
as the user names it: :func:`folder_path` makes a path absolute and normal without following symlinks, so
``data/covers80 -> /disk/cov80`` is the dataset ``covers80`` for the CLI and for Dagster alike. Every layout is built
through it (:meth:`DatasetLayout.at`, :meth:`TrainingLayout.at`); code that needs a dataset's name from a folder
takes ``DatasetLayout.at(folder).name``, never ``Path(folder).resolve().name``.

Names are data, never paths: :func:`check_dataset_name` refuses separators, ``.``/``..`` and hidden names before
any folder is built from one. A deployment has a default dataset folder (``$CSI_DATASET_DIR``) and training folder
(``$CSI_TRAINING_DIR``); any other dataset lives beside the default one, and trains beside the default training
folder, in folders named after it (:meth:`DatasetLayout.named`, :meth:`TrainingLayout.named`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from csi_assets.errors import RunFailed
from csi_model.cqt import CqtSettings, settings_for
from csi_model.hparams import DataPrepHParams, HParamsError, TrainingHParams, load_data_hparams, load_training_hparams

_UNSAFE = re.compile(r"[/\\|\x00-\x1f\x7f]")


class DatasetNameError(RunFailed, ValueError):
    """A dataset name that cannot name a folder beside the others (it would be a path, or hidden)."""


def check_dataset_name(name: str) -> str:
    """``name`` unchanged when it can be a dataset folder's name. Raises :class:`DatasetNameError` for an empty
    name, ``.``/``..``, a leading dot, a path separator, ``|`` (Dagster's multi-partition separator) or a control
    character."""
    if not name or name in (".", "..") or name.startswith(".") or _UNSAFE.search(name):
        raise DatasetNameError(f"dataset name {name!r} is not a plain folder name (no path separators, '|', "
                               "control characters or leading dot)")
    return name


def folder_path(folder: str | Path) -> Path:
    """``folder`` absolute and normalised (``.``/``..`` removed) WITHOUT following symlinks: the folder as the user
    names it, whose last part is the dataset's (or training run's) name. ``Path.resolve()`` would name a symlinked
    folder after its target, so the CLI and Dagster would read and write different rows."""
    return Path(os.path.abspath(os.fspath(folder)))


@dataclass(frozen=True)
class DatasetLayout:
    """A dataset folder: ``dataset.txt`` + ``hparams.yaml`` (data preparation) in; ``sp_wav/``, ``cqt_feat/`` out."""

    root: Path

    @classmethod
    def at(cls, folder: str | Path) -> DatasetLayout:
        """The dataset folder ``folder``, named as given (:func:`folder_path`: a symlink is not followed)."""
        return cls(folder_path(folder))

    @classmethod
    def named(cls, name: str, default: str | Path) -> DatasetLayout:
        """The dataset called ``name``: the ``default`` folder when it has that name, else the folder of that name
        beside it. Raises :class:`DatasetNameError` for a name that is not a plain folder name."""
        home = cls.at(default)
        return home if check_dataset_name(name) == home.name else cls(home.root.parent / name)

    def siblings(self) -> list[DatasetLayout]:
        """This dataset and every dataset folder beside it (a plain-named folder with a ``dataset.txt``), by name."""
        found = {self.name: self}
        if self.root.parent.is_dir():
            for folder in self.root.parent.iterdir():
                try:
                    if folder.is_dir() and (folder / "dataset.txt").is_file():
                        found[check_dataset_name(folder.name)] = DatasetLayout(folder)
                except (OSError, DatasetNameError):
                    continue
        return [found[name] for name in sorted(found)]

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

    def has_catalog(self) -> bool:
        """The folder holds a catalog: ``dataset.txt``, or a reference tool's ``full.txt`` (an imported folder)."""
        return self.catalog_path.is_file() or (self.root / "full.txt").is_file()

    def hparams(self) -> DataPrepHParams:
        return load_data_hparams(self.hparams_path)

    def cqt_settings(self) -> CqtSettings:
        """The CQT settings of this dataset's features: their hash keys the feature cache."""
        return settings_for(self.hparams())

    def labels(self) -> tuple[str, ...]:
        """The ``labels:`` of the hparams; none when they cannot be read (the data assets report that error when
        they run)."""
        try:
            return self.hparams().labels
        except HParamsError:
            return ()

    def require_label(self, label: str) -> None:
        """Raise :class:`RunFailed` unless ``label`` is one of this dataset's labels: Dagster's label partitions
        are one list across datasets, so a (dataset, label) pair may name one this dataset does not have, and only
        a configured label may name a report folder."""
        if label not in self.labels():
            raise RunFailed(f"label {label!r} is not among the labels of dataset {self.name!r} "
                            f"({', '.join(self.labels()) or 'none'}): add it under `labels:` in {self.hparams_path} "
                            "and materialize dataset_catalog")


@dataclass(frozen=True)
class TrainingLayout:
    """A training folder: ``config/hparams.yaml`` in; ``checkpoints/``, ``logs/``, ``reports/`` and the research
    runs' folders out."""

    root: Path

    @classmethod
    def at(cls, folder: str | Path) -> TrainingLayout:
        """The training folder ``folder``, named as given (:func:`folder_path`: a symlink is not followed)."""
        return cls(folder_path(folder))

    @classmethod
    def named(cls, dataset: str, default: str | Path, default_dataset: str = "") -> TrainingLayout:
        """The training folder of dataset ``dataset``: ``default`` for ``default_dataset`` (empty: the dataset
        named like ``default``), else the folder named after the dataset beside ``default``. Raises
        :class:`DatasetNameError` for a name that is not a plain folder name, and for a dataset named like
        ``default`` but not paired with it (it would share, and resume, the paired dataset's training)."""
        home = cls.at(default)
        paired = default_dataset or home.name
        if check_dataset_name(dataset) == paired:
            return home
        if dataset == home.name:
            raise DatasetNameError(f"dataset {dataset!r} would train in {home.root}, the training folder of dataset "
                                   f"{paired!r}: rename one of the datasets, or point CSI_TRAINING_DIR at a folder "
                                   "named after its dataset")
        return cls(home.root.parent / dataset)

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
