"""Catalog tools: overlap report (malformed lines skipped and reported), performances-per-work histogram as a PNG,
query_in_ref built by perf."""

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from csi_assets.assets import data, tools
from csi_assets.catalog_histogram import HISTOGRAM_FILE
from csi_assets.cli import main as csi
from csi_model.catalog import CatalogLineError
from csi_model.dataset_tools import (
    compare_catalogs,
    perfs_per_work,
    plot_perfs_per_work,
    query_in_ref_pairs,
    read_catalog_ids,
    work_size_stats,
    write_query_in_ref,
)
from tests.graph_fixtures import make_project, materialize


def write_catalog(path: Path, records: list[dict], extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def rec(perf: str, work: str) -> dict:
    return {"perf": perf, "wav": f"wav/{perf}.wav", "dur_s": 10.0, "work": work}


def test_compare_counts_shared_and_exclusive_and_reports_malformed(tmp_path: Path) -> None:
    a = write_catalog(tmp_path / "a.txt", [rec("p1", "w1"), rec("p2", "w1"), rec("p3", "w2"), rec("p3", "w2")],
                      ("{not json", "perf:p9\twork:w9\twav:x\tdur_s:3", '{"perf": "p8"}'))
    b = write_catalog(tmp_path / "b.txt", [rec("p3", "w2"), rec("p4", "w3"), rec("p5", "w1")])
    report = compare_catalogs(a, b)
    assert (report.a.records, report.a.works, report.a.perfs, report.a.malformed) == (5, 3, 4, 2)
    assert (report.b.records, report.b.works, report.b.perfs, report.b.malformed) == (3, 3, 3, 0)
    assert report.shared_works == ["w1", "w2"] and report.shared_perfs == ["p3"]
    assert (report.a.exclusive_works, report.a.exclusive_perfs) == (1, 3)  # w9; p1 p2 p9
    assert (report.b.exclusive_works, report.b.exclusive_perfs) == (1, 2)  # w3; p4 p5
    assert any("a.txt:5" in m and "JSON" in m for m in report.malformed)
    assert any("a.txt:7" in m and "work" in m for m in report.malformed)
    text = report.to_text()
    assert "shared perfs: 1" in text and "e.g. p3" in text and "a.txt:5" in text
    assert json.loads(json.dumps(report.to_dict()))["shared_works"] == 2


def test_perfs_per_work_counts_distinct_perfs(tmp_path: Path) -> None:
    ids = read_catalog_ids(write_catalog(tmp_path / "c.txt", [rec("a", "w1"), rec("b", "w1"), rec("a", "w1"),
                                                               rec("c", "w2")]))
    counts = perfs_per_work(ids.perfs, ids.works)
    assert counts == {"w1": 2, "w2": 1}
    stats = work_size_stats(counts)
    assert (stats.works, stats.perfs, stats.min_perfs, stats.max_perfs, stats.single_perf_works) == (2, 3, 1, 2, 1)


def test_histogram_is_written_atomically_as_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    counts = {f"w{i}": int(n) for i, n in enumerate(rng.zipf(2.0, size=300).clip(1, 400))}
    out = plot_perfs_per_work(counts, tmp_path / "plots" / "hist.png", title="zipf")
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["hist.png"]
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (800, 500)
    with pytest.raises(ValueError, match="no works"):
        plot_perfs_per_work({}, tmp_path / "empty.png")


def test_query_in_ref_looks_up_by_perf(tmp_path: Path) -> None:
    # The reference looked the ref index up by *work* (KeyError); here work names never equal perf ids.
    query = write_catalog(tmp_path / "q.txt", [rec("x", "W"), rec("y", "W"), rec("z", "V")])
    ref = write_catalog(tmp_path / "r.txt", [rec("z", "V"), rec("q", "W"), rec("x", "W")])
    out = tmp_path / "query_in_ref.txt"
    pairs = write_query_in_ref(query, ref, out)
    assert pairs == [[0, 2], [2, 0]]
    assert json.loads(out.read_text()) == {"query_in_ref": [[0, 2], [2, 0]]}
    assert query_in_ref_pairs(["a", "b"], ["b", "b", "a"]) == [[0, 2], [1, 0]]  # first ref line of a perf


def test_query_in_ref_refuses_a_line_that_would_shift_indices(tmp_path: Path) -> None:
    query = write_catalog(tmp_path / "q.txt", [rec("x", "W")], ('{"work": "W"}',))
    ref = write_catalog(tmp_path / "r.txt", [rec("x", "W")])
    with pytest.raises(CatalogLineError, match="q.txt:2"):
        write_query_in_ref(query, ref, tmp_path / "out.txt")
    assert not (tmp_path / "out.txt").exists()


def test_catalog_histogram_asset_shows_the_png(tmp_path: Path) -> None:
    project = make_project(tmp_path, works=3, perfs=2, seconds=2.0)
    result = materialize(project, [data.dataset_catalog, tools.catalog_histogram])
    assert result.success
    metadata = {k: v.value for k, v in result.asset_materializations_for_node("catalog_histogram")[0].metadata.items()}
    assert (metadata["works"], metadata["perfs"], metadata["min_perfs"], metadata["max_perfs"]) == (3, 6, 2, 2)
    png = (project.dataset_dir / HISTOGRAM_FILE).read_bytes()
    prefix = "![performances per work](data:image/png;base64,"
    assert metadata["histogram"].startswith(prefix)
    assert base64.b64decode(metadata["histogram"][len(prefix):-1]) == png
    assert Image.open(io.BytesIO(png)).format == "PNG"


def test_cli_compare_histogram_and_query_in_ref(tmp_path: Path, capsys) -> None:
    a = write_catalog(tmp_path / "train.txt", [rec("p1", "w1"), rec("p2", "w1"), rec("p3", "w2")], ("{bad",))
    b = write_catalog(tmp_path / "test.txt", [rec("p3", "w2"), rec("p4", "w3")])
    assert csi(["compare", str(a), str(b), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["shared_perfs"], counts["shared_works"], counts["a"]["malformed"]) == (1, 1, 1)
    assert csi(["compare", str(a), str(tmp_path / "nope.txt")]) == 2
    assert "nope.txt: no such file" in capsys.readouterr().err
    out = tmp_path / "h.png"
    assert csi(["histogram", str(a), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "2 works, 3 performances, 1..2 per work" in printed and "train.txt:4" in printed and out.is_file()
    clean = write_catalog(tmp_path / "clean.txt", [rec("p1", "w1"), rec("p2", "w1"), rec("p3", "w2")])
    assert csi(["query-in-ref", str(b), str(clean), "--out", str(tmp_path / "qir.txt")]) == 0
    assert json.loads((tmp_path / "qir.txt").read_text()) == {"query_in_ref": [[0, 2]]}
    assert csi(["query-in-ref", str(a), str(b), "--out", str(tmp_path / "x.txt")]) == 2
    assert "train.txt:4" in capsys.readouterr().err
