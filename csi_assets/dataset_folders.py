"""Which folders a dataset name stands for: decided at the name's first use, recorded in the store, the same in
every process after that.

A dataset's name is its Dagster partition key and the key of its rows in the store, and each process resolves it
to folders from its own environment (:meth:`~csi_assets.layouts.DatasetLayout.named`): the default dataset is
``$CSI_DATASET_DIR``, any other is the folder of that name beside it. Two processes with different environments
(a shell that exported ``CSI_DATASET_DIR=../elsewhere/covers80``, the daemon started without it) would resolve
one name to two folders and mix their rows under it, silently. So the first run that uses a name records its
dataset folder (table ``dataset_folders``); after that:

- a process that names the folder itself (the name is its ``$CSI_DATASET_DIR``'s) must name the recorded one,
  else the run fails naming both (:class:`FolderConflict`);
- any other process (the daemon resolving a partition by the sibling rule) uses the recorded folder.

Training folders are different: one dataset may well have several training runs (a larger model, other
hparams), each in its own folder, each registering its own models. The record keeps the training folder last named
explicitly (``$CSI_TRAINING_DIR`` paired with the dataset); a process that resolves the name by the sibling rule
uses that one, so the daemon continues the run a shell started instead of starting another.

A dataset that moved: ``csi datasets --forget NAME``; its next run records the new folders.
"""

from __future__ import annotations

import os
from pathlib import Path

from csi_assets.errors import RunFailed
from csi_assets.layouts import DatasetLayout, TrainingLayout, check_dataset_name
from csi_assets.store import Store
from csi_assets.store import folders as folder_store


class FolderConflict(RunFailed):
    """A process names other folders for a dataset than the ones recorded at its first use, or a folder another
    dataset holds."""


class NoDatasetFolder(RunFailed):
    """A dataset name whose folder holds no catalog: a mistyped partition, a folder not made yet, or moved."""


def dataset_folder(db: Store, name: str, default_dir: str | Path, source: str = "$CSI_DATASET_DIR") -> DatasetLayout:
    """The dataset folder of ``name``, recorded on first use. ``source``: where ``default_dir`` came from, for the
    messages. Raises :class:`FolderConflict` when ``name`` is the default dataset's and another folder is recorded,
    or when the folder is one another dataset holds (a symlink is a second name for it); :class:`NoDatasetFolder`
    when the folder holds no catalog (nothing is recorded then); :class:`~csi_assets.layouts.DatasetNameError` for
    a name that is not a plain folder name."""
    check_dataset_name(name)
    default = DatasetLayout.at(default_dir)
    bound = folder_store.bound_folders(db, name)
    if name == default.name:
        if bound is not None and bound.folder != str(default.root):
            raise FolderConflict(
                f"dataset {name!r} has its dataset folder at {bound.folder} (recorded at its first run), but this "
                f"process names {default.root} ({source}): one name for two folders would mix their rows in the "
                f"store. Use {bound.folder} or rename one of the folders; if the dataset moved, run "
                f"`csi datasets --forget {name}`", {"recorded": bound.folder, "named": str(default.root)})
        layout = default
    else:
        layout = DatasetLayout(Path(bound.folder)) if bound else DatasetLayout.named(name, default_dir)
    if not layout.has_catalog():
        moved = (f"it was recorded there at its first run; if the dataset moved, run `csi datasets --forget {name}`"
                 if bound else "check the partition name, or create the dataset there (`csi synth` makes a demo one)")
        raise NoDatasetFolder(f"dataset {name!r}: no catalog (dataset.txt or full.txt) in {layout.root}: {moved}",
                              {"folder": str(layout.root)})
    if bound is None:
        _refuse_second_name(db, name, layout.root)
        folder_store.bind_folder(db, name, str(layout.root))
    return layout


def _refuse_second_name(db: Store, name: str, folder: Path) -> None:
    """One folder, one name: a folder that is, through symlinks, the folder of another dataset cannot be recorded."""
    real = os.path.realpath(folder)
    for other in folder_store.every_binding(db):
        if other.dataset != name and os.path.realpath(other.folder) == real:
            raise FolderConflict(f"{folder} is the folder of dataset {other.dataset!r} ({other.folder}) under another "
                                 f"name: one folder under two names would store its recordings twice and rewrite "
                                 f"its exports; use the partition {other.dataset!r}",
                                 {"folder": str(folder), "dataset": other.dataset})


def training_folder(db: Store, name: str, default_dir: str | Path, default_dataset: str = "") -> TrainingLayout:
    """The training folder of dataset ``name``: ``default_dir`` when it is the dataset's (see
    :meth:`~csi_assets.layouts.TrainingLayout.named` for ``default_dataset``), then recorded as its latest; else
    the recorded one, else the sibling named after the dataset. Nothing is recorded before the dataset folder is.
    Raises :class:`FolderConflict` for a training folder another dataset has recorded (two datasets would share,
    and resume, one training) and for one that holds a ``dataset.txt`` (training folders put among the dataset
    folders: checkpoints would go into a dataset); nothing is recorded then."""
    home = TrainingLayout.at(default_dir)
    bound = folder_store.bound_folders(db, check_dataset_name(name))
    recorded = bound.training_folder if bound else None
    if name == (default_dataset or home.name):
        layout = home
    else:
        layout = TrainingLayout(Path(recorded)) if recorded else TrainingLayout.named(name, default_dir,
                                                                                      default_dataset)
    if (layout.root / "dataset.txt").is_file():
        raise FolderConflict(f"the training folder of dataset {name!r}, {layout.root}, is a dataset folder: keep "
                             "training folders apart from dataset folders (point CSI_TRAINING_DIR at a folder whose "
                             "parent holds no datasets)", {"folder": str(layout.root)})
    real = os.path.realpath(layout.root)
    for other in folder_store.every_binding(db):
        if other.dataset != name and other.training_folder and os.path.realpath(other.training_folder) == real:
            raise FolderConflict(f"{layout.root} is the training folder of dataset {other.dataset!r}: dataset "
                                 f"{name!r} would share, and resume, its training. Point CSI_TRAINING_DIR at a "
                                 f"folder of its own (e.g. one named {name!r})",
                                 {"folder": str(layout.root), "dataset": other.dataset})
    if bound is not None and recorded != str(layout.root):
        folder_store.record_training_folder(db, name, str(layout.root))
    return layout
