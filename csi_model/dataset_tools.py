"""Catalog tools: leakage report between two catalogs, performances-per-work histogram, ``query_in_ref`` files
(as the reference tool's, with its query_in_ref look-up bug and its "screen only" histogram fixed).

They read catalogs for their ids only: no audio lookup, so a test set made on another machine can be compared
as it is. The histogram is a PNG file (the reference could only show it on screen).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

from csi_model.atomic import atomic_path, write_text_atomic
from csi_model.catalog import CatalogLineError, read_records, scan_records

HISTOGRAM_TICKS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 20, 30, 40, 50, 100, 200, 500)
"""The reference plot's x ticks (log axis)."""


@dataclass(frozen=True)
class CatalogIds:
    """The ``perf`` and ``work`` of every usable line of a catalog, and why the others were skipped."""

    path: Path
    perfs: list[str]
    works: list[str]
    malformed: list[str]  # "file:line: reason"

    @property
    def records(self) -> int:
        return len(self.perfs)


def read_catalog_ids(path: str | os.PathLike[str]) -> CatalogIds:
    """Every non-blank line with string ``perf`` and ``work`` fields; any other line is reported, not fatal."""
    path = Path(path)
    perfs, works, malformed = [], [], []
    for line_no, fields in scan_records(path):
        if isinstance(fields, CatalogLineError):
            malformed.append(str(fields))
            continue
        perf, work = fields.get("perf"), fields.get("work")
        if not isinstance(perf, str) or not isinstance(work, str) or not perf.strip() or not work.strip():
            malformed.append(f"{path}:{line_no}: needs non-empty string perf and work, got {perf!r} and {work!r}")
            continue
        perfs.append(perf.strip())
        works.append(work.strip())
    return CatalogIds(path, perfs, works, malformed)


# ---------------------------------------------------------------------------------------------------------------
# Overlap / leakage report


@dataclass(frozen=True)
class SideCounts:
    path: str
    records: int
    works: int
    perfs: int
    malformed: int
    exclusive_works: int
    exclusive_perfs: int


@dataclass(frozen=True)
class CatalogComparison:
    """Two catalogs side by side: what each holds, what they share (leakage if one trains and one tests)."""

    a: SideCounts
    b: SideCounts
    shared_works: list[str]
    shared_perfs: list[str]
    malformed: list[str]

    def to_dict(self) -> dict[str, object]:
        return {"a": vars(self.a), "b": vars(self.b), "shared_works": len(self.shared_works),
                "shared_perfs": len(self.shared_perfs), "malformed": self.malformed}

    def to_text(self, examples: int = 10) -> str:
        rows = [("records", "records"), ("unique works", "works"), ("unique perfs", "perfs"),
                ("works only here", "exclusive_works"), ("perfs only here", "exclusive_perfs"),
                ("malformed lines", "malformed")]
        width = max(len(label) for label, _ in rows)
        lines = [f"A: {self.a.path}", f"B: {self.b.path}", f"{'':{width}}  {'A':>10}  {'B':>10}"]
        lines += [f"{label:{width}}  {getattr(self.a, key):>10}  {getattr(self.b, key):>10}" for label, key in rows]
        lines += [f"shared works: {len(self.shared_works)}", f"shared perfs: {len(self.shared_perfs)}"]
        if self.shared_perfs:
            lines.append("  e.g. " + ", ".join(self.shared_perfs[:examples]))
        lines += [f"skipped {m}" for m in self.malformed]
        return "\n".join(lines)


def compare_catalogs(path_a: str | os.PathLike[str], path_b: str | os.PathLike[str]) -> CatalogComparison:
    a, b = read_catalog_ids(path_a), read_catalog_ids(path_b)
    works_a, works_b, perfs_a, perfs_b = set(a.works), set(b.works), set(a.perfs), set(b.perfs)

    def side(ids: CatalogIds, works: set[str], perfs: set[str], other_works: set[str],
             other_perfs: set[str]) -> SideCounts:
        return SideCounts(str(ids.path), ids.records, len(works), len(perfs), len(ids.malformed),
                          len(works - other_works), len(perfs - other_perfs))

    return CatalogComparison(
        side(a, works_a, perfs_a, works_b, perfs_b), side(b, works_b, perfs_b, works_a, perfs_a),
        sorted(works_a & works_b), sorted(perfs_a & perfs_b), a.malformed + b.malformed,
    )


