"""Coarse alignment of the performances of each work: the time offset between every two original performances
of a work (and each with itself), from a model's embeddings of short overlapping windows.

Only an input for a fine-alignment stage that does not exist yet (the reference's was never released), so it is
run on demand: the ``alignments`` asset or ``csi align``. Output: ``alignments.jsonl`` (one
``{"perf_i", "perf_j", "shift_s"}`` per line) and ``alignments.meta.json`` in the training folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from csi_assets.errors import RunFailed
from csi_assets.layouts import DatasetLayout
from csi_assets.model_loading import LoadedModel, ModelLoadError, dataset_input, load_model
from csi_assets.progress import Log, Progress
from csi_assets.references import reference_rows
from csi_assets.store import Store
from csi_model.alignment import Alignment, TrackWindows, align_works, embed_windows
from csi_model.atomic import write_text_atomic
from csi_model.cqt import load_feature

ALIGNMENT_FILE = "alignments.jsonl"
ALIGNMENT_META_FILE = "alignments.meta.json"


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


def compute_alignments(store: Store, dataset: DatasetLayout, model: LoadedModel, window_s: float, hop_s: float,
                       log: Log) -> AlignmentRun:
    """Shifts between every two original performances of each work (and each with itself), with ``model``."""
    start = time.monotonic()
    fps = dataset_input(model, dataset.hparams(), log).fps
    rows = reference_rows(store, dataset)
    embedder = model.embedder
    usable, short = embedder.split_by_length(rows, lambda r: r.n_frames)
    too_short = sorted(r.perf for r in short)
    for perf in too_short:
        log.warning(f"{perf}: too short to align (fewer than {embedder.min_frames} CQT frames)")
    progress = Progress(log, f"embedding {window_s:g} s windows every {hop_s:g} s", len(usable), "tracks")
    tracks: list[TrackWindows] = []
    for batch, windows in embedder.batches(usable, lambda r: load_feature(r.feat),
                                           lambda features: embed_windows(embedder, features, fps, window_s, hop_s)):
        tracks += windows
        progress.advance(len(batch))
    alignments = align_works([r.perf for r in usable], [r.work_id for r in usable], tracks)
    return AlignmentRun(alignments, model.model_id, window_s, hop_s, sum(len(t.starts_s) for t in tracks),
                        too_short, time.monotonic() - start)


def write_alignments(folder: Path, run: AlignmentRun) -> Path:
    """JSON lines ``{"perf_i", "perf_j", "shift_s"}`` plus a sidecar with the model and window settings."""
    path = folder / ALIGNMENT_FILE
    write_text_atomic(path, "".join(json.dumps(a.to_dict(), ensure_ascii=False) + "\n" for a in run.alignments))
    write_text_atomic(folder / ALIGNMENT_META_FILE, json.dumps(run.metadata(), indent=2) + "\n")
    return path


def align_dataset(store: Store, dataset: DatasetLayout, out_dir: Path, window_s: float, hop_s: float, log: Log,
                  model_id: str | None = None, device: str | None = None) -> tuple[AlignmentRun, Path]:
    """Align the dataset's performances with its promoted model (or ``model_id``) and write the files into
    ``out_dir``. Raises :class:`RunFailed` when the model cannot be loaded or the alignment fails."""
    try:
        model = load_model(store, dataset.name, model_id, device)
    except ModelLoadError as err:
        raise RunFailed(str(err)) from err
    try:
        run = compute_alignments(store, dataset, model, window_s, hop_s, log)
    except (ValueError, ModelLoadError) as err:
        raise RunFailed(f"alignment failed: {err}") from err
    path = write_alignments(out_dir, run)
    log.info(f"{len(run.alignments)} pairs from {run.windows} windows in {run.seconds:.1f} s -> {path}")
    return run, path
