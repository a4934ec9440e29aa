"""Dataset names are data, never paths: a seeded fuzz over names built from the characters that make paths (and
Dagster keys) dangerous checks that every accepted name stays a direct child of the folder it is joined to, that
every other name is refused with :class:`DatasetNameError`, and that the dataset and training folders of distinct
datasets are distinct."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from csi_assets.errors import RunFailed
from csi_assets.layouts import DatasetLayout, DatasetNameError, TrainingLayout, check_dataset_name

ALPHABET = ["a", "Z", "0", "_", "-", " ", ".", "..", "/", "\\", "|", ",", ":", "~", "é", "漢", "\t", "\n", "\x00",
            "\x1f", "\x7f", "\u2215", "\u2024", "demo"]
EDGE = ["", ".", "..", "...", "./a", "a/.", "../demo", "demo/..", "/", "//", "a//b", "/demo", ".demo", "demo.",
        "de mo", " demo", "demo ", "de|mo", "de\\mo", "de\nmo", "de\x00mo", "de\x7fmo", "demo", "other", "~", "-x"]


def _names(count: int = 3000, seed: int = 20261130) -> list[str]:
    rng = random.Random(seed)
    return EDGE + ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 6))) for _ in range(count)]


def _plain(name: str) -> bool:
    """The rule, stated independently of the implementation: not empty, no leading dot (so neither ``.`` nor
    ``..``), no ``/``, ``\\``, ``|`` and no ASCII control character."""
    return (bool(name) and not name.startswith(".") and not any(c in "/\\|" for c in name)
            and not any(ord(c) < 32 or ord(c) == 127 for c in name))


def test_accepted_names_are_exactly_the_plain_ones_and_stay_direct_children(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    accepted = 0
    for name in _names():
        if _plain(name):
            assert check_dataset_name(name) == name
            joined = root / name
            assert Path(os.path.normpath(joined)).parent == root, name
            assert joined.resolve().parent == root and joined.resolve().name == name, name
            accepted += 1
        else:
            with pytest.raises(DatasetNameError, match="is not a plain folder name") as raised:
                check_dataset_name(name)
            assert repr(name) in str(raised.value)
            assert isinstance(raised.value, RunFailed) and isinstance(raised.value, ValueError)
    assert 300 < accepted < len(_names()) - 300  # both sides really exercised


def test_dataset_layout_named_is_the_default_folder_or_a_sibling(tmp_path: Path) -> None:
    default = tmp_path / "data" / "demo"
    home = DatasetLayout.at(default)
    folders: dict[Path, str] = {}
    for name in _names():
        if not _plain(name):
            with pytest.raises(DatasetNameError):
                DatasetLayout.named(name, default)
            continue
        layout = DatasetLayout.named(name, default)
        assert (layout == home) is (name == "demo")
        assert layout.root.parent == home.root.parent and layout.name == name
        assert folders.setdefault(layout.root, name) == name  # distinct datasets, distinct folders
    assert not (tmp_path / "data").exists()  # naming a folder creates nothing


@pytest.mark.parametrize("default_dataset", ["", "demo", "other"])
def test_training_layout_named_is_the_default_folder_or_a_sibling(tmp_path: Path, default_dataset: str) -> None:
    """The training folder ``training/demo`` belongs to ``default_dataset`` (empty: the dataset named like it);
    every other dataset trains in the folder named after it beside that one, and no two datasets share a folder
    (a dataset named like the default folder but not paired with it is refused: it would resume the paired
    dataset's checkpoints)."""
    default = tmp_path / "training" / "demo"
    home = TrainingLayout.at(default)
    paired = default_dataset or "demo"
    folders: dict[Path, str] = {}
    for name in _names():
        if not _plain(name):
            with pytest.raises(DatasetNameError):
                TrainingLayout.named(name, default, default_dataset)
            continue
        if name == "demo" != paired:
            with pytest.raises(DatasetNameError, match=f"training folder of dataset '{paired}'"):
                TrainingLayout.named(name, default, default_dataset)
            continue
        layout = TrainingLayout.named(name, default, default_dataset)
        assert (layout == home) is (name == paired)
        assert layout.root.parent == home.root.parent
        assert layout.name == (home.name if name == paired else name)
        assert folders.setdefault(layout.root, name) == name  # distinct datasets, distinct folders
    assert not (tmp_path / "training").exists()


def test_siblings_lists_the_plain_named_dataset_folders_beside_the_default(tmp_path: Path) -> None:
    for name in ("demo", "beta", ".hidden", "no_catalog", "de mo"):
        (tmp_path / name).mkdir()
        if name != "no_catalog":
            (tmp_path / name / "dataset.txt").write_text("")
    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    assert [s.name for s in DatasetLayout.at(tmp_path / "demo").siblings()] == ["beta", "de mo", "demo"]
