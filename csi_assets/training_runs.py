"""Training runs: CoverHunter trained on a dataset's splits in a training folder, registered and promoted in the store.

The training folder keeps the reference layout (``config/hparams.yaml`` in; ``checkpoints/`` and ``logs/`` out), so
a run started here can be inspected, resumed or evaluated with either tool. Training resumes from the newest
checkpoint: a re-run after a kill continues the interrupted epoch, a larger ``max_epochs`` continues where the last
run ended, and a finished run only reports again. The helpers here (compatibility, tempo data, progress log, curves,
best model) are shared by the sweeps, production and label-model runs.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from csi_assets.distributed_training import DistributedTrainingFailed, train_model
from csi_assets.errors import RunFailed, require_upstream
from csi_assets.layouts import DatasetLayout, TrainingLayout
from csi_assets.progress import Log, Progress
from csi_assets.store import Store
from csi_assets.store import features as feature_store
from csi_assets.store import models as model_store
from csi_assets.store.records import FeatureTableRecord
from csi_assets.testsets import (
    InvalidTestSet,
    TempoModeMismatch,
    TrainingData,
    require_answerable_test_sets,
    retrieval_test_sets,
    too_short_message,
    training_data,
)
from csi_model import checkpoint as ckpt
from csi_model.atomic import atomic_path
from csi_model.contract import InputContract, InputContractError, check_input_contract
from csi_model.cqt import settings_for
from csi_model.devices import pick_device
from csi_model.distributed import steps_per_rank
from csi_model.embedding import Embedder
from csi_model.evaluation import RetrievalTestSet, evaluate
from csi_model.hparams import DataPrepHParams, TrainingHParams, to_dict, training_hparams_from_dict
from csi_model.loading import model_from_checkpoint
from csi_model.model import CoverHunter, parameter_counts
from csi_model.sampler import MPerClassBatchSampler
from csi_model.training import EpochEnded, EpochRecord, StepEnded, TrainingEvent, TrainingResult

CURVES_FILE = "training_curves.png"


def check_compatible(hp: TrainingHParams, data_hp: DataPrepHParams) -> None:
    """The model's input must be the features the data stage made: same bins (``input_dim``), same hop."""
    try:
        check_input_contract(InputContract.from_training_hparams(hp, hp.source or "<training hparams>"),
                             InputContract.from_settings(settings_for(data_hp), data_hp.source or "<data hparams>"),
                             "to be trained", warn_unknown=False)
    except InputContractError as err:
        raise RunFailed(f"the training hparams do not fit the dataset's features: {err}") from err


def trained_contract(data_hp: DataPrepHParams) -> dict[str, Any]:
    """The input contract recorded with a model trained on the features of ``data_hp``."""
    return InputContract.from_settings(settings_for(data_hp), data_hp.source or "<data hparams>").to_dict()


class TrainingLog:
    """The trainer's progress callback as Dagster log lines: steps and epochs done, rate, ETA, epoch results.

    The ETA assumes every remaining epoch runs; early stopping can only make it shorter."""

    def __init__(self, log: Log, steps_per_epoch: int, first_epoch: int, max_epochs: int) -> None:
        self.log = log
        self.max_epochs = max_epochs
        self.steps = Progress(log, f"epoch {first_epoch} [0..{max_epochs - 1}]",
                              steps_per_epoch * max(max_epochs - first_epoch, 0), "steps")

    def __call__(self, event: TrainingEvent) -> None:
        if isinstance(event, StepEnded):
            self.steps.label = f"epoch {event.epoch} [0..{self.max_epochs - 1}], global step {event.step}"
            self.steps.advance()
        elif isinstance(event, EpochEnded):
            record = event.record
            shown = {k: v for k, v in record.flat().items()
                     if k.startswith(("train/total", "val/foc_loss", "mAP/", "hit_rate/"))}
            values = ", ".join(f"{k} {v:.4f}" for k, v in sorted(shown.items()))
            self.log.info(f"epoch {record.epoch} [0..{self.max_epochs - 1}] done in {record.seconds:.1f} s "
                          f"(lr {record.lr:.2g}): {values}")


def steps_per_epoch(hp: TrainingHParams, labels: Sequence[int], copies: int = 1) -> int:
    """One step per chunk length per sampler batch (the trainer zips the chunk-length loaders); ``copies`` is how
    often each item is visited per epoch (feature-domain tempo augmentation's copies). With several processes,
    each takes its share of the batches: the steps of one process."""
    labels = list(labels) * copies
    batches = len(MPerClassBatchSampler(labels, hp.m_per_class, hp.batch_size, np.random.default_rng(0)))
    return steps_per_rank(batches, hp.distributed.nproc) * len(hp.chunk_frame)


def record_of(history: Sequence[EpochRecord], epoch: int) -> EpochRecord | None:
    return next((r for r in history if r.epoch == epoch), None)


