"""Group ``research``: hyper-parameter sweeps (:mod:`csi_assets.sweeps`) and production K-fold training
(:mod:`csi_assets.production`).

``sweep_plan`` reads the dataset's ``<training_dir>/config/hp_tuning.yaml`` and registers one experiment per
(value, seed): ``sweep_runs`` is partitioned by (dataset, experiment). The plan is an asset rather than code run at
definition time so that editing the tuning file needs no code reload, a bad file fails one visible materialization
(naming the file) instead of breaking the whole code location, and the partition list is a recorded, versioned
event. A backfill over the dataset's experiments runs them in parallel; ``sweep_summary`` tabulates the outcomes.
"""

import time

import dagster as dg

from csi_assets.assets.data import cqt_features, data_splits
from csi_assets.assets.upstream import failures
from csi_assets.dataset_folders import training_folder
from csi_assets.errors import RunFailed
from csi_assets.partitions import (
    EXPERIMENT,
    dataset_experiments,
    dataset_of,
    datasets,
    key_part,
    sweep_experiments,
    training_of,
)
from csi_assets.production import run_production
from csi_assets.resources import DatasetResource, StoreResource, TrainingResource
from csi_assets.sweeps import plan_markdown, read_plan, run_experiment, summarise_sweep

GROUP = "research"


def _planned_elsewhere(instance: dg.DagsterInstance, training: TrainingResource, store: StoreResource,
                       dataset: str) -> set[str]:
    """The experiments the other registered datasets' tuning files name (an unreadable file names none)."""
    keys: set[str] = set()
    for other in instance.get_dynamic_partitions(datasets.name):
        try:
            if other != dataset:
                folder = training_folder(store.store(), other, training.training_dir, training.dataset_name)
                keys |= {e.key for e in read_plan(folder)[1]}
        except RunFailed:
            continue
    return keys


@dg.asset(group_name=GROUP, partitions_def=datasets, kinds={"yaml"})
def sweep_plan(context: dg.AssetExecutionContext, training: TrainingResource,
               store: StoreResource) -> dg.MaterializeResult:
    """The experiments of the dataset's ``config/hp_tuning.yaml``, registered as the experiments of ``sweep_runs``
    (those no dataset's plan names any more are removed, their folders kept)."""
    with failures():
        tuning, experiments = read_plan(training_of(context, training, store))
    keys = [e.key for e in experiments]
    instance = context.instance
    existing = set(instance.get_dynamic_partitions(sweep_experiments.name))
    for stale in sorted(existing - set(keys) - _planned_elsewhere(instance, training, store, key_part(context))):
        instance.delete_dynamic_partition(sweep_experiments.name, stale)
    instance.add_dynamic_partitions(sweep_experiments.name, [k for k in keys if k not in existing])
    context.log.info(f"{len(experiments)} experiment(s) from {tuning.source}")
    return dg.MaterializeResult(metadata={
        "experiments": len(experiments),
        "groups": dg.MetadataValue.json({g: len(v) for g, v in tuning.groups.items() if v}),
        "seeds": dg.MetadataValue.json(list(tuning.seeds or ())),
        "tuning_file": dg.MetadataValue.path(tuning.source),
        "run_settings": dg.MetadataValue.json(tuning.run_settings()),
        "plan": dg.MetadataValue.md(plan_markdown(experiments)),
    })


@dg.asset(group_name=GROUP, partitions_def=dataset_experiments, deps=[sweep_plan, data_splits, cqt_features],
          pool="training", kinds={"pytorch"})
