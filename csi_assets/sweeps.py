"""Hyper-parameter sweeps: the experiments of ``<training_dir>/config/hp_tuning.yaml``, one training run per
(value, seed) in ``<training_dir>/sweeps/<experiment>/`` leaving an ``outcome.json``, and their summary.

The Dagster layer registers one dynamic partition per experiment (``sweep_plan``), runs each partition
(``sweep_runs``, resumable from its checkpoints) and tabulates the outcomes (``sweep_summary``, also written to
``sweeps/summary.md``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from csi_assets.errors import RunFailed
from csi_assets.layouts import DatasetLayout, TrainingLayout
from csi_assets.progress import Log
from csi_assets.store import Store
from csi_assets.store import features as feature_store
from csi_assets.store.records import FeatureTableRecord
from csi_assets.testsets import retrieval_test_sets
from csi_assets.training_runs import (
    TrainingLog,
    best_model,
    check_compatible,
    steps_per_epoch,
    tempo_training_data,
    write_curves,
)
from csi_model.atomic import write_text_atomic
from csi_model.checkpoint import state_file_for
from csi_model.cqt import settings_for
from csi_model.devices import pick_device
from csi_model.embedding import Embedder
from csi_model.evaluation import RetrievalTestSet, evaluate
from csi_model.hparams import HParamsError, TrainingHParams
from csi_model.model import CoverHunter
from csi_model.sweeps import (
    Experiment,
    RunOutcome,
    Tuning,
    experiment_hparams,
    load_tuning,
    markdown_table,
    plan_experiments,
    summarise,
)
from csi_model.training import TrainingDiverged, TrainingResult, WarmStart, train

OUTCOME_FILE = "outcome.json"
SUMMARY_FILE = "summary.md"


def tuning_path(training: TrainingLayout) -> Path:
    return training.config_dir / "hp_tuning.yaml"


def sweeps_dir(training: TrainingLayout) -> Path:
    return training.root / "sweeps"


def read_plan(training: TrainingLayout) -> tuple[Tuning, list[Experiment]]:
    """The tuning file as planned: the plan re-reads it, runs and the summary use the same file."""
    try:
        tuning = load_tuning(tuning_path(training))
        return tuning, plan_experiments(tuning, training.hparams())
    except HParamsError as err:
        raise RunFailed(str(err)) from None


def plan_markdown(experiments: Sequence[Experiment]) -> str:
    rows = "\n".join(f"| {e.key} | {e.group} | {e.seed} | `{dict(e.factor)}` |" for e in experiments)
    return "| partition | group | seed | sets |\n|---|---|---|---|\n" + rows


def dataset_items(db: Store, dataset: DatasetLayout, hp: TrainingHParams) -> list[FeatureTableRecord]:
    """The dataset's feature table for these hparams, after checking the features fit the model."""
    data_hp = dataset.hparams()
    check_compatible(hp, data_hp)
    return feature_store.feature_table(db, dataset.name, settings_for(data_hp).settings_hash())


def bootstrap_map(model: CoverHunter, test_set: RetrievalTestSet, hp: TrainingHParams, device: torch.device,
                  n_bootstrap: int) -> dict[str, float]:
    """Work-stratified bootstrap CI of one test set's mAP for ``model``, over its answerable queries; also
    how many queries had no match to find (left out of the mAP)."""
    evaluation = evaluate(Embedder.for_hparams(model, hp, device), test_set)
    interval = evaluation.bootstrap(n_bootstrap)["mean_ap"]
    return {"ci_low": interval.ci_low, "ci_high": interval.ci_high, "std": interval.std,
            "n_unanswerable": evaluation.metrics.n_unanswerable}


def outcome_of(experiment: Experiment, result: TrainingResult | None, seconds: float,
               bootstrap: dict[str, float] | None = None, error: str | None = None) -> RunOutcome:
    history = result.history if result else []
    names = sorted({n for r in history for n in r.mean_ap})
    return RunOutcome(
        key=experiment.key, name=experiment.name, seed=experiment.seed, diverged=result is None,
        val_loss=[(r.epoch, r.val["foc_loss"]) for r in history if "foc_loss" in r.val],
        mean_ap={n: [(r.epoch, r.mean_ap[n]) for r in history if n in r.mean_ap] for n in names},
        seconds=round(seconds, 2), bootstrap=bootstrap, error=error,
    )


def foundation_warm_start(tuning: Tuning) -> WarmStart | None:
    """``foundation_checkpoint`` (a g_ file), with its do_ file when ``restore_optimizer_state``; a missing do_
    file means a cold optimizer, as in the reference (logged by the caller)."""
    if not tuning.foundation_checkpoint:
        return None
    generator = Path(tuning.foundation_checkpoint).expanduser()
    if not generator.is_file():
        raise RunFailed(f"{tuning.source}: foundation_checkpoint {generator} does not exist")
    state = state_file_for(generator)
    return WarmStart(generator, state if tuning.restore_optimizer_state and state.is_file() else None)