def curves_png(history: Sequence[EpochRecord], best_epoch: int) -> bytes:
    """Losses (train total, val focal) and every test set's mAP against the epoch, the best epoch marked; PNG."""
    fig = Figure(figsize=(9, 3.6), dpi=100)
    loss_ax, map_ax = fig.subplots(1, 2, sharex=True)
    epochs = [r.epoch for r in history]
    loss_ax.plot(epochs, [r.train.get("total", math.nan) for r in history], marker=".", label="train total")
    loss_ax.plot(epochs, [r.val.get("foc_loss", math.nan) for r in history], marker=".", label="val focal")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="losses")
    loss_ax.legend()
    for name in sorted({n for r in history for n in r.mean_ap}):
        points = [(r.epoch, r.mean_ap[name]) for r in history if name in r.mean_ap]
        map_ax.plot(*zip(*points), marker="o", label=name)
    map_ax.set(xlabel="epoch", ylabel="mAP", title="test-set mAP", ylim=(0, 1))
    if map_ax.lines:
        map_ax.legend()
    for ax in (loss_ax, map_ax):
        ax.axvline(best_epoch, color="grey", linestyle=":", linewidth=1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_curves(folder: Path, history: Sequence[EpochRecord], best_epoch: int) -> tuple[Path, bytes]:
    png = curves_png(history, best_epoch)
    path = folder / CURVES_FILE
    with atomic_path(path) as tmp:
        tmp.write_bytes(png)
    return path, png


def best_model(hp: TrainingHParams, result: TrainingResult) -> tuple[CoverHunter, ckpt.LoadReport]:
    if result.best_checkpoint is None:
        raise RunFailed(f"{result.checkpoint_dir}: no checkpoint of the best epoch {result.best_epoch}; "
                        "nothing to register")
    return model_from_checkpoint(result.best_checkpoint, hp)


def retrieval_scores(model: CoverHunter, hp: TrainingHParams, test_sets: Sequence[RetrievalTestSet],
                     best: EpochRecord | None, known: dict[str, Any] | None, device: torch.device
                     ) -> dict[str, dict[str, float]]:
    """mAP and hit rate of the best checkpoint per test set: from the best epoch's record when that epoch was
    evaluated, else from the store when this model was scored before, else by evaluating it now."""
    scores: dict[str, dict[str, float]] = {"mAP": {}, "hit_rate": {}}
    known_maps = (known or {}).get("mAP", {})
    embedder = Embedder.for_hparams(model, hp, device)
    for ts in test_sets:
        if best is not None and ts.name in best.mean_ap:
            mean_ap, hit_rate = best.mean_ap[ts.name], best.hit_rate[ts.name]
        elif ts.name in known_maps:
            mean_ap, hit_rate = known_maps[ts.name], known["hit_rate"][ts.name]
        else:
            metrics = evaluate(embedder, ts).metrics
            mean_ap, hit_rate = metrics.mean_ap, metrics.hit_rate
        scores["mAP"][ts.name], scores["hit_rate"][ts.name] = mean_ap, hit_rate
    return scores


def tempo_training_data(data_hp: DataPrepHParams, table: Sequence[FeatureTableRecord], mean_size: int,
                        log: Log) -> TrainingData:
    """The run's items and tempo augmentation (see ``csi_assets.testsets.training_data``), logged explicitly;
    recordings too short for the model are named."""
    try:
        data = training_data(data_hp, table, mean_size)
    except TempoModeMismatch as err:
        raise RunFailed(str(err)) from None
    for row in data.items.too_short:
        log.warning(too_short_message(row, mean_size))
    log.info("tempo augmentation: " + ", ".join(f"{k} {v}" for k, v in data.tempo_record.items()))
    if data.tempo_record.get("stored_variants_ignored"):
        log.warning(f"{data.tempo_record['stored_variants_ignored']} stored tempo variants of the train split are "
                    "ignored: tempo_augmentation is 'features' (set it to 'audio' to train on them instead)")
    return data


@dataclass(frozen=True)
class TrainingRun:
    """What one ``trained_model`` run did: the registered model, its scores and the run's counts."""

    model_id: str
    promoted: bool
    result: TrainingResult
    metrics: dict[str, Any]  # as registered with the model in the store
    test_counts: dict[str, Any]
    data: TrainingData
    fingerprint: str
    curves_path: Path
    curves_png: bytes

    @property
    def best_val_loss(self) -> float | None:
        return self.metrics["best_val_loss"]


def run_training(db: Store, dataset: DatasetLayout, training: TrainingLayout, log: Log, promote: bool = True,
                 max_epochs: int | None = None) -> TrainingRun:
    """Train CoverHunter on the dataset's splits in the training folder (resuming from its newest checkpoint),
    register the best epoch's checkpoint in the store and, with ``promote`` (or when it already is), promote it.

    Items come from the store's splits (the hparams' ``train_path``/``val_path`` are informational): every tempo
    variant of the train performances, the original recordings of val and test. Raises :class:`RunFailed` when
    the hparams do not fit the features, the splits are missing or a test set cannot be answered."""
    hp = training.hparams()
    if max_epochs is not None:
        hp = dataclasses.replace(hp, max_epochs=max_epochs)
    data_hp = dataset.hparams()
    check_compatible(hp, data_hp)
    table = feature_store.feature_table(db, dataset.name, settings_for(data_hp).settings_hash())
    data = tempo_training_data(data_hp, table, hp.mean_size, log)
    items = data.items
    require_upstream(items.train, "data_splits", dataset.name, "training items (if it was materialized, check "
                     "its split fractions)")
    test_sets, test_counts = retrieval_test_sets(hp, table, training.root)
    try:
        require_answerable_test_sets(test_sets)
    except InvalidTestSet as err:
        raise RunFailed(str(err)) from err
    device = pick_device(hp.device)
    latest = ckpt.latest_checkpoint(training.checkpoints_dir)
    first_epoch = latest.epoch + 1 if latest else 0
    log.info(
        f"training on {device}" + (f" in {hp.distributed.nproc} processes" if hp.distributed.nproc > 1 else "") + ": "
        f"{len(items.train)} train / {len(items.val)} val / {len(items.test)} test items, "
        f"{len(test_sets)} test set(s); " + (f"resuming after epoch {latest.epoch}" if latest else "from scratch")
        + f", up to {hp.max_epochs} epochs in {training.root}")
    copies = data.tempo.copies if data.tempo else 1
    progress = TrainingLog(log, steps_per_epoch(hp, [it.work_id for it in items.train], copies), first_epoch,
                           hp.max_epochs)
    try:
        result = train_model(hp, items.train, training.root, items.val, items.test, test_sets, data.tempo, progress,
                             log.info, device=str(device))
    except DistributedTrainingFailed as err:
        raise RunFailed(str(err)) from err

    model, loaded = best_model(hp, result)
    model_id = model_store.model_id_for(training.root.name, loaded.fingerprint)
    known = model_store.get_model(db, model_id)
    best = record_of(result.history, result.best_epoch)
    scores = retrieval_scores(model, hp, test_sets, best, known and known.metrics, device)
    curves_path, png = write_curves(training.root, result.history, result.best_epoch)
    metrics = {
        "epochs": result.last_epoch + 1, "best_epoch": result.best_epoch,
        "best_val_loss": best.val.get("foc_loss") if best else None, "stopped_early": result.stopped_early,
        **scores, "num_classes": result.num_classes, "parameters": parameter_counts(model),
        "training_seconds": round(sum(r.seconds for r in result.history), 1), "device": result.device,
        "tempo_augmentation": data.tempo_record,
    }
    current = model_store.promoted_model(db, dataset.name)
    promote = promote or (current is not None and current.model_id == model_id)
    model_store.register_model(
        db, model_id=model_id, dataset=dataset.name, training_dir=str(training.root),
        checkpoint=str(result.best_checkpoint), epoch=result.best_epoch, fingerprint=loaded.fingerprint,
        hparams=to_dict(hp), metrics=metrics, promote=promote, input_contract=trained_contract(data_hp),
    )
    log.info(f"registered {model_id} (best epoch {result.best_epoch}, {result.best_checkpoint})"
             + (", promoted" if promote else ", not promoted"))
    return TrainingRun(model_id, promote, result, metrics, test_counts, data, loaded.fingerprint, curves_path, png)


@dataclass(frozen=True)
class CheckpointCheck:
    """Whether the promoted model's checkpoint loads into the model its hparams describe, with its fingerprint."""

    passed: bool
    metadata: dict[str, Any]


def check_promoted_checkpoint(db: Store, dataset: str) -> CheckpointCheck:
    row = model_store.promoted_model(db, dataset)
    if row is None:
        return CheckpointCheck(False, {"problem": f"no promoted model for {dataset!r}"})
    hp = training_hparams_from_dict(row.hparams, source=f"store model {row.model_id}")
    try:
        _, report = model_from_checkpoint(row.checkpoint, hp, num_classes=int(row.metrics["num_classes"]))
    except (FileNotFoundError, ckpt.CheckpointError) as err:
        return CheckpointCheck(False, {"model_id": row.model_id, "problem": str(err)})
    return CheckpointCheck(report.fingerprint == row.fingerprint,
                           {"model_id": row.model_id, "checkpoint": row.checkpoint, "tensors": report.tensors,
                            "fingerprint": report.fingerprint, "recorded_fingerprint": row.fingerprint})
