"""The CoverHunter network trained with a catalog label as its class (the ``label_model`` asset), and loading it.

Items: a performance's class is the index of its label value (sorted values); performances without a value, and
values found in one work only, are left out. The split is grouped by work, as the probe's folds are: the first
fold of :func:`csi_model.label_probe.grouped_folds` is the held-out test, the second validation (early stopping
and the best checkpoint), the rest trains -- every tempo variant of a training performance, the original
recordings of validation and test. Training itself is ``csi_model.training.train``: the losses, m-per-class
sampler, augmentation and resumable checkpoints of ``trained_model``.

Files under ``<training_dir>/labels/<label>/``: ``checkpoints/``, ``logs/``, ``label_model.json`` (classes,
best checkpoint, its fingerprint, hparams, held-out metrics), ``metrics.json``, ``report.md``, ``confusion.png``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from csi_assets.errors import RunFailed
from csi_assets.layouts import DatasetLayout, TrainingLayout
from csi_assets.model_loading import LoadedModel, ModelLoadError, stored_contract
from csi_assets.progress import Log
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import features as feature_store
from csi_assets.store import models as model_store
from csi_assets.store.records import FeatureTableRecord
from csi_assets.testsets import by_length, too_short_message
from csi_assets.training_runs import TrainingLog, best_model, check_compatible, steps_per_epoch, trained_contract
from csi_model.atomic import write_text_atomic
from csi_model.augment import TempoRange
from csi_model.checkpoint import CheckpointError
from csi_model.cqt import load_feature, settings_for
from csi_model.dataset import FeatureItem
from csi_model.devices import pick_device
from csi_model.embedding import Embedder, softmax_rows
from csi_model.hparams import TrainingHParams, to_dict, training_hparams_from_dict
from csi_model.identifiers import is_original_speed
from csi_model.label_probe import (
    ProbeDataError,
    bootstrap_scores,
    confusion_png,
    grouped_folds,
    single_work_values,
    verdict,
)
from csi_model.loading import model_from_checkpoint
from csi_model.training import TrainingResult, WarmStart, train

LABEL_MODEL_FILE = "label_model.json"


def label_model_folder(training_dir: str | os.PathLike[str], label: str) -> Path:
    return Path(training_dir) / "labels" / label


@dataclass(frozen=True)
class LabelSplit:
    classes: list[str]
    train: list[FeatureItem]  # work_id = class index
    val: list[FeatureItem]
    test: list[FeatureItem]
    test_works: np.ndarray  # [len(test)] work id of each test item (for the bootstrap over works)
    left_out: dict[str, int]  # values of a single work -> performances
    too_short: list[FeatureTableRecord]  # labelled feature_table rows too short for the model, left out


def label_split(table: Sequence[FeatureTableRecord], values: Mapping[str, str | None], seed: int, mean_size: int,
                stored_variants: bool = True) -> LabelSplit:
    """Train / val / test items of a ``feature_table`` for one label (see the module doc). Needs three works.

    Recordings too short for the model at ``mean_size`` are left out (``too_short``), as in every other split;
    ``stored_variants=False`` trains on the original recordings only (tempo is then drawn in the feature domain)."""
    long_enough, too_short = by_length([r for r in table if values.get(r.perf) is not None], mean_size)
    usable = [r for r in long_enough if stored_variants or is_original_speed(r.speed)]
    originals = [r for r in usable if is_original_speed(r.speed)]
    labels = np.array([values[r.perf] for r in originals], dtype=str)
    works = np.array([int(r.work_id) for r in originals])
    left_out = single_work_values(labels, works)
    keep = ~np.isin(labels, list(left_out))
    originals, labels, works = [r for r, k in zip(originals, keep) if k], labels[keep], works[keep]
    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ProbeDataError(f"{len(classes)} value(s) in two works or more: nothing to learn")
    folds = grouped_folds(y, works, seed)
    if len(folds) < 3:
        raise ProbeDataError(f"{len(np.unique(works))} works with a value: a work-grouped train/val/test split "
                             "needs at least three")
    test_perfs = {originals[i].perf for i in folds[0][1]}
    val_perfs = {originals[i].perf for i in folds[1][1]}
    class_of = {r.perf: int(k) for r, k in zip(originals, y)}

    def item(row: FeatureTableRecord) -> FeatureItem:
        return FeatureItem(row.variant, class_of[row.perf], Path(row.feat), int(row.n_frames))

    train = [item(r) for r in usable if r.perf in class_of and r.perf not in test_perfs | val_perfs]
    test_rows = [r for r in originals if r.perf in test_perfs]
    return LabelSplit(classes.tolist(), train, [item(r) for r in originals if r.perf in val_perfs],
                      [item(r) for r in test_rows], np.array([int(r.work_id) for r in test_rows]), left_out,
                      too_short)


def write_label_model(folder: Path, label: str, classes: Sequence[str], checkpoint: Path, fingerprint: str,
                      hp: Any, metrics: Mapping[str, Any], warm_start: str | None,
                      input_contract: Mapping[str, Any]) -> Path:
    """Record a trained label model; ``input_contract`` is the CQT settings of the features it was trained on."""
    path = folder / LABEL_MODEL_FILE
    write_text_atomic(path, json.dumps({
        "label": label, "classes": list(classes), "checkpoint": str(checkpoint), "fingerprint": fingerprint,
        "warm_start": warm_start, "hparams": to_dict(hp), "metrics": dict(metrics),
        "input_contract": dict(input_contract)}, indent=2, ensure_ascii=False))
    return path


def load_label_model(path: str | Path, device: str | None = None) -> tuple[LoadedModel, list[str]]:
    """The label model described by a ``label_model.json`` (eval mode, on ``device``) and its class values.
    Raises :class:`ModelLoadError` when the checkpoint is missing or its weights changed since."""
    path = Path(path)
    record = json.loads(path.read_text(encoding="utf-8"))
    hp = training_hparams_from_dict(record["hparams"], source=f"hparams in {path}")
    classes = [str(c) for c in record["classes"]]
    checkpoint = Path(record["checkpoint"])
    target = pick_device(device or hp.device)
    try:
        model, report = model_from_checkpoint(checkpoint, hp, target, num_classes=len(classes))
    except (FileNotFoundError, CheckpointError) as err:
        raise ModelLoadError(f"{path}: checkpoint {checkpoint} of the label model cannot be loaded: {err}") from err
    if report.fingerprint != record["fingerprint"]:
        raise ModelLoadError(f"{checkpoint}: weights changed since {path} was written (fingerprint "
                             f"{report.fingerprint}, recorded {record['fingerprint']})")
    name = f"label-{record['label']}-{report.fingerprint[:12]}"
    contract = stored_contract(name, record.get("input_contract"), hp)
    return LoadedModel(name, model, hp, target, checkpoint, contract), classes


def label_hparams(hp: TrainingHParams, max_epochs: int | None = None, augmentation: bool = True) -> TrainingHParams:
    """The training hparams with the label's values as classes: no retrieval test sets, validation loss for early
    stopping and the best checkpoint, the classifier sized by the values."""
    return dataclasses.replace(
        hp, test_sets={}, early_stop_metric="val_loss", map_stopping_testsets=(), foc=dataclasses.replace(
            hp.foc, output_dims=None), max_epochs=max_epochs or hp.max_epochs,
        spec_augmentation=hp.spec_augmentation if augmentation else None)


def promoted_checkpoint(db: Store, dataset: str) -> Path:
    """The promoted CSI model's checkpoint, the label model's warm start."""
    promoted = model_store.promoted_model(db, dataset)
    if promoted is None:
        raise RunFailed(f"warm_start needs a promoted model for dataset {dataset!r}: materialize trained_model (or "
                        "run without warm_start)")
    return Path(promoted.checkpoint)


def held_out_scores(model: Any, hp: TrainingHParams, split: LabelSplit, device: Any, seed: int) -> tuple:
    """(scores, gain, predicted [T]): each held-out recording's value is the argmax of its segments' mean class
    probabilities; the baseline answers the training items' most frequent value."""
    features = [load_feature(item.feat_path) for item in split.test]
    logits = Embedder.for_hparams(model, hp, device).logits(features)
    predicted = np.array([softmax_rows(track).mean(axis=0).argmax() for track in logits])
    y = np.array([item.work_id for item in split.test])
    majority = np.bincount([item.work_id for item in split.train], minlength=len(split.classes)).argmax()
    predictions = {"label_model": predicted, "majority": np.full(len(y), majority)}
    scores, gain = bootstrap_scores(y, predictions, split.test_works, len(split.classes), seed,
                                    primary="label_model")
    return scores, gain, predicted


