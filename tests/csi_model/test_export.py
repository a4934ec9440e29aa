import json
from pathlib import Path

import pytest

from csi_model.catalog import CatalogRow, parse_catalog
from csi_model.export import FeatureLine, write_reference_exports
from csi_model.splits import Split, assign_work_ids, split_performances
from csi_model.tempo import plan_variants, render_variant
from tests.audio_fixtures import write_tone

KEYS = ["perf", "wav", "dur_s", "work", "version", "feat", "feat_len", "work_id"]


def _dataset(folder: Path, works: int = 6, perfs: int = 2) -> list[CatalogRow]:
    rows = []
    for w in range(works):
        for p in range(perfs):
            wav = write_tone(folder / "wav" / f"{w}_{p}.wav", freq=200.0 + 20 * w, seconds=0.2)
            version = "v" if p else None
            rows.append(CatalogRow(f"perf_{w}_{p}", wav.resolve(), 0.2, f"work {w}", version, len(rows) + 1))
    return rows


def _lines(folder: Path, rows: list[CatalogRow], work_ids: dict[str, int]) -> list[FeatureLine]:
    row_of = {row.perf: row for row in rows}
    lines = []
    for i, variant in enumerate(plan_variants(rows, [0.8, 1.0], folder / "sp_wav")):
        row = row_of[variant.original_perf]
        feat = folder / "cqt_feat" / f"{variant.perf}.cqt.npy"
        lines.append(FeatureLine(row, variant, feat, feat_len=5 + i, work_id=work_ids[row.work]))
    return lines


def test_exports_have_the_reference_keys_and_parse_back(tmp_path: Path) -> None:
    (tmp_path / "wav").mkdir()
    rows = _dataset(tmp_path)
    work_ids = assign_work_ids((row.work for row in rows), {})
    lines = _lines(tmp_path, rows, work_ids)
    for line in lines:  # the parser resolves every wav, so the variants are rendered for real
        render_variant(line.variant)
    work_of = {row.perf: work_ids[row.work] for row in rows}
    variants = {line.variant.perf: line.variant.original_perf for line in lines if not line.variant.is_original}
    ratios = dict(val_data_split=0.0, val_unseen=0.2, test_data_split=0.1, test_data_unseen=0.2)
    split = split_performances(work_of, seed=0, variants_of=variants, **ratios)
    written = write_reference_exports(tmp_path, lines, split.split_of, work_ids, split.test_only_work_ids)

    names = ["full.txt", "train.txt", "val.txt", "test.txt", "work_id.map", "test-only-work-ids.txt"]
    assert sorted(written) == sorted(names)
    full = [json.loads(text) for text in (tmp_path / "full.txt").read_text().splitlines()]
    assert len(full) == len(lines) == 24
    with_version = [record for record in full if "version" in record]
    assert list(with_version[0]) == KEYS and list(full[0]) == [k for k in KEYS if k != "version"]
    assert full[0]["perf"] == "sp_0.8-perf_0_0" and full[0]["dur_s"] == 0.25 and full[1]["perf"] == "perf_0_0"
    assert full[0]["feat_len"] == 5 and full[0]["work_id"] == 0

    by_split = {name: parse_catalog(tmp_path / f"{name}.txt", tempo_copies=True)
                for name in ("full", "train", "val", "test")}
    assert all(parsed.rejected == [] for parsed in by_split.values())
    assert len(by_split["full"].rows) == 24
    assert sum(len(by_split[name].rows) for name in ("train", "val", "test")) == 24
    for name in ("train", "val", "test"):
        assert {split.split_of[row.perf] for row in by_split[name].rows} == {Split(name)}

    assert (tmp_path / "work_id.map").read_text().splitlines() == [f"{i} work {i}" for i in range(6)]
    ids = (tmp_path / "test-only-work-ids.txt").read_text().split()
    assert [int(i) for i in ids] == split.test_only_work_ids and len(ids) == 1
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_work_id_map_is_sorted_by_id_even_when_names_are_not(tmp_path: Path) -> None:
    (tmp_path / "wav").mkdir()
    rows = _dataset(tmp_path, works=3, perfs=1)
    work_ids = {"work 0": 2, "work 1": 0, "work 2": 1}
    lines = _lines(tmp_path, rows, work_ids)
    split_of = {line.variant.perf: Split.TRAIN for line in lines}
    (tmp_path / "val.txt").write_text("stale\n")
    write_reference_exports(tmp_path, lines, split_of, work_ids, [])
    assert (tmp_path / "work_id.map").read_text() == "0 work 1\n1 work 2\n2 work 0\n"
    assert not (tmp_path / "val.txt").exists()  # a stale split file does not survive
    assert (tmp_path / "test-only-work-ids.txt").read_text() == ""


def test_missing_split_and_empty_train_are_errors(tmp_path: Path) -> None:
    (tmp_path / "wav").mkdir()
    rows = _dataset(tmp_path, works=2, perfs=1)
    work_ids = assign_work_ids((row.work for row in rows), {})
    lines = _lines(tmp_path, rows, work_ids)
    with pytest.raises(ValueError, match="no split for 1 performance"):
        write_reference_exports(tmp_path, lines, {line.variant.perf: Split.TRAIN for line in lines[1:]}, work_ids, [])
    with pytest.raises(ValueError, match="train split is empty"):
        write_reference_exports(tmp_path, lines, {line.variant.perf: Split.TEST for line in lines}, work_ids, [])
