"""Identifiers are data, never paths: fuzzed ids map to safe, unique, bounded file names inside their folder; the
catalog decides which ids are valid (with file and line); generated tempo-copy ids never collide with user ids;
and the data assets keep every file they write inside the dataset folder, whatever the ids."""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest

from csi_assets.assets import data
from csi_assets.layouts import DatasetLayout
from csi_assets.store import features as feature_store
from csi_model.catalog import parse_catalog
from csi_model.identifiers import (
    HASH_CHARS,
    SLUG_CHARS,
    UnsafePathError,
    contained,
    id_file_name,
    id_path,
    id_problem,
    is_original_speed,
)
from tests.audio_fixtures import write_tone
from tests.graph_fixtures import make_project, materialize, stored_features

NASTY = [
    "..", ".", "...", "../../../escape", "live/2020/x", "collection/book/X12#p0", "中" * 120, "🎵" * 80,
    ".hidden", "-dash", "~tilde", "a" * 2000, "A", "a", "Ab", "aB", "a b", "a_b", "a/b", "a\\b", "a:b", "a~b",
    "sp_0.9-../../../escape", "sp_1.1-../../../escape", "CON", "nul", "e\u0301", "\u00e9", "x\u2028y", "#", " ",
]
ALPHABET = list("aAbBzZ09._-~#/\\: ") + ["..", "中", "é", "e\u0301", "ß", "İ", "🎵", "\u200d", "\u2028", "ﬁ"]
SUFFIXES = (".wav", ".cqt.npy")