@dataclass(frozen=True)
class ExperimentRun:
    """One sweep experiment as run: its outcome (also in ``outcome.json``), and unless it diverged its training."""

    experiment: Experiment
    outcome: RunOutcome
    folder: Path
    result: TrainingResult | None  # None: diverged (``outcome.error`` says how)
    curves: Path | None
    test_name: str | None


def run_experiment(db: Store, dataset: DatasetLayout, training: TrainingLayout, key: str, log: Log) -> ExperimentRun:
    """Train the experiment ``key`` of the tuning file from the base hparams in its own folder (resuming from its
    checkpoints). A diverged run is recorded as such, not raised: the sweep goes on."""
    tuning, experiments = read_plan(training)
    experiment = next((e for e in experiments if e.key == key), None)
    if experiment is None:
        raise RunFailed(f"{key!r} is not in {tuning.source} any more; re-materialise sweep_plan")
    hp = experiment_hparams(training.hparams(), tuning, experiment)
    table = dataset_items(db, dataset, hp)
    data = tempo_training_data(dataset.hparams(), table, hp.mean_size, log)
    items = data.items
    test_sets, _ = retrieval_test_sets(hp, table, training.root)
    folder = sweeps_dir(training) / experiment.key
    warm = foundation_warm_start(tuning)
    if warm is not None and warm.state is None and tuning.restore_optimizer_state:
        log.warning(f"{tuning.foundation_checkpoint}: no matching do_ file; the optimizer starts cold")
    device = pick_device(hp.device)
    copies = data.tempo.copies if data.tempo else 1
    progress = TrainingLog(log, steps_per_epoch(hp, [it.work_id for it in items.train], copies), 0, hp.max_epochs)
    started = time.monotonic()
    try:
        result = train(hp, items.train, folder, items.val, (), test_sets, device, progress, run_id=experiment.key,
                       warm_start=warm, tempo=data.tempo)
    except TrainingDiverged as err:
        log.warning(f"{experiment.key}: {err}")
        outcome = outcome_of(experiment, None, time.monotonic() - started, error=str(err))
        write_text_atomic(folder / OUTCOME_FILE, outcome.to_json())
        return ExperimentRun(experiment, outcome, folder, None, None, tuning.test_name)
    chosen = next((ts for ts in test_sets if ts.name == tuning.test_name), None)
    bootstrap = None
    if chosen is not None and hp.bootstrap > 0:
        model, _ = best_model(hp, result)
        bootstrap = bootstrap_map(model, chosen, hp, device, hp.bootstrap)
    outcome = outcome_of(experiment, result, time.monotonic() - started, bootstrap)
    write_text_atomic(folder / OUTCOME_FILE, outcome.to_json())
    curves, _ = write_curves(folder, result.history, result.best_epoch)
    return ExperimentRun(experiment, outcome, folder, result, curves, tuning.test_name)


@dataclass(frozen=True)
class SweepSummary:
    outcomes: list[RunOutcome]
    experiments: int  # experiments summarised (seeds pooled)
    missing: list[str]  # experiment keys without an outcome yet
    table: str  # markdown
    path: Path  # sweeps/summary.md

    @property
    def note(self) -> str:
        return f"\nNot run yet: {', '.join(self.missing)}\n" if self.missing else ""


def summarise_sweep(training: TrainingLayout, log: Log) -> SweepSummary:
    """Per experiment, mean ± std over seeds of the final val loss and mAP, their slopes over the last
    ``early_stopping_patience`` epochs, the best value @ epoch, the bootstrap CI, and diverged seeds; written to
    ``sweeps/summary.md``. Raises :class:`RunFailed` when no run has finished."""
    tuning, experiments = read_plan(training)
    folder = sweeps_dir(training)
    outcomes, missing = [], []
    for experiment in experiments:
        path = folder / experiment.key / OUTCOME_FILE
        if path.exists():
            outcomes.append(RunOutcome.from_json(path.read_text()))
        else:
            missing.append(experiment.key)
    if not outcomes:
        raise RunFailed(f"no sweep run has finished yet under {folder}: materialise sweep_runs")
    summaries = summarise(outcomes, tuning.early_stopping_patience, tuning.test_name,
                          training.hparams().benchmark_testsets)
    table = markdown_table(summaries, tuning.test_name, tuning.early_stopping_patience)
    summary = SweepSummary(outcomes, len(summaries), missing, table, folder / SUMMARY_FILE)
    text = f"# Sweep summary\n\nFrom `{tuning.source}`, {len(outcomes)} run(s).\n\n{table}{summary.note}"
    write_text_atomic(summary.path, text)
    log.info(text)
    return summary
