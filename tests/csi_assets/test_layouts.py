"""Dataset names are data, never paths: a seeded fuzz over names built from the characters that make paths (and
Dagster keys) dangerous checks that every accepted name stays a direct child of the folder it is joined to, that
every other name is refused with :class:`DatasetNameError`, and that the dataset and training folders of distinct
datasets are distinct."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
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


@pytest.fixture
def symlinked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``data/covers80 -> disk/cov80`` beside a plain ``data/beta``, and ``training/covers80 -> disk/train80``;
    ``disk/`` also holds a dataset ``other``. The working directory is ``tmp_path`` and the deployment's default
    folders are the symlinks, named relatively as a user would."""
    for folder in ("disk/cov80", "disk/other", "data/beta", "disk/train80/config"):
        (tmp_path / folder).mkdir(parents=True)
    for folder in ("disk/cov80", "disk/other", "data/beta"):
        (tmp_path / folder / "dataset.txt").write_text("")
    (tmp_path / "data" / "covers80").symlink_to(tmp_path / "disk" / "cov80", target_is_directory=True)
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "covers80").symlink_to(tmp_path / "disk" / "train80", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSI_DATASET_DIR", "data/covers80")
    monkeypatch.setenv("CSI_TRAINING_DIR", "training/covers80")
    return tmp_path


def test_a_symlinked_dataset_folder_is_named_as_given_by_at_named_and_siblings(symlinked: Path) -> None:
    """The name is the folder's as the user names it: following the symlink would make ``cov80`` the store key
    and partition of a dataset the user (and ``named``/``siblings``) call ``covers80``."""
    for spelling in ("data/covers80", "data/covers80/", "./data/./covers80", symlinked / "data" / "covers80",
                     "data/beta/../covers80"):
        home = DatasetLayout.at(spelling)
        assert home.name == "covers80" and home.root == symlinked / "data" / "covers80", spelling
        assert DatasetLayout.named("covers80", spelling) == home
        assert DatasetLayout.named("beta", spelling).root == symlinked / "data" / "beta"
        assert [(s.name, s.root.name) for s in home.siblings()] == [("beta", "beta"), ("covers80", "covers80")]
        assert home.catalog_path.is_file()  # the folder is still the target's, reached through the link
    training = TrainingLayout.at("training/covers80")
    assert training.name == "covers80" and training.root == symlinked / "training" / "covers80"
    assert TrainingLayout.named("covers80", "training/covers80") == training
    assert TrainingLayout.named("beta", "training/covers80").root == symlinked / "training" / "beta"


def test_the_dagster_resources_name_a_symlinked_default_dataset_as_given(symlinked: Path) -> None:
    from csi_assets.resources import default_resources

    resources = default_resources()
    dataset, training = resources["dataset"], resources["training"]
    assert dataset.default().name == "covers80" and dataset.layout("covers80") == dataset.default()
    assert training.dataset_name == "covers80"
    assert training.layout("covers80") == TrainingLayout.at("training/covers80")


@pytest.mark.parametrize("command", ["eval", "identify", "classify", "import", "serve"])
def test_the_cli_names_a_symlinked_dataset_as_dagster_does(symlinked: Path, command: str, capsys) -> None:
    """The partition the resources serve and the rows the CLI reads have one name: a model promoted for the
    dataset ``covers80`` (as a Dagster run of that partition records it) is the one ``csi eval --dataset-dir
    data/covers80`` finds, and ``csi identify`` / ``classify`` / ``import`` / ``serve`` name the dataset
    ``covers80`` too."""
    import soundfile as sf

    from csi_assets.cli import main as csi
    from csi_assets.resources import default_resources
    from csi_assets.store import Store
    from csi_assets.store import models as model_store

    partition = default_resources()["dataset"].default().name
    if command == "eval":
        model_store.register_model(Store(symlinked / "s.duckdb"), model_id="m80", dataset=partition,
                                   training_dir="training/covers80", checkpoint="g_00000001", epoch=1,
                                   fingerprint="f", hparams={}, metrics={}, promote=True, input_contract=None)
        assert csi(["eval", "--dataset-dir", "data/covers80", "--store", "s.duckdb"]) == 2
        assert f"no evaluation of model m80 for dataset {partition!r}" in capsys.readouterr().err
    elif command in ("identify", "classify"):
        Store(symlinked / "s.duckdb").schema_version()
        sf.write(symlinked / "query.wav", np.sin(np.arange(16000 * 3) * 0.1).astype(np.float32), 16000)
        label = ["--label", "genre"] if command == "classify" else []
        assert csi([command, "query.wav", *label, "--dataset-dir", "data/covers80", "--store", "s.duckdb"]) == 2
        assert f"no promoted model for dataset {partition!r}" in capsys.readouterr().err
    elif command == "serve":
        from csi_assets.service import ServiceConfig

        assert ServiceConfig(store_path=Path("s.duckdb"), dataset_dir=Path("data/covers80")).dataset == partition
    else:
        assert csi(["import", "--data", "data/covers80", "--store", "s.duckdb"]) == 0
        out = capsys.readouterr().out
        assert f"dataset {partition!r}: 0 performances" in out
        assert f"--dataset-dir {symlinked / 'data' / 'covers80'}\n" in out
    assert partition == "covers80"
