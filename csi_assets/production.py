"""Production training: K folds stratified by work, each warm-started from the best checkpoint so far on a
geometric lr ladder, then a final run on all the data validated on the test split, in
``<training_dir>/production/`` from ``config/hparams_prod.yaml`` (else ``config/hparams.yaml``). The final model is
registered, not promoted unless asked; a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csi_assets.errors import RunFailed
from csi_assets.layouts import DatasetLayout, TrainingLayout
from csi_assets.progress import Log
from csi_assets.store import Store
from csi_assets.store import models as model_store
from csi_assets.store.records import FeatureTableRecord
from csi_assets.sweeps import dataset_items
from csi_assets.testsets import by_length, feature_item, retrieval_test_sets, split_items
from csi_assets.training_runs import (
    TrainingLog,
    best_model,
    steps_per_epoch,
    tempo_training_data,
    trained_contract,
    write_curves,
)
from csi_model.devices import pick_device
from csi_model.folds import PoolItem, ProductionResult, ProductionRun, StageResult
from csi_model.hparams import HParamsError, TrainingHParams, load_training_hparams, to_dict
from csi_model.identifiers import is_original_speed


def production_dir(training: TrainingLayout) -> Path:
    return training.root / "production"


def production_hparams(training: TrainingLayout, k_folds: int | None = None,
                       max_epochs: int | None = None) -> TrainingHParams:
    """``config/hparams_prod.yaml`` (else ``config/hparams.yaml``) with the run's overrides."""
    path = training.config_dir / "hparams_prod.yaml"
    hp = load_training_hparams(path) if path.exists() else training.hparams()
    changes = {k: v for k, v in (("k_folds", k_folds), ("max_epochs", max_epochs)) if v is not None}
    return dataclasses.replace(hp, **changes)


def production_pool(table: Sequence[FeatureTableRecord], mean_size: int,
                    stored_variants: bool = True) -> tuple[list[PoolItem], list]:
    """Folds cover every train and val performance long enough for the model at ``mean_size`` (all their tempo
    variants, unless ``stored_variants`` is False: feature-domain tempo); the final run validates on the test
    split's original recordings, the held-out data the folds never saw."""
    usable, _ = by_length([r for r in table if r.split in ("train", "val")], mean_size)
    pool = [PoolItem(feature_item(r), r.perf, is_original_speed(r.speed)) for r in usable
            if stored_variants or is_original_speed(r.speed)]
    return pool, split_items(table, mean_size).test


def stage_record(stage: StageResult) -> dict[str, Any]:
    return {"lr": stage.lr, "best_epoch": stage.best_epoch, "best_value": stage.best_value, "epochs": stage.epochs,
            "stopped_early": stage.stopped_early}


@dataclass(frozen=True)
class ProductionOutcome:
    model_id: str
    promoted: bool
    result: ProductionResult
    metrics: dict[str, Any]  # as registered: folds, final, lr_anchor, num_classes, device
    pool: dict[str, int]  # variants, performances, final_val
    curves: Path


def run_production(db: Store, dataset: DatasetLayout, training: TrainingLayout, log: Log,
                   k_folds: int | None = None, max_epochs: int | None = None,
                   promote: bool = False) -> ProductionOutcome:
    """Run the folds and the final run (resuming), register the final model (promoted with ``promote``).
    Raises :class:`RunFailed` for bad hparams or a dataset without train/val performances."""
    try:
        hp = production_hparams(training, k_folds, max_epochs)
    except HParamsError as err:
        raise RunFailed(str(err)) from None
    table = dataset_items(db, dataset, hp)
    data = tempo_training_data(dataset.hparams(), table, hp.mean_size, log)
    pool, final_val = production_pool(table, hp.mean_size, stored_variants=data.tempo_record["mode"] == "audio")
    if not pool:
        raise RunFailed(f"dataset {dataset.name!r} has no train/val performances: materialise data_splits")
    test_sets, _ = retrieval_test_sets(hp, table, training.root)
    labels = [p.item.work_id for p in pool] * (data.tempo.copies if data.tempo else 1)

    def progress(stage: str, stage_hp: TrainingHParams) -> TrainingLog:
        log.info(f"production stage {stage}: lr {stage_hp.learning_rate:.3g}, up to {stage_hp.max_epochs} epochs")
        return TrainingLog(log, steps_per_epoch(stage_hp, labels), 0, stage_hp.max_epochs)

    folder = production_dir(training)
    try:
        result = ProductionRun(hp, pool, final_val, folder, test_sets, pick_device(hp.device), progress,
                               tempo=data.tempo).run()
    except (HParamsError, ValueError) as err:
        raise RunFailed(str(err)) from None
    final = result.final_training
    _, loaded = best_model(result.hparams, final)
    model_id = model_store.model_id_for(f"{training.root.name}-production", loaded.fingerprint)
    metrics = {"folds": {f"fold {s.stage}": stage_record(s) for s in result.folds},
               "final": stage_record(result.final), "lr_anchor": result.anchor,
               "num_classes": final.num_classes, "device": final.device}
    model_store.register_model(
        db, model_id=model_id, dataset=dataset.name, training_dir=str(folder),
        checkpoint=str(final.best_checkpoint), epoch=final.best_epoch, fingerprint=loaded.fingerprint,
        hparams=to_dict(result.hparams), metrics=metrics, promote=promote,
        input_contract=trained_contract(dataset.hparams()))
    curves, _ = write_curves(folder, final.history, final.best_epoch)
    return ProductionOutcome(model_id, promote, result, metrics,
                             {"variants": len(pool), "performances": len(result.fold_of), "final_val": len(final_val)},
                             curves)
