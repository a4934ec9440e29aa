"""Which folders a dataset name stands for: decided at the name's first use, recorded in the store, the same in
every process after that.

A dataset's name is its Dagster partition key and the key of its rows in the store, and each process resolves it
to folders from its own environment (:meth:`~csi_assets.layouts.DatasetLayout.named`): the default dataset is
``$CSI_DATASET_DIR``, any other is the folder of that name beside it. Two processes with different environments
(a shell that exported ``CSI_DATASET_DIR=../elsewhere/covers80``, the daemon started without it) would resolve
one name to two folders and mix their rows under it, silently. So the first run that uses a name records its
dataset folder, and its training folder once a training run uses one (table ``dataset_folders``); after that:

- a process that names the folder itself (the name is its ``$CSI_DATASET_DIR``'s, or its ``$CSI_TRAINING_DIR``'s
  pair) must name the recorded one, else the run fails naming both (:class:`FolderConflict`);
- any other process (the daemon resolving a partition by the sibling rule) uses the recorded folders.

A dataset that moved: ``csi datasets --forget NAME``; its next run records the new folders.
"""

from __future__ import annotations

from pathlib import Path

from csi_assets.errors import RunFailed
from csi_assets.layouts import DatasetLayout, TrainingLayout, check_dataset_name
from csi_assets.store import Store
from csi_assets.store import folders as folder_store


class FolderConflict(RunFailed):
    """A process names other folders for a dataset than the ones recorded at its first use."""


def _conflict(name: str, kind: str, recorded: str, named: Path, variable: str) -> FolderConflict:
    return FolderConflict(
        f"dataset {name!r} has its {kind} at {recorded} (recorded at its first run), but this process names "
        f"{named} (${variable}): one name for two folders would mix their rows in the store. Point {variable} at "
        f"{recorded} or rename one of the folders; if the dataset moved, run `csi datasets --forget {name}`",
        {"recorded": recorded, "named": str(named)})


def dataset_folder(db: Store, name: str, default_dir: str | Path) -> DatasetLayout:
    """The dataset folder of ``name``, recorded on first use. Raises :class:`FolderConflict` when ``name`` is the
    default dataset's (``default_dir``) and another folder is recorded; :class:`~csi_assets.layouts.DatasetNameError`
    for a name that is not a plain folder name."""
    check_dataset_name(name)
    default = DatasetLayout.at(default_dir)
    bound = folder_store.bound_folders(db, name)
    if name == default.name:
        if bound is not None and bound.folder != str(default.root):
            raise _conflict(name, "dataset folder", bound.folder, default.root, "CSI_DATASET_DIR")
        layout = default
    else:
        layout = DatasetLayout(Path(bound.folder)) if bound else DatasetLayout.named(name, default_dir)
    if bound is None:
        folder_store.bind_folder(db, name, str(layout.root))
    return layout


def training_folder(db: Store, name: str, default_dir: str | Path, default_dataset: str = "") -> TrainingLayout:
    """The training folder of dataset ``name`` (see :meth:`~csi_assets.layouts.TrainingLayout.named` for
    ``default_dataset``), recorded on first use once the dataset's folder is. Raises :class:`FolderConflict`
    when ``default_dir`` is the dataset's and another training folder is recorded."""
    home = TrainingLayout.at(default_dir)
    bound = folder_store.bound_folders(db, check_dataset_name(name))
    recorded = bound.training_folder if bound else None
    if name == (default_dataset or home.name):
        if recorded is not None and recorded != str(home.root):
            raise _conflict(name, "training folder", recorded, home.root, "CSI_TRAINING_DIR")
        layout = home
    else:
        layout = TrainingLayout(Path(recorded)) if recorded else TrainingLayout.named(name, default_dir,
                                                                                      default_dataset)
    if bound is not None and recorded is None:
        folder_store.bind_training_folder(db, name, str(layout.root))
    return layout
