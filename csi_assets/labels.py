"""Musical categories beyond cover songs: the labels a dataset names (``labels:`` in its data hparams) and the
label probe -- how much the promoted CSI model's embedding already knows about a label of the catalog.

A label's values come from the store (``performance_labels``, filled by ``dataset_catalog`` and ingestion); a
performance whose value is missing is left out and counted. Probe reports go to
``<training_dir>/reports/<model_id>/labels/<label>/``. Training the network with a label as its class is
:mod:`csi_assets.label_model`. ``python -m csi_assets.labels`` prints the configured labels (``make demo`` loops
over them).
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csi_assets import locations
from csi_assets.classify import PROBE_FILE, probe_file
from csi_assets.errors import RunFailed
from csi_assets.layouts import DatasetLayout, TrainingLayout
from csi_assets.progress import Log
from csi_assets.references import perf_vectors
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import embeddings as embedding_store
from csi_assets.store import models as model_store
from csi_model.atomic import write_text_atomic
from csi_model.label_probe import (
    KNN_NEIGHBOURS,
    METRICS,
    PROBES,
    ProbeDataError,
    ProbeResult,
    confusion_png,
    fit_linear,
    label_map_png,
    probe_label,
)


def configured_labels(dataset_dir: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """The ``labels:`` of a dataset's hparams (default: ``$CSI_DATASET_DIR``); none when they cannot be read --
    the data assets report that error when they run, and the definitions still load."""
    return DatasetLayout.at(dataset_dir or locations.dataset_dir()).labels()


@dataclass(frozen=True)
class LabelledPerformances:
    """The performances a label can be probed on, in ``stored.perfs`` order, and what was left out."""

    perfs: np.ndarray  # [P] perf ids
    works: np.ndarray  # [P] work ids
    values: np.ndarray  # [P] label values
    vectors: np.ndarray  # [P, D] unit performance vectors
    counts: dict[str, int]


def labelled_performances(db: Store, dataset: str, model_id: str, label: str) -> LabelledPerformances:
    """Join the label's stored values with the model's stored embeddings (one vector per performance: the mean of
    its unit segment vectors, renormalised). Raises :class:`RunFailed` when the label was never catalogued."""
    values = catalog_store.performance_labels(db, dataset, label)
    if not values:
        raise RunFailed(f"no values of label {label!r} in the store for dataset {dataset!r}: list it under "
                        "`labels:` in the data hparams and materialize dataset_catalog")
    stored = embedding_store.load_embeddings(db, dataset, model_id)
    vectors = perf_vectors(stored)
    keep = np.array([values.get(perf) is not None for perf in stored.perfs.tolist()], dtype=bool)
    with_value = sum(v is not None for v in values.values())
    counts = {"catalogued": len(values), "missing_value": len(values) - with_value,
              "with_value_not_embedded": with_value - int(keep.sum()), "with_value_and_embedding": int(keep.sum())}
    return LabelledPerformances(stored.perfs[keep], stored.work_ids[keep],
                                np.array([values[p] for p in stored.perfs[keep].tolist()], dtype=str),
                                vectors[keep], counts)


def write_probe_report(folder: Path, label: str, model_id: str, data: LabelledPerformances,
                       result: ProbeResult, seed: int) -> dict[str, Path]:
    """metrics.json, report.md, confusion.png, tsne.png, predictions.csv and the fitted probe (probe.npz)."""
    kept = result.kept
    files = {name: folder / name for name in ("metrics.json", "report.md", "confusion.png", "tsne.png",
                                              "predictions.csv", PROBE_FILE)}
    fit_linear(data.vectors[kept], result.y_true, result.classes, seed).save(files[PROBE_FILE])
    confusion_png(result.y_true, result.predictions["logistic"], result.classes, files["confusion.png"],
                  f"{label}: logistic probe, out-of-fold")
    label_map_png(data.vectors, data.values, files["tsne.png"], f"{label}: t-SNE of embeddings ({model_id})")
    classes = np.asarray(result.classes)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["perf", "work_id", "value", "logistic", "knn"])
    writer.writerows(zip(data.perfs[kept], data.works[kept], data.values[kept],
                         classes[result.predictions["logistic"]], classes[result.predictions["knn"]]))
    write_text_atomic(files["predictions.csv"], table.getvalue())
    record = {"label": label, "model_id": model_id, "counts": data.counts, **result.record()}
    write_text_atomic(files["metrics.json"], json.dumps(record, indent=2, ensure_ascii=False))
    write_text_atomic(files["report.md"], probe_markdown(label, model_id, data.counts, result))
    return files


def score_table(result: ProbeResult) -> str:
    rows = [f"| {probe} | " + " | ".join(f"{result.scores[probe][m].point:.3f} [{result.scores[probe][m].ci_low:.3f}, "
                                         f"{result.scores[probe][m].ci_high:.3f}]" for m in METRICS) + " |"
            for probe in PROBES]
    return ("| probe | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS) + "\n" + "\n".join(rows) + "\n")


def probe_markdown(label: str, model_id: str, counts: dict[str, int], result: ProbeResult) -> str:
    left_out = ", ".join(f"{v!r} ({n})" for v, n in result.left_out.items()) or "none"
    return (f"# Label probe: {label} (model {model_id})\n\n**{result.verdict}**\n\n"
            f"{score_table(result)}\n"
            f"Probes: logistic regression and a {KNN_NEIGHBOURS}-nearest-neighbour vote (cosine) on one vector per "
            "performance (the mean of its unit segment embeddings, renormalised); majority = always the most frequent "
            f"value (balanced accuracy 1/K). {result.n_folds}-fold cross-validation grouped by work (no work in both "
            f"training and test), {result.n_works} works; 95 % intervals from a bootstrap over works.\n\n"
            f"Performances: {counts['catalogued']} catalogued, {counts['missing_value']} without a value, "
            f"{counts['with_value_not_embedded']} with a value but no embedding, {len(result.y_true)} probed; "
            f"values of a single work left out: {left_out}.\n\n"
            "![confusion](confusion.png)\n\n![t-SNE](tsne.png)\n")


@dataclass(frozen=True)
class ProbeRun:
    model_id: str
    data: LabelledPerformances
    result: ProbeResult
    files: dict[str, Path]  # the report's files by name (see write_probe_report)


def run_label_probe(db: Store, dataset: DatasetLayout, training: TrainingLayout, label: str, log: Log) -> ProbeRun:
    """Probe ``label`` in the promoted model's stored embeddings and write the report folder. Raises
    :class:`RunFailed` for a label the dataset does not configure, without a promoted model, without stored values,
    or when the values cannot be probed."""
    dataset.require_label(label)
    model = model_store.promoted_model(db, dataset.name)
    if model is None:
        raise RunFailed(f"no promoted model for dataset {dataset.name!r}: materialize trained_model and "
                        "reference_embeddings first")
    model_id = model.model_id
    data = labelled_performances(db, dataset.name, model_id, label)
    seed = dataset.hparams().seed
    try:
        result = probe_label(data.vectors, data.values, data.works, seed=seed)
    except ProbeDataError as err:
        raise RunFailed(f"label {label!r} cannot be probed: {err} ({data.counts})") from err
    files = write_probe_report(probe_file(training.root, model_id, label).parent, label, model_id, data, result, seed)
    log.info(f"{label}: {result.verdict}")
    return ProbeRun(model_id, data, result, files)


if __name__ == "__main__":  # `make demo` loops over the labels to probe
    print(" ".join(configured_labels()))
