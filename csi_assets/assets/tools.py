"""Group ``tools``: coarse alignment of the performances of each work, and the performances-per-work histogram.

Not part of the ``main`` job: the alignment needs a trained model and is only an input for a fine-alignment stage
that does not exist yet (the reference's was never released), and the histogram is a look at the catalog, not a
step of the pipeline. Both are materialised on demand (``dagster asset materialize --select alignments``, the
UI, or ``csi align``).
"""


import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from csi_assets.assets.data import cqt_features, dataset_catalog
from csi_assets.assets.serving import reference_rows
from csi_assets.assets.training import trained_model
from csi_assets.model_loading import LoadedModel, ModelLoadError, dataset_input, load_model
from csi_assets.progress import Progress
from csi_assets.resources import DatasetResource, StoreResource, TrainingResource
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_model.alignment import DEFAULT_HOP_S, DEFAULT_WINDOW_S, Alignment, TrackWindows, align_works, embed_windows
from csi_model.atomic import write_text_atomic
from csi_model.cqt import load_feature
from csi_model.dataset_tools import perfs_per_work, plot_perfs_per_work, work_size_stats

GROUP = "tools"
ALIGNMENT_FILE = "alignments.jsonl"
ALIGNMENT_META_FILE = "alignments.meta.json"
HISTOGRAM_FILE = "perfs_per_work.png"


class AlignmentConfig(dg.Config):
    window_s: float = DEFAULT_WINDOW_S
    hop_s: float = DEFAULT_HOP_S


@dataclass(frozen=True)
class AlignmentRun:
    alignments: list[Alignment]
    model_id: str
    window_s: float
    hop_s: float
    windows: int
    too_short: list[str]
    seconds: float

    def metadata(self) -> dict[str, Any]:
        distinct = np.array([a.shift_s for a in self.alignments if a.perf_i != a.perf_j])
        return {
            "model_id": self.model_id, "window_s": self.window_s, "hop_s": self.hop_s,
            "pairs": len(self.alignments), "distinct_pairs": int(distinct.size), "windows": self.windows,
            "zero_shift_share": round(float((distinct == 0).mean()), 4) if distinct.size else None,
            "median_abs_shift_s": float(np.median(np.abs(distinct))) if distinct.size else None,
            "too_short": self.too_short, "seconds": round(self.seconds, 2),
        }


def compute_alignments(store: Store, dataset: DatasetResource, model: LoadedModel, window_s: float, hop_s: float,
                       log: Any) -> AlignmentRun:
    """Shifts between every two original performances of each work (and each with itself), with ``model``."""
    start = time.monotonic()
    fps = dataset_input(model, dataset.hparams(), log).fps
    rows = reference_rows(store, dataset)  # the original recording of every performance with a feature
    embedder = model.embedder
    usable, short = embedder.split_by_length(rows, lambda r: r["n_frames"])
    too_short = sorted(r["perf"] for r in short)
    for perf in too_short:
        log.warning(f"{perf}: too short to align (fewer than {embedder.min_frames} CQT frames)")
    progress = Progress(log, f"embedding {window_s:g} s windows every {hop_s:g} s", len(usable), "tracks")
    tracks: list[TrackWindows] = []
    for batch, windows in embedder.batches(usable, lambda r: load_feature(r["feat"]),
                                           lambda features: embed_windows(embedder, features, fps, window_s, hop_s)):
        tracks += windows
        progress.advance(len(batch))
    alignments = align_works([r["perf"] for r in usable], [r["work_id"] for r in usable], tracks)
    return AlignmentRun(alignments, model.model_id, window_s, hop_s, sum(len(t.starts_s) for t in tracks),
                        too_short, time.monotonic() - start)


def write_alignments(folder: Path, run: AlignmentRun) -> Path:
    """JSON lines ``{"perf_i", "perf_j", "shift_s"}`` plus a sidecar with the model and window settings."""
    path = folder / ALIGNMENT_FILE
    write_text_atomic(path, "".join(json.dumps(a.to_dict(), ensure_ascii=False) + "\n" for a in run.alignments))
    write_text_atomic(folder / ALIGNMENT_META_FILE, json.dumps(run.metadata(), indent=2) + "\n")
    return path


@dg.asset(group_name=GROUP, deps=[trained_model, cqt_features], kinds={"pytorch", "json"})
def alignments(context: dg.AssetExecutionContext, config: AlignmentConfig, dataset: DatasetResource,
               training: TrainingResource, store: StoreResource) -> dg.MaterializeResult:
    """Coarse time offset (seconds) between every two performances of the same work, from the promoted model's
    embeddings of short overlapping windows; JSON lines in the training folder."""
    db = store.store()
    try:
        model = load_model(db, dataset.name)
    except ModelLoadError as err:
        raise dg.Failure(description=str(err)) from err
    try:
        run = compute_alignments(db, dataset, model, config.window_s, config.hop_s, context.log)
    except (ValueError, ModelLoadError) as err:
        raise dg.Failure(description=f"alignment failed: {err}") from err
    path = write_alignments(training.root, run)
    context.log.info(f"{len(run.alignments)} pairs from {run.windows} windows in {run.seconds:.1f} s -> {path}")
    return dg.MaterializeResult(metadata={**{k: v for k, v in run.metadata().items() if k != "too_short"},
                                          "too_short": dg.MetadataValue.json(run.too_short),
                                          "path": dg.MetadataValue.path(str(path))})


def histogram_markdown(path: Path) -> str:
    return f"![performances per work](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode('ascii')})"


def write_histogram(performances: Sequence[dict[str, Any]], out_path: Path, title: str) -> dict[str, Any]:
    counts = perfs_per_work([p["perf"] for p in performances], [p["work"] for p in performances])
    stats = work_size_stats(counts)
    plot_perfs_per_work(counts, out_path, title)
    return dict(vars(stats))


@dg.asset(group_name=GROUP, deps=[dataset_catalog], kinds={"matplotlib"})
def catalog_histogram(dataset: DatasetResource, store: StoreResource) -> dg.MaterializeResult:
    """Histogram of the number of performances per work in the store's catalog, saved next to the catalog."""
    performances = catalog_store.performances(store.store(), dataset.name)
    if not performances:
        raise dg.Failure(description=f"no performances of dataset {dataset.name!r}: materialize dataset_catalog")
    path = dataset.root / HISTOGRAM_FILE
    stats = write_histogram(performances, path, dataset.name)
    return dg.MaterializeResult(metadata={**stats, "path": dg.MetadataValue.path(str(path)),
                                          "histogram": dg.MetadataValue.md(histogram_markdown(path))})
