"""Musical-category labels: extra catalog keys named in the data hparams reach the store per performance, in both
catalog formats, for ingested batches too, with missing values kept as missing and values normalised."""

from __future__ import annotations

import json
import logging
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from csi_assets.assets import data
from csi_assets.ingestion import ingest_batch
from csi_assets.layouts import DatasetLayout
from csi_assets.store import catalog as catalog_store
from csi_model.catalog import parse_catalog
from csi_model.hparams import HParamsError, data_hparams_from_dict
from csi_model.synth import DEMO_LABELS, generate_covers
from tests.graph_fixtures import make_project, materialize
from tests.serving_fixtures import ORIGINALS_ONLY

LABELS = ["mode", "region"]
_PIECES = ["e\u0301", "\u00e9", " ", "a", "Z", "\u00c5", "A\u030a", "\u3042", "7", "-", "\u00a0"]


def _tab_line(record: dict) -> str:
    return "\t".join(f"{key}:{value}" for key, value in record.items())


def _fuzzed_value(rng: np.random.Generator) -> str:
    """Text of accents precomposed or combined, CJK, digits and surrounding blanks (TABs excluded: they
    separate fields of the TAB format)."""
    return "".join(rng.choice(_PIECES, size=int(rng.integers(0, 6))))


def test_label_values_round_trip_trimmed_nfc_in_both_formats_blank_is_missing(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"")  # parsing only checks that the file exists
    rng = np.random.default_rng(3)
    lines, expected = [], {}
    for i in range(200):
        value = _fuzzed_value(rng)
        record = {"perf": f"p{i}", "wav": "a.wav", "dur_s": 1.0, "work": "w", "region": value}
        lines.append(json.dumps(record) if i % 2 else _tab_line(record))
        expected[f"p{i}"] = unicodedata.normalize("NFC", value).strip() or None
    (tmp_path / "dataset.txt").write_text("\n".join(lines) + "\n")
    parsed = parse_catalog(tmp_path / "dataset.txt", labels=LABELS)
    assert not parsed.rejected
    assert {row.perf: row.labels["region"] for row in parsed.rows} == expected
    assert all(row.labels["mode"] is None for row in parsed.rows)  # absent key: missing, not ""
    assert {row.perf: dict(row.labels) for row in parse_catalog(tmp_path / "dataset.txt").rows} == \
        {f"p{i}": {} for i in range(200)}  # labels not asked for are not kept


def test_numbers_booleans_and_null_as_label_values(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"")
    lines = [json.dumps({"perf": f"p{i}", "wav": "a.wav", "dur_s": 1, "work": "w", "mode": v})
             for i, v in enumerate([3, 2.5, True, None, " minor "])]
    (tmp_path / "dataset.txt").write_text("\n".join(lines) + "\n")
    rows = parse_catalog(tmp_path / "dataset.txt", labels=["mode"]).rows
    assert [row.labels["mode"] for row in rows] == ["3", "2.5", "true", None, "minor"]


def test_a_list_as_label_value_rejects_the_line_naming_file_line_and_value(tmp_path: Path) -> None:
    (tmp_path / "a.wav").write_bytes(b"")
    lines = [json.dumps({"perf": "p0", "wav": "a.wav", "dur_s": 1, "work": "w", "mode": ["major", "minor"]}),
             json.dumps({"perf": "p1", "wav": "a.wav", "dur_s": 1, "work": "w", "mode": "major"})]
    (tmp_path / "dataset.txt").write_text("\n".join(lines) + "\n")
    parsed = parse_catalog(tmp_path / "dataset.txt", labels=["mode"])
    assert [row.perf for row in parsed.rows] == ["p1"]
    (reason,) = [r.reason for r in parsed.rejected]
    assert f"{tmp_path / 'dataset.txt'}:1:" in reason and "'mode'" in reason and "['major', 'minor']" in reason


@pytest.mark.parametrize("labels, problem", [(["work"], "catalog key"), (["a b"], "not a label name"),
                                             (["mode", "mode"], "repeats")])
def test_bad_label_lists_in_data_hparams_are_errors_naming_the_file(labels, problem) -> None:
    with pytest.raises(HParamsError, match=f"data.yaml: labels: .*{problem}"):
        data_hparams_from_dict({"labels": labels}, source="data.yaml")


def _stored(project, label: str) -> dict[str, str | None]:
    return catalog_store.performance_labels(project.store, project.dataset, label)


def test_labels_reach_the_store_from_both_formats_and_follow_catalog_edits(tmp_path: Path) -> None:
    project = make_project(tmp_path, works=2, perfs=2, seconds=2.0,
                           data_hparams={**ORIGINALS_ONLY, "labels": ["mode", "batch_tag", "region"]})
    catalog = project.dataset_dir / "dataset.txt"
    records = [json.loads(line) for line in catalog.read_text().splitlines()]
    records[0]["region"] = "  Andaluci\u0301a "
    del records[1]["mode"]
    lines = [json.dumps(r) if i % 2 else _tab_line(r) for i, r in enumerate(records)]
    catalog.write_text("\n".join(lines) + "\n")
    result = materialize(project, [data.dataset_catalog])

    expected_mode = {r["perf"]: r.get("mode") for r in records}
    assert _stored(project, "mode") == expected_mode
    assert _stored(project, "region") == {r["perf"]: ("Andaluc\u00eda" if i == 0 else None)
                                          for i, r in enumerate(records)}
    assert _stored(project, "batch_tag") == {r["perf"]: r["batch_tag"] for r in records}
    shown = result.asset_materializations_for_node("dataset_catalog")[0].metadata["label/region"].data
    assert shown == {"with_value": 1, "missing": 3, "values": {"Andaluc\u00eda": 1}}

    records[0]["region"] = "Galicia"  # a label edit alone reaches the store; a removed line takes its labels along
    catalog.write_text("\n".join(json.dumps(r) for r in records[:3]) + "\n")
    materialize(project, [data.dataset_catalog])
    assert _stored(project, "region") == {records[0]["perf"]: "Galicia", records[1]["perf"]: None,
                                          records[2]["perf"]: None}


def test_an_ingested_batch_carries_its_labels(tmp_path: Path) -> None:
    project = make_project(tmp_path, works=1, perfs=2, seconds=2.0,
                           data_hparams={**ORIGINALS_ONLY, "labels": list(DEMO_LABELS)})
    materialize(project, [data.dataset_catalog])
    batch = project.dataset_dir / "incoming" / "b1"
    generate_covers(batch, 1, 2, seed=5, seconds=2.0)
    records = [dict(json.loads(line), perf=f"new{i}", work="new_work")
               for i, line in enumerate((batch / "dataset.txt").read_text().splitlines())]
    del records[1]["register"]
    (batch / "dataset.txt").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    ingest_batch(project.store, DatasetLayout.at(project.dataset_dir), "b1", batch / "dataset.txt",
                 logging.getLogger("test"))
    stored = _stored(project, "register")
    assert {p: stored[p] for p in ("new0", "new1")} == {"new0": records[0]["register"], "new1": None}
    assert len(stored) == 4  # the main catalog's two performances keep theirs