# ---------------------------------------------------------------------------------------------------------------
# Performances per work


@dataclass(frozen=True)
class WorkSizeStats:
    works: int
    perfs: int
    min_perfs: int
    max_perfs: int
    most_common: int  # the most frequent number of performances per work
    single_perf_works: int


def perfs_per_work(perfs: Sequence[str], works: Sequence[str]) -> Counter[str]:
    """Distinct performances per work (a perf listed twice counts once, under its first work)."""
    return Counter(dict(zip(reversed(perfs), reversed(works))).values())


def work_size_stats(counts: Mapping[str, int]) -> WorkSizeStats:
    if not counts:
        raise ValueError("no works to describe: the catalog has no usable lines")
    sizes = np.fromiter(counts.values(), dtype=np.int64)
    return WorkSizeStats(len(sizes), int(sizes.sum()), int(sizes.min()), int(sizes.max()),
                         int(np.bincount(sizes).argmax()), int((sizes == 1).sum()))


def plot_perfs_per_work(counts: Mapping[str, int], out_path: str | os.PathLike[str], title: str = "") -> Path:
    """Histogram of performances per work (integer bins on a log x-axis with the reference's ticks), as a PNG."""
    stats = work_size_stats(counts)
    sizes = np.fromiter(counts.values(), dtype=np.int64)
    edges = np.arange(1, stats.max_perfs + 2) - 0.5  # one bar per integer count
    figure = Figure(figsize=(8, 5))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.hist(sizes, bins=edges, color="#4c72b0", edgecolor="white")
    axes.set_xscale("log")
    axes.set_xlim(0.5, stats.max_perfs + 0.5)
    axes.xaxis.set_major_locator(FixedLocator([t for t in HISTOGRAM_TICKS if t <= stats.max_perfs] or [1]))
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_locator(NullLocator())
    axes.set_xlabel("number of performances per work")
    axes.set_ylabel("works")
    axes.set_title(f"{title + ': ' if title else ''}{stats.works} works, {stats.perfs} performances "
                   f"(min {stats.min_perfs}, max {stats.max_perfs})")
    out_path = Path(out_path)
    with atomic_path(out_path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    return out_path


# ---------------------------------------------------------------------------------------------------------------
# query_in_ref


def query_in_ref_pairs(query_perfs: Sequence[str], ref_perfs: Sequence[str]) -> list[list[int]]:
    """``[i, j]`` for each query line i whose perf is ref line j (looked up by perf, one dict, fixed)."""
    ref_index: dict[str, int] = {}
    for j, perf in enumerate(ref_perfs):
        ref_index.setdefault(perf, j)
    return [[i, ref_index[perf]] for i, perf in enumerate(query_perfs) if perf in ref_index]


def catalog_perfs(path: str | os.PathLike[str]) -> list[str]:
    """The ``perf`` of every record in file order. Strict: an index file cannot skip a line without shifting
    every index after it, so a bad line is an error naming the file and line."""
    perfs = []
    for line_no, fields in read_records(path):
        perf = fields.get("perf")
        if not isinstance(perf, str) or not perf.strip():
            raise CatalogLineError(f"{path}:{line_no}: no perf field (got {perf!r})")
        perfs.append(perf.strip())
    return perfs


def write_query_in_ref(query_path: str | os.PathLike[str], ref_path: str | os.PathLike[str],
                       out_path: str | os.PathLike[str]) -> list[list[int]]:
    """Write ``{"query_in_ref": [[i, j], …]}`` (one line, the format evaluation reads) to ``out_path``."""
    pairs = query_in_ref_pairs(catalog_perfs(query_path), catalog_perfs(ref_path))
    write_text_atomic(out_path, json.dumps({"query_in_ref": pairs}) + "\n")
    return pairs
