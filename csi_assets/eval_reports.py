"""Evaluation reports: metrics, distance matrices and plots of the promoted model on its test sets.

One asset loops over the test sets rather than one partition per test set: the test sets are named in the
hyper-parameters the *model* was trained with, so they are known only once ``trained_model`` has run (static
partitions cannot list them, dynamic ones would need a sensor to register them before every evaluation), and
they usually share references, which one process embeds once. A test set's report is a folder of its own,
``<training_dir>/reports/<model_id>/<test_set>/``, and its metrics are a row of their own in ``evaluations``, so
nothing is lost by evaluating them together.

Every track is embedded by the model's ``Embedder`` (all segments, tail included) and two tracks are as far apart
as their nearest segment pair, the same rule identification ranks by (``csi_model.evaluation``). Queries with no
other performance of their work among the references cannot be answered: they are left out of every metric and
counted (``n_unanswerable``), and a test set without any answerable query fails the asset before anything is
embedded.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from csi_assets.errors import RunFailed
from csi_assets.layouts import DatasetLayout, TrainingLayout
from csi_assets.model_loading import LoadedModel, ModelLoadError, dataset_input, load_model
from csi_assets.progress import Log, Progress
from csi_assets.store import Store
from csi_assets.store import evaluations as evaluation_store
from csi_assets.store import features as feature_store
from csi_assets.store import splits as split_store
from csi_assets.store.records import FeatureTableRecord
from csi_assets.testsets import InvalidTestSet, require_answerable_test_sets, retrieval_test_sets, split_items
from csi_model.atomic import atomic_path, write_text_atomic
from csi_model.evaluation import RetrievalTestSet, evaluate
from csi_model.metrics import MetricInterval, RetrievalMetrics, min_segment_distance, self_match_mask
from csi_model.tsne_plot import plot_tsne

DEFAULT_BOOTSTRAP = 200
"""Bootstrap iterations when the hparams ask for none (``bootstrap: 0``): enough for stable 95 % percentiles."""
MAX_TSNE_TRACKS = 2000
"""t-SNE is quadratic and unreadable beyond a few thousand points; larger query sets plot a fixed sample."""
FALLBACK_TEST_SET = "test_split"


@dataclass(frozen=True)
class TestSetReport:
    name: str
    metrics: RetrievalMetrics
    intervals: dict[str, MetricInterval]
    n_refs: int
    folder: Path
    plot: Path
    seconds: float

    def record(self) -> dict[str, Any]:
        """What ``evaluations.metrics`` holds: point estimates, bootstrap intervals, sizes, time."""
        return {**self.metrics.to_dict(), "n_refs": self.n_refs, "seconds": round(self.seconds, 2),
                "bootstrap": {name: interval.to_dict() for name, interval in self.intervals.items()}}


def evaluate_test_set(model: LoadedModel, test_set: RetrievalTestSet, folder: Path, unseen_works: Collection[int],
                      n_bootstrap: int, log: Log) -> TestSetReport:
    """Embed, rank, score (with work-stratified bootstrap), plot and write one test set's report folder."""
    start = time.monotonic()
    progress = Progress(log, f"embedding test set {test_set.name}", len(test_set.tracks()), "tracks")
    evaluation = evaluate(model.embedder, test_set, progress=progress.advance)
    distances, excluded = evaluation.distances, test_set.exclusion_mask()
    query_labels, ref_labels = test_set.labels()
    intervals = evaluation.bootstrap(n_bootstrap)
    plot = folder / "tsne.png"
    _plot_queries(evaluation.query_vectors, query_labels, distances if test_set.refs is None else None, plot,
                  unseen_works, test_set.name)
    _save_array(folder / "distances.npy", np.where(excluded, np.float32(-1.0), distances))
    _save_array(folder / "excluded.npy", excluded)
    _save_array(folder / "query_labels.npy", query_labels)
    _save_array(folder / "ref_labels.npy", ref_labels)
    report = TestSetReport(test_set.name, evaluation.metrics, intervals, len(test_set.ref_items), folder, plot,
                           time.monotonic() - start)
    write_text_atomic(folder / "metrics.json", json.dumps(report.record(), indent=2))
    write_text_atomic(folder / "report.md", _markdown(report, model.model_id, "tsne.png"))
    return report


def _plot_queries(query_vectors: list[np.ndarray], labels: np.ndarray, square: np.ndarray | None, out: Path,
                  unseen_works: Collection[int], name: str) -> None:
    """t-SNE of the query tracks by their min-segment distances (the matrix itself for a self test set)."""
    keep = np.arange(len(labels))
    if len(keep) > MAX_TSNE_TRACKS:
        keep = np.sort(np.random.default_rng(0).choice(len(keep), MAX_TSNE_TRACKS, replace=False))
    if square is None or len(keep) < len(labels):
        square = min_segment_distance([query_vectors[i] for i in keep], [query_vectors[i] for i in keep])
    plot_tsne(square, labels[keep], out, unseen_works=unseen_works, excluded=self_match_mask(len(keep)),
              title=f"{name}: t-SNE of query tracks")


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as temporary:
        np.save(temporary, array)


