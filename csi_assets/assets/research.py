"""Group ``research``: hyper-parameter sweeps and production K-fold training.

Sweeps: ``sweep_plan`` reads ``<training_dir>/config/hp_tuning.yaml`` and registers one dynamic partition of
``sweep_runs`` per (value, seed). The plan is an asset rather than code run at definition time so that editing the
tuning file needs no code reload, a bad file fails one visible materialization (naming the file) instead of breaking
the whole code location, and the partition list is a recorded, versioned event. Each partition trains in
``<training_dir>/sweeps/<partition>/`` and leaves an ``outcome.json``; a backfill over the partitions runs them in
parallel. ``sweep_summary`` tabulates the outcomes (UI metadata and ``sweeps/summary.md``).

Production: ``production_model`` runs the K folds and the final run in ``<training_dir>/production/`` from
``config/hparams_prod.yaml`` (else ``config/hparams.yaml``) and registers the final model, not promoted unless
asked. Both resume where a killed run stopped.
"""

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import dagster as dg
import torch

from csi_assets.assets.data import cqt_features, data_splits
from csi_assets.assets.training import (TrainingLog, best_model, check_compatible, steps_per_epoch,
                                       tempo_training_data, trained_contract, write_curves)
from csi_assets.resources import DatasetResource, StoreResource, TrainingResource
from csi_assets.store import features as feature_store
from csi_assets.store import models as model_store
from csi_assets.testsets import feature_item, retrieval_test_sets, split_items
from csi_model.atomic import write_text_atomic
from csi_model.devices import pick_device
from csi_model.folds import PoolItem, ProductionRun, StageResult
from csi_model.hparams import HParamsError, TrainingHParams, load_training_hparams, to_dict
from csi_model.checkpoint import state_file_for
from csi_model.embedding import Embedder
from csi_model.evaluation import RetrievalTestSet, evaluate
from csi_model.identifiers import is_original_speed
from csi_model.model import CoverHunter
from csi_model.sweeps import (Experiment, RunOutcome, Tuning, experiment_hparams, load_tuning, markdown_table,
                              plan_experiments, summarise)
from csi_model.training import TrainingDiverged, TrainingResult, WarmStart, train
from csi_model.cqt import settings_for

GROUP = "research"
SWEEP_PARTITIONS = dg.DynamicPartitionsDefinition(name="sweep_experiments")
PLAN_FILE = "plan.json"
OUTCOME_FILE = "outcome.json"
SUMMARY_FILE = "summary.md"
BOOTSTRAP_DEFAULT = 1000


def tuning_path(training: TrainingResource) -> Path:
    return training.root / "config" / "hp_tuning.yaml"


def sweeps_dir(training: TrainingResource) -> Path:
    return training.root / "sweeps"


def _failure(err: Exception) -> dg.Failure:
    return dg.Failure(description=str(err))


def read_plan(training: TrainingResource) -> tuple[Tuning, list[Experiment]]:
    """The tuning file as planned: the plan asset re-reads it, runs and the summary use the same file."""
    try:
        tuning = load_tuning(tuning_path(training))
        return tuning, plan_experiments(tuning, training.hparams())
    except HParamsError as err:
        raise _failure(err) from None


@dg.asset(group_name=GROUP, kinds={"yaml"})
def sweep_plan(context: dg.AssetExecutionContext, training: TrainingResource) -> dg.MaterializeResult:
    """The experiments of ``config/hp_tuning.yaml``, registered as partitions of ``sweep_runs`` (stale ones are
    removed, their folders kept)."""
    tuning, experiments = read_plan(training)
    keys = [e.key for e in experiments]
    existing = set(context.instance.get_dynamic_partitions(SWEEP_PARTITIONS.name))
    for stale in sorted(existing - set(keys)):
        context.instance.delete_dynamic_partition(SWEEP_PARTITIONS.name, stale)
    context.instance.add_dynamic_partitions(SWEEP_PARTITIONS.name, [k for k in keys if k not in existing])
    rows = "\n".join(f"| {e.key} | {e.group} | {e.seed} | `{dict(e.factor)}` |" for e in experiments)
    context.log.info(f"{len(experiments)} experiment(s) from {tuning.source}")
    return dg.MaterializeResult(metadata={
        "experiments": len(experiments),
        "groups": dg.MetadataValue.json({g: len(v) for g, v in tuning.groups.items() if v}),
        "seeds": dg.MetadataValue.json(list(tuning.seeds or ())),
        "tuning_file": dg.MetadataValue.path(tuning.source),
        "run_settings": dg.MetadataValue.json(tuning.run_settings()),
        "plan": dg.MetadataValue.md("| partition | group | seed | sets |\n|---|---|---|---|\n" + rows),
    })