@dataclass(frozen=True)
class LabelModelRun:
    """One ``label_model`` run: the split, the training, the held-out scores and the files written."""

    split: LabelSplit
    result: TrainingResult
    scores: dict[str, dict[str, Any]]  # predictor -> metric -> interval
    gain: Any  # interval of the balanced-accuracy gain over the majority baseline
    reading: str  # the verdict in words
    record: dict[str, Any]  # metrics.json
    folder: Path
    warm_start: Path | None


def run_label_model(db: Store, dataset: DatasetLayout, training: TrainingLayout, label: str, log: Log,
                    max_epochs: int | None = None, warm_start: bool = False,
                    augmentation: bool = True) -> LabelModelRun:
    """Train CoverHunter with ``label`` as its class (the training loop, losses, sampler, tempo augmentation and
    resumable checkpoints of ``trained_model``) in ``<training_dir>/labels/<label>/``, score it on held-out works
    like the probe and write ``label_model.json``. ``warm_start``: start the embedding network from the promoted
    CSI model (its class heads are not reused); ``augmentation``: the hparams' spectrogram augmentation."""
    dataset.require_label(label)
    data_hp = dataset.hparams()
    hp = label_hparams(training.hparams(), max_epochs, augmentation)
    check_compatible(hp, data_hp)
    table = feature_store.feature_table(db, dataset.name, settings_for(data_hp).settings_hash())
    # the tempo augmentation trained_model uses: rendered variants ('audio') or drawn per chunk ('features')
    tempo = None if data_hp.tempo_augmentation == "audio" else TempoRange.from_factors(data_hp.aug_speed_mode)
    try:
        split = label_split(table, catalog_store.performance_labels(db, dataset.name, label), data_hp.seed,
                            hp.mean_size, stored_variants=tempo is None)
    except ProbeDataError as err:
        raise RunFailed(f"label {label!r} cannot be learnt: {err}") from err
    for row in split.too_short:
        log.warning(too_short_message(row, hp.mean_size))
    warm = WarmStart(promoted_checkpoint(db, dataset.name), heads=False) if warm_start else None
    folder = label_model_folder(training.root, label)
    device = pick_device(hp.device)
    log.info(f"{label}: {len(split.classes)} values {split.classes}, {len(split.train)} train / {len(split.val)} val "
             f"/ {len(split.test)} test items, warm start {warm.generator if warm else 'none'}")
    copies = tempo.copies if tempo is not None else 1
    progress = TrainingLog(log, steps_per_epoch(hp, [it.work_id for it in split.train], copies), 0, hp.max_epochs)
    result = train(hp, split.train, folder, split.val, device=device, progress=progress, warm_start=warm,
                   tempo=tempo)
    model, loaded = best_model(hp, result)
    scores, gain, predicted = held_out_scores(model, hp, split, device, data_hp.seed)
    reading = verdict(scores, gain, len(set(split.test_works.tolist())), "label_model",
                      "the category is learnable from the audio features",
                      "so this network hears it beyond the tunes it was trained on")
    record = {"label": label, "classes": split.classes, "best_epoch": result.best_epoch,
              "epochs": result.last_epoch + 1, "items": {"train": len(split.train), "val": len(split.val),
                                                         "test": len(split.test)},
              "left_out_single_work_values": split.left_out, "verdict": reading,
              "gain_balanced_accuracy": gain.to_dict(),
              "scores": {p: {m: i.to_dict() for m, i in v.items()} for p, v in scores.items()}}
    y_test = np.array([it.work_id for it in split.test])
    confusion_png(y_test, predicted, split.classes, folder / "confusion.png", f"{label}: label model, held out")
    write_text_atomic(folder / "metrics.json", json.dumps(record, indent=2, ensure_ascii=False))
    write_label_model(folder, label, split.classes, result.best_checkpoint, loaded.fingerprint, hp, record,
                      str(warm.generator) if warm else None, trained_contract(data_hp))
    log.info(f"{label}: {reading}")
    return LabelModelRun(split, result, scores, gain, reading, record, folder, warm.generator if warm else None)