def _random_ids(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    ids = set(NASTY)
    while len(ids) < count:
        ids.add("".join(rng.choice(ALPHABET) for _ in range(rng.choice([1, 2, 3, 8, 40, 300]))))
    return sorted(ids)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_id_file_names_are_safe_unique_bounded_and_stable(suffix: str) -> None:
    ids = _random_ids(5_000)
    names = [id_file_name(identifier, suffix) for identifier in ids]
    for identifier, name in zip(ids, names):
        assert re.fullmatch(r"[A-Za-z0-9._~-]+", name), name
        assert not name.startswith(".") and name not in (".", "..") and name.endswith(suffix)
        assert len(name.encode("utf-8")) <= SLUG_CHARS + 1 + HASH_CHARS + len(suffix)
        assert id_file_name(identifier, suffix) == name  # a pure function of the id
    assert len(set(names)) == len(ids)  # different ids, different names
    assert len({name.casefold() for name in names}) == len(ids)  # also on a case-insensitive file system


def test_id_paths_stay_in_their_folder_and_round_trip_through_files(tmp_path: Path) -> None:
    folder = tmp_path / "sp_wav"
    folder.mkdir()
    ids = _random_ids(500, seed=1)
    for identifier in ids:
        path = id_path(folder, identifier, ".wav")
        assert path.resolve().parent == folder.resolve()
        path.write_text(identifier, encoding="utf-8")
    written = [p for p in tmp_path.rglob("*") if p != folder]
    assert len(written) == len(ids) and all(p.parent == folder and p.is_file() for p in written)
    assert {p.read_text(encoding="utf-8") for p in folder.iterdir()} == set(ids)


def test_ids_that_are_not_text_are_refused() -> None:
    for bad in ["", "a\nb", "a\tb", "nul\x00", "del\x7f", "c1\x85", "lone\ud800"]:
        assert id_problem(bad), bad
        with pytest.raises(ValueError, match="id"):
            id_file_name(bad, ".wav")
    for good in NASTY:
        assert id_problem(good) is None, good


def test_writes_outside_the_folder_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "cqt_feat"
    folder.mkdir()
    for name in ["../x.npy", "a/b.npy", "..", ".", ""]:
        with pytest.raises(UnsafePathError, match="outside"):
            contained(folder, name)
    (folder / "link.npy").symlink_to(tmp_path / "elsewhere.npy")
    with pytest.raises(UnsafePathError):
        contained(folder, "link.npy")
    assert contained(folder, "ok.npy") == folder / "ok.npy"


# ---------------------------------------------------------------------------------------------------------------
# The catalog decides which ids are valid


def _catalog(folder: Path, perfs_and_works: list[tuple[str, str]]) -> Path:
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    write_tone(folder / "wav" / "a.wav", seconds=0.5)
    lines = [json.dumps({"perf": p, "wav": "wav/a.wav", "dur_s": 0.5, "work": w}, ensure_ascii=False)
             for p, w in perfs_and_works]
    path = folder / "dataset.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_catalog_accepts_any_text_id_and_names_the_line_of_an_invalid_one(tmp_path: Path) -> None:
    good = ["中" * 120, "live/2020/x", "../../../escape", "collection/book/X12#p0", "a b#1", "x\u2028y"]
    bad = [("bell\u0007", "w"), ("p", "work\nwith newline"), ("sp_0.9-w001_p1", "w"), ("sp_1.1-live/2020/x", "w")]
    path = _catalog(tmp_path, [(p, "w") for p in good] + bad)
    parsed = parse_catalog(path)
    assert [r.perf for r in parsed.rows] == good
    reasons = {r.line_no: r.reason for r in parsed.rejected}
    assert sorted(reasons) == [7, 8, 9, 10]
    assert all(reason.startswith(f"{path}:{line}: ") for line, reason in reasons.items())
    assert "control character (U+0007)" in reasons[7] and "work" in reasons[8]
    assert "reserved for generated tempo copies" in reasons[9] and "0.9x copy of 'w001_p1'" in reasons[9]


def test_exported_files_may_list_tempo_copies(tmp_path: Path) -> None:
    path = _catalog(tmp_path, [("w001_p1", "w"), ("sp_0.9-w001_p1", "w")])
    assert [r.perf for r in parse_catalog(path, tempo_copies=True).rows] == ["w001_p1", "sp_0.9-w001_p1"]


# ---------------------------------------------------------------------------------------------------------------
# The data assets with hostile ids


HOSTILE = ["中" * 120, "live/2020/x", "../../../escape", "collection/book/X12#p0"]


def test_hostile_ids_get_their_own_files_inside_the_dataset_folder(tmp_path: Path) -> None:
    project = make_project(tmp_path / "proj", works=2, perfs=2, seconds=3.0)
    catalog = project.dataset_dir / "dataset.txt"
    records = [json.loads(line) for line in catalog.read_text(encoding="utf-8").splitlines()]
    for record, perf in zip(records, HOSTILE):
        record["perf"] = perf
    catalog.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")

    def outside() -> list[Path]:  # every path outside the dataset folder, the store's own files excepted
        return sorted(p for p in tmp_path.rglob("*")
                      if project.dataset_dir not in p.parents and not p.name.startswith(project.store_path.name))

    outside_before = outside()

    materialize(project, [data.dataset_catalog, data.speed_variants, data.cqt_features])

    assert outside() == outside_before
    variants_dir = project.dataset_dir / "sp_wav"
    assert all(p.is_file() for p in variants_dir.iterdir())  # no folder made from an id
    settings = DatasetLayout.at(project.dataset_dir).cqt_settings()
    stored = stored_features(project)
    variants = {v.variant: v for v in feature_store.variants(project.store, "dataset")}
    assert len(stored) == len(variants) == 4 * 3
    assert len({r.path for r in stored.values()}) == 12
    assert len({v.wav for v in variants.values()}) == 12  # the 0.9x and 1.1x copies never share a file
    for row in stored.values():
        path = Path(row.path)
        assert path.parent == project.dataset_dir / "cqt_feat" / settings.settings_hash()
        assert np.load(path).shape == (row.n_frames, 96)  # round trip: the store finds each id's file
    slow, fast = stored["sp_0.9-../../../escape"], stored["sp_1.1-../../../escape"]
    assert slow.n_frames / fast.n_frames == pytest.approx(1.1 / 0.9, rel=0.05)
    assert os.path.commonpath([variants["sp_0.9-../../../escape"].wav, str(variants_dir)]) == str(variants_dir)


@pytest.mark.parametrize(("speed", "original"), [(1.0, True), (1.005, True), (0.995, True), (1.01, False),
                                                 (0.8, False), (1.2, False)])
def test_original_recording_is_the_identity_speed(speed: float, original: bool) -> None:
    assert is_original_speed(speed) is original