METRIC_LABELS = {"mean_ap": "mAP", "mr1": "MR1", "hit_rate": "HR@1", "precision_at_10": "P@10"}


def metric_table(report: TestSetReport) -> str:
    rows = [f"| {label} | {report.intervals[key].point:.4f} | [{report.intervals[key].ci_low:.4f}, "
            f"{report.intervals[key].ci_high:.4f}] | {report.intervals[key].std:.4f} |"
            for key, label in METRIC_LABELS.items()]
    return "| metric | value | 95 % CI | std |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"


def scope(metrics: RetrievalMetrics) -> str:
    """Which queries the metrics are over, in words: the unanswerable ones are named as left out."""
    if not metrics.n_unanswerable:
        return f"{metrics.n_queries} queries"
    return (f"{metrics.n_queries} queries, of which {metrics.n_unanswerable} are unanswerable (no other "
            f"performance of their work among the references) and left out: metrics over {metrics.n_scored}")


def _markdown(report: TestSetReport, model_id: str, image: str) -> str:
    n_bootstrap = next(iter(report.intervals.values())).n_bootstrap
    return (f"# {report.name}: model {model_id}\n\n{scope(report.metrics)} against {report.n_refs} "
            f"references; distance = min cosine distance over segment pairs; 95 % CIs from a work-stratified "
            f"bootstrap of {n_bootstrap} iterations over the answerable queries.\n\n{metric_table(report)}\n"
            f"![t-SNE of the queries]({image})\n\n"
            "Files: `distances.npy` (queries × references, −1 = excluded cell), `excluded.npy`, `query_labels.npy`, "
            f"`ref_labels.npy` (work ids), `metrics.json`, `tsne.png`. Took {report.seconds:.1f} s.\n")


def inline_png(path: Path) -> str:
    return f"![t-SNE](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode('ascii')})"


def resolve_test_sets(model: LoadedModel, table: Sequence[FeatureTableRecord],
                      training_dir: Path) -> list[RetrievalTestSet]:
    """The test sets of the model's hparams; without any, the data split's test performances against each other."""
    try:
        test_sets, _ = retrieval_test_sets(model.hparams, table, training_dir)
    except InvalidTestSet as err:
        raise RunFailed(str(err)) from err
    if test_sets:
        return test_sets
    test_items = split_items(table, model.hparams.mean_size).test
    if not test_items:
        raise RunFailed("the model's hparams name no test set and the data split has no test performances: "
                        "nothing to evaluate")
    return [RetrievalTestSet(FALLBACK_TEST_SET, test_items)]


@dataclass(frozen=True)
class EvaluationRun:
    """The reports of one evaluation of a model: one per test set, in the order of its hparams."""

    model_id: str
    n_bootstrap: int
    reports: list[TestSetReport]
    folder: Path  # <training_dir>/reports/<model_id>


def evaluate_promoted(db: Store, dataset: DatasetLayout, training: TrainingLayout, log: Log) -> EvaluationRun:
    """Evaluate the dataset's promoted model on every test set of its hparams (else the split's test
    performances): a report folder per test set under ``<training_dir>/reports/<model_id>/`` and a row per test
    set in ``evaluations``. Raises :class:`RunFailed` when there is no usable model or no answerable test set."""
    try:
        model = load_model(db, dataset.name)
        dataset_input(model, dataset.hparams(), log)
    except ModelLoadError as err:
        raise RunFailed(str(err)) from err
    table = feature_store.feature_table(db, dataset.name, dataset.cqt_settings().settings_hash())
    test_sets = resolve_test_sets(model, table, training.root)
    try:
        require_answerable_test_sets(test_sets)  # before anything is embedded
    except InvalidTestSet as err:
        raise RunFailed(str(err)) from err
    unseen = set(split_store.unseen_works(db, dataset.name))
    n_bootstrap = model.hparams.bootstrap if model.hparams.bootstrap > 0 else DEFAULT_BOOTSTRAP
    folder = training.reports_dir / model.model_id
    reports = []
    for test_set in test_sets:
        report = evaluate_test_set(model, test_set, folder / test_set.name, unseen, n_bootstrap, log)
        evaluation_store.record_evaluation(db, dataset.name, model.model_id, test_set.name, report.record(),
                                           str(report.folder))
        log.info(f"{test_set.name}: mAP {report.metrics.mean_ap:.4f}, MR1 {report.metrics.mr1:.2f}, "
                 f"HR@1 {report.metrics.hit_rate:.4f} over {scope(report.metrics)}, {report.seconds:.1f} s")
        reports.append(report)
    return EvaluationRun(model.model_id, n_bootstrap, reports, folder)
