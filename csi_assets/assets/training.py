"""Group ``training``: the CoverHunter model trained on the splits, registered and promoted in the store
(the run itself: :mod:`csi_assets.training_runs`)."""

import base64
import time

import dagster as dg

from csi_assets.assets.data import cqt_features, data_splits
from csi_assets.assets.upstream import failures
from csi_assets.partitions import dataset_check, dataset_of, datasets, key_part, training_of
from csi_assets.resources import DatasetResource, StoreResource, TrainingResource
from csi_assets.training_runs import check_promoted_checkpoint, run_training

GROUP = "training"


class TrainingConfig(dg.Config):
    """Run config of ``trained_model``."""

    promote: bool = True
    """Make the trained model the dataset's promoted model (the one serving and evaluation use)."""
    max_epochs: int | None = None
    """Override the hparams' ``max_epochs`` (e.g. to continue a finished run for more epochs)."""


@dg.asset(group_name=GROUP, partitions_def=datasets, deps=[data_splits, cqt_features], pool="training",
          kinds={"pytorch"})
def trained_model(context: dg.AssetExecutionContext, config: TrainingConfig, dataset: DatasetResource,
                  training: TrainingResource, store: StoreResource) -> dg.MaterializeResult:
    """Checkpoints, the promoted best checkpoint, TensorBoard logs and the training history: the best epoch's
    checkpoint (lowest validation loss, or best mAP with ``early_stop_metric: mAP``) is registered."""
    started = time.monotonic()
    layout, folder = dataset_of(context, dataset, store), training_of(context, training, store)
    with failures():
        run = run_training(store.store(), layout, folder, context.log, config.promote,
                           config.max_epochs)
    result, metrics, items = run.result, run.metrics, run.data.items
    counts = metrics["parameters"]
    return dg.MaterializeResult(metadata={
        "model_id": run.model_id,
        "promoted": run.promoted,
        "epochs": result.last_epoch + 1,
        "epochs_trained_now": result.epochs_run,
        "stopped_early": result.stopped_early,
        "best_epoch": result.best_epoch,
        "best_val_loss": dg.MetadataValue.float(run.best_val_loss) if run.best_val_loss is not None else "n/a",
        **{f"mAP/{name}": dg.MetadataValue.float(v) for name, v in metrics["mAP"].items()},
        **{f"hit_rate/{name}": dg.MetadataValue.float(v) for name, v in metrics["hit_rate"].items()},
        "test_sets": dg.MetadataValue.json(run.test_counts),
        "tempo_augmentation": dg.MetadataValue.json(run.data.tempo_record),
        "items": dg.MetadataValue.json({"train": len(items.train), "val": len(items.val), "test": len(items.test)}),
        "too_short_left_out": dg.MetadataValue.json([r.variant for r in items.too_short]),
        "num_classes": result.num_classes,
        "parameters_total": counts["total"],
        "parameters_embedding_network": counts["embedding_network"],
        "parameters": dg.MetadataValue.json(counts),
        "device": result.device,
        "wall_seconds": round(time.monotonic() - started, 1),
        "training_seconds_all_runs": metrics["training_seconds"],
        "fingerprint": run.fingerprint,
        "checkpoint": dg.MetadataValue.path(str(result.best_checkpoint)),
        "curves": dg.MetadataValue.md(f"![curves](data:image/png;base64,{base64.b64encode(run.curves_png).decode()})"),
        "curves_file": dg.MetadataValue.path(str(run.curves_path)),
        "tensorboard": dg.MetadataValue.md(f"`tensorboard --logdir {folder.logs_dir}`"),
    })


@dataset_check(trained_model, "The promoted model's checkpoint exists and loads into the model its hparams describe, "
                              "with the recorded fingerprint.")
def promoted_checkpoint_loads(context: dg.AssetCheckExecutionContext, store: StoreResource) -> dg.AssetCheckResult:
    check = check_promoted_checkpoint(store.store(), key_part(context))
    metadata = dict(check.metadata)
    if "checkpoint" in metadata:
        metadata["checkpoint"] = dg.MetadataValue.path(metadata["checkpoint"])
    return dg.AssetCheckResult(passed=check.passed, metadata=metadata)