def dataset_items(dataset: DatasetResource, store: StoreResource, hp: TrainingHParams) -> list[dict[str, Any]]:
    """The dataset's feature table for these hparams, after checking the features fit the model."""
    data_hp = dataset.hparams()
    check_compatible(hp, data_hp)
    return feature_store.feature_table(store.store(), dataset.name, settings_for(data_hp).settings_hash())


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
        raise dg.Failure(description=f"{tuning.source}: foundation_checkpoint {generator} does not exist")
    state = state_file_for(generator)
    return WarmStart(generator, state if tuning.restore_optimizer_state and state.is_file() else None)


@dg.asset(group_name=GROUP, partitions_def=SWEEP_PARTITIONS, deps=[sweep_plan, data_splits, cqt_features],
          pool="training", kinds={"pytorch"})
def sweep_runs(context: dg.AssetExecutionContext, dataset: DatasetResource, training: TrainingResource,
               store: StoreResource) -> dg.MaterializeResult:
    """One sweep experiment (a group value at one seed), trained from the base hparams in its own folder; it
    resumes from its checkpoints. A diverged run is recorded as such, not failed: the sweep goes on."""
    tuning, experiments = read_plan(training)
    experiment = next((e for e in experiments if e.key == context.partition_key), None)
    if experiment is None:
        raise dg.Failure(description=f"{context.partition_key!r} is not in {tuning.source} any more; "
                                     "re-materialise sweep_plan")
    hp = experiment_hparams(training.hparams(), tuning, experiment)
    table = dataset_items(dataset, store, hp)
    data = tempo_training_data(dataset.hparams(), table, hp.mean_size, context.log)
    items = data.items
    test_sets, _ = retrieval_test_sets(hp, table, training.root)
    folder = sweeps_dir(training) / experiment.key
    warm = foundation_warm_start(tuning)
    if warm is not None and warm.state is None and tuning.restore_optimizer_state:
        context.log.warning(f"{tuning.foundation_checkpoint}: no matching do_ file; the optimizer starts cold")
    device = pick_device(hp.device)
    copies = data.tempo.copies if data.tempo else 1
    log = TrainingLog(context.log, steps_per_epoch(hp, [it.work_id for it in items.train], copies), 0, hp.max_epochs)
    started = time.monotonic()
    try:
        result = train(hp, items.train, folder, items.val, (), test_sets, device, log, run_id=experiment.key,
                       warm_start=warm, tempo=data.tempo)
    except TrainingDiverged as err:
        context.log.warning(f"{experiment.key}: {err}")
        outcome = outcome_of(experiment, None, time.monotonic() - started, error=str(err))
        write_text_atomic(folder / OUTCOME_FILE, outcome.to_json())
        return dg.MaterializeResult(metadata={"diverged": True, "error": str(err)})
    chosen = next((ts for ts in test_sets if ts.name == tuning.test_name), None)
    bootstrap = None
    if chosen is not None and hp.bootstrap > 0:
        model, _ = best_model(hp, result)
        bootstrap = bootstrap_map(model, chosen, hp, device, hp.bootstrap)
    outcome = outcome_of(experiment, result, time.monotonic() - started, bootstrap)
    write_text_atomic(folder / OUTCOME_FILE, outcome.to_json())
    curves, _ = write_curves(folder, result.history, result.best_epoch)
    final_map = outcome.mean_ap.get(tuning.test_name or "", [])
    return dg.MaterializeResult(metadata={
        "diverged": False,
        "group": experiment.group,
        "seed": experiment.seed,
        "sets": dg.MetadataValue.json(dict(experiment.factor)),
        "epochs": result.last_epoch + 1,
        "best_epoch": result.best_epoch,
        "final_val_loss": dg.MetadataValue.float(outcome.val_loss[-1][1]) if outcome.val_loss else "n/a",
        "final_mAP": dg.MetadataValue.float(final_map[-1][1]) if final_map else "n/a",
        "seconds": outcome.seconds,
        "folder": dg.MetadataValue.path(str(folder)),
        "curves_file": dg.MetadataValue.path(str(curves)),
    })