def sweep_runs(context: dg.AssetExecutionContext, dataset: DatasetResource, training: TrainingResource,
               store: StoreResource) -> dg.MaterializeResult:
    """One sweep experiment (a group value at one seed), trained from the base hparams in its own folder; it
    resumes from its checkpoints. A diverged run is recorded as such, not failed: the sweep goes on."""
    with failures():
        run = run_experiment(store.store(), dataset_of(context, dataset, store), training_of(context, training, store),
                             key_part(context, EXPERIMENT), context.log)
    outcome, result = run.outcome, run.result
    if result is None:
        return dg.MaterializeResult(metadata={"diverged": True, "error": outcome.error or ""})
    final_map = outcome.mean_ap.get(run.test_name or "", [])
    return dg.MaterializeResult(metadata={
        "diverged": False,
        "group": run.experiment.group,
        "seed": run.experiment.seed,
        "sets": dg.MetadataValue.json(dict(run.experiment.factor)),
        "epochs": result.last_epoch + 1,
        "best_epoch": result.best_epoch,
        "final_val_loss": dg.MetadataValue.float(outcome.val_loss[-1][1]) if outcome.val_loss else "n/a",
        "final_mAP": dg.MetadataValue.float(final_map[-1][1]) if final_map else "n/a",
        "seconds": outcome.seconds,
        "folder": dg.MetadataValue.path(str(run.folder)),
        "curves_file": dg.MetadataValue.path(str(run.curves)),
    })


@dg.asset(group_name=GROUP, partitions_def=datasets, deps=[sweep_runs], kinds={"markdown"})
def sweep_summary(context: dg.AssetExecutionContext, training: TrainingResource,
                  store: StoreResource) -> dg.MaterializeResult:
    """Per experiment, mean ± std over seeds of the final val loss and mAP, their slopes over the last
    ``early_stopping_patience`` epochs, the best value @ epoch, the bootstrap CI, and diverged seeds."""
    with failures():
        summary = summarise_sweep(training_of(context, training, store), context.log)
    return dg.MaterializeResult(metadata={
        "runs": len(summary.outcomes), "experiments": summary.experiments, "not_run": len(summary.missing),
        "diverged_runs": sum(o.diverged for o in summary.outcomes),
        "summary": dg.MetadataValue.md(summary.table + summary.note),
        "summary_file": dg.MetadataValue.path(str(summary.path)),
    })


class ProductionConfig(dg.Config):
    """Run config of ``production_model``."""

    k_folds: int | None = None
    """Override the hparams' ``k_folds`` (fixed for a training folder once its folds exist)."""
    max_epochs: int | None = None
    """Override ``max_epochs`` (per fold and for the final run)."""
    promote: bool = False
    """Make the final model the dataset's promoted model."""


@dg.asset(group_name=GROUP, partitions_def=datasets, deps=[data_splits, cqt_features], pool="training",
          kinds={"pytorch"})
def production_model(context: dg.AssetExecutionContext, config: ProductionConfig, dataset: DatasetResource,
                     training: TrainingResource, store: StoreResource) -> dg.MaterializeResult:
    """K folds stratified by work (all variants of a performance in one fold), each warm-started from the best
    checkpoint so far on a geometric lr ladder, then a final run on all the data validated on the test split."""
    started = time.monotonic()
    with failures():
        run = run_production(store.store(), dataset_of(context, dataset, store), training_of(context, training, store),
                             context.log, config.k_folds, config.max_epochs, config.promote)
    stages = {**run.metrics["folds"], "final": run.metrics["final"]}
    rows = "\n".join(f"| {name} | {m['lr']:.3g} | {m['best_epoch']} | {m['best_value']} | {m['epochs']} |"
                     for name, m in stages.items())
    return dg.MaterializeResult(metadata={
        "model_id": run.model_id,
        "promoted": run.promoted,
        "k_folds": len(run.result.folds),
        "lr_anchor": run.result.anchor if run.result.anchor is not None else "n/a",
        "stages": dg.MetadataValue.md("| stage | lr | best epoch | best value | epochs |\n|---|---|---|---|---|\n"
                                      + rows),
        "folds": dg.MetadataValue.json(run.metrics["folds"]),
        "final": dg.MetadataValue.json(run.metrics["final"]),
        "pool": dg.MetadataValue.json(run.pool),
        "checkpoint": dg.MetadataValue.path(str(run.result.final_training.best_checkpoint)),
        "curves_file": dg.MetadataValue.path(str(run.curves)),
        "wall_seconds": round(time.monotonic() - started, 1),
    })
