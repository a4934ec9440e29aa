"""The performances-per-work histogram of a dataset's catalog in the store, saved next to the catalog: a look at
the catalog (how many works have one, two, ... performances), not a step of the pipeline."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from csi_assets.errors import RunFailed
from csi_assets.layouts import DatasetLayout
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store.records import PerformanceRecord
from csi_model.dataset_tools import perfs_per_work, plot_perfs_per_work, work_size_stats

HISTOGRAM_FILE = "perfs_per_work.png"


def histogram_markdown(path: Path) -> str:
    return f"![performances per work](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode('ascii')})"


def write_histogram(performances: Sequence[PerformanceRecord], out_path: Path, title: str) -> dict[str, Any]:
    """Plot the histogram of ``performances`` (rows with ``perf`` and ``work``) to ``out_path``; its statistics."""
    counts = perfs_per_work([p.perf for p in performances], [p.work for p in performances])
    stats = work_size_stats(counts)
    plot_perfs_per_work(counts, out_path, title)
    return dict(vars(stats))


def catalog_histogram(store: Store, dataset: DatasetLayout) -> tuple[dict[str, Any], Path]:
    """The histogram of the store's catalog of ``dataset`` as ``<dataset>/perfs_per_work.png``: (stats, path).
    Raises :class:`RunFailed` when the dataset has no performances."""
    performances = catalog_store.performances(store, dataset.name)
    if not performances:
        raise RunFailed(f"no performances of dataset {dataset.name!r}: materialize dataset_catalog")
    path = dataset.root / HISTOGRAM_FILE
    return write_histogram(performances, path, dataset.name), path