@dg.asset(group_name=GROUP, deps=[sweep_runs], kinds={"markdown"})
def sweep_summary(context: dg.AssetExecutionContext, training: TrainingResource) -> dg.MaterializeResult:
    """Per experiment, mean ± std over seeds of the final val loss and mAP, their slopes over the last
    ``early_stopping_patience`` epochs, the best value @ epoch, the bootstrap CI, and diverged seeds."""
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
        raise dg.Failure(description=f"no sweep run has finished yet under {folder}: materialise sweep_runs")
    summaries = summarise(outcomes, tuning.early_stopping_patience, tuning.test_name,
                          training.hparams().benchmark_testsets)
    table = markdown_table(summaries, tuning.test_name, tuning.early_stopping_patience)
    note = f"\nNot run yet: {', '.join(missing)}\n" if missing else ""
    text = f"# Sweep summary\n\nFrom `{tuning.source}`, {len(outcomes)} run(s).\n\n{table}{note}"
    write_text_atomic(folder / SUMMARY_FILE, text)
    context.log.info(text)
    return dg.MaterializeResult(metadata={
        "runs": len(outcomes), "experiments": len(summaries), "not_run": len(missing),
        "diverged_runs": sum(o.diverged for o in outcomes),
        "summary": dg.MetadataValue.md(table + note),
        "summary_file": dg.MetadataValue.path(str(folder / SUMMARY_FILE)),
    })


class ProductionConfig(dg.Config):
    """Run config of ``production_model``."""

    k_folds: Optional[int] = None
    """Override the hparams' ``k_folds`` (fixed for a training folder once its folds exist)."""
    max_epochs: Optional[int] = None
    """Override ``max_epochs`` (per fold and for the final run)."""
    promote: bool = False
    """Make the final model the dataset's promoted model."""


def production_hparams(training: TrainingResource, config: ProductionConfig) -> TrainingHParams:
    path = training.root / "config" / "hparams_prod.yaml"
    hp = load_training_hparams(path) if path.exists() else training.hparams()
    changes = {k: v for k, v in (("k_folds", config.k_folds), ("max_epochs", config.max_epochs)) if v is not None}
    return dataclasses.replace(hp, **changes)


def production_pool(table: Sequence[dict[str, Any]], mean_size: int,
                    stored_variants: bool = True) -> tuple[list[PoolItem], list]:
    """Folds cover every train and val performance long enough for the model at ``mean_size`` (all their tempo
    variants, unless ``stored_variants`` is False: feature-domain tempo); the final run validates on the test
    split's original recordings, the held-out data the folds never saw."""
    shortest = CoverHunter.min_raw_frames(mean_size)
    pool = [PoolItem(feature_item(r), r["perf"], is_original_speed(r["speed"])) for r in table
            if r["split"] in ("train", "val") and r["n_frames"] >= shortest
            and (stored_variants or is_original_speed(r["speed"]))]
    return pool, split_items(table, mean_size).test


def _stage_metadata(stage: StageResult) -> dict[str, Any]:
    return {"lr": stage.lr, "best_epoch": stage.best_epoch, "best_value": stage.best_value, "epochs": stage.epochs,
            "stopped_early": stage.stopped_early}


@dg.asset(group_name=GROUP, deps=[data_splits, cqt_features], pool="training", kinds={"pytorch"})
def production_model(context: dg.AssetExecutionContext, config: ProductionConfig, dataset: DatasetResource,
                     training: TrainingResource, store: StoreResource) -> dg.MaterializeResult:
    """K folds stratified by work (all variants of a performance in one fold), each warm-started from the best
    checkpoint so far on a geometric lr ladder, then a final run on all the data validated on the test split."""
    started = time.monotonic()
    try:
        hp = production_hparams(training, config)
    except HParamsError as err:
        raise _failure(err) from None
    table = dataset_items(dataset, store, hp)
    data = tempo_training_data(dataset.hparams(), table, hp.mean_size, context.log)
    pool, final_val = production_pool(table, hp.mean_size, stored_variants=data.tempo_record["mode"] == "audio")
    if not pool:
        raise dg.Failure(description=f"dataset {dataset.name!r} has no train/val performances: materialise "
                                     "data_splits")
    test_sets, _ = retrieval_test_sets(hp, table, training.root)
    labels = [p.item.work_id for p in pool] * (data.tempo.copies if data.tempo else 1)

    def progress(stage: str, stage_hp: TrainingHParams) -> TrainingLog:
        context.log.info(f"production stage {stage}: lr {stage_hp.learning_rate:.3g}, up to "
                         f"{stage_hp.max_epochs} epochs")
        return TrainingLog(context.log, steps_per_epoch(stage_hp, labels), 0, stage_hp.max_epochs)

    try:
        result = ProductionRun(hp, pool, final_val, training.root / "production", test_sets,
                               pick_device(hp.device), progress, tempo=data.tempo).run()
    except (HParamsError, ValueError) as err:
        raise _failure(err) from None
    model, loaded = best_model(result.hparams, result.final_training)
    model_id = model_store.model_id_for(f"{training.root.name}-production", loaded.fingerprint)
    final = result.final_training
    folds = {f"fold {s.stage}": _stage_metadata(s) for s in result.folds}
    metrics = {"folds": folds, "final": _stage_metadata(result.final), "lr_anchor": result.anchor,
               "num_classes": final.num_classes, "device": final.device}
    model_store.register_model(
        store.store(), model_id=model_id, dataset=dataset.name, training_dir=str(training.root / "production"),
        checkpoint=str(final.best_checkpoint), epoch=final.best_epoch, fingerprint=loaded.fingerprint,
        hparams=to_dict(result.hparams), metrics=metrics, promote=config.promote,
        input_contract=trained_contract(dataset.hparams()))
    curves, _ = write_curves(training.root / "production", final.history, final.best_epoch)
    rows = "\n".join(f"| {name} | {m['lr']:.3g} | {m['best_epoch']} | {m['best_value']} | {m['epochs']} |"
                     for name, m in {**folds, "final": metrics["final"]}.items())
    return dg.MaterializeResult(metadata={
        "model_id": model_id,
        "promoted": config.promote,
        "k_folds": len(result.folds),
        "lr_anchor": result.anchor if result.anchor is not None else "n/a",
        "stages": dg.MetadataValue.md("| stage | lr | best epoch | best value | epochs |\n|---|---|---|---|---|\n"
                                      + rows),
        "folds": dg.MetadataValue.json(folds),
        "final": dg.MetadataValue.json(metrics["final"]),
        "pool": dg.MetadataValue.json({"variants": len(pool), "performances": len(result.fold_of),
                                       "final_val": len(final_val)}),
        "checkpoint": dg.MetadataValue.path(str(final.best_checkpoint)),
        "curves_file": dg.MetadataValue.path(str(curves)),
        "wall_seconds": round(time.monotonic() - started, 1),
    })


sweep_job = dg.define_asset_job(
    "sweep", selection=dg.AssetSelection.assets(sweep_runs), partitions_def=SWEEP_PARTITIONS,
    description="One sweep experiment per partition (materialise sweep_plan first; backfill to run them all).")
production_job = dg.define_asset_job("production", selection=dg.AssetSelection.assets(production_model),
                                     description="Production K-fold training and the final model.")
