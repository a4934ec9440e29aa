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

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from csi_assets.model_loading import LoadedModel, ModelLoadError, stored_contract
from csi_model.atomic import write_text_atomic
from csi_model.checkpoint import CheckpointError
from csi_model.dataset import FeatureItem
from csi_model.devices import pick_device
from csi_model.hparams import to_dict, training_hparams_from_dict
from csi_model.identifiers import is_original_speed
from csi_model.label_probe import ProbeDataError, grouped_folds, single_work_values
from csi_model.loading import model_from_checkpoint
from csi_model.model import CoverHunter

LABEL_MODEL_FILE = "label_model.json"


@dataclass(frozen=True)
class LabelSplit:
    classes: list[str]
    train: list[FeatureItem]  # work_id = class index
    val: list[FeatureItem]
    test: list[FeatureItem]
    test_works: np.ndarray  # [len(test)] work id of each test item (for the bootstrap over works)
    left_out: dict[str, int]  # values of a single work -> performances
    too_short: list[Mapping[str, Any]]  # labelled feature_table rows too short for the model, left out


def label_split(table: Sequence[Mapping[str, Any]], values: Mapping[str, str | None], seed: int, mean_size: int,
                stored_variants: bool = True) -> LabelSplit:
    """Train / val / test items of a ``feature_table`` for one label (see the module doc). Needs three works.

    Recordings too short for the model at ``mean_size`` are left out (``too_short``), as in every other split;
    ``stored_variants=False`` trains on the original recordings only (tempo is then drawn in the feature domain)."""
    shortest = CoverHunter.min_raw_frames(mean_size)
    labelled = [r for r in table if values.get(r["perf"]) is not None]
    too_short = [r for r in labelled if r["n_frames"] < shortest]
    usable = [r for r in labelled if r["n_frames"] >= shortest and (stored_variants or is_original_speed(r["speed"]))]
    originals = [r for r in usable if is_original_speed(r["speed"])]
    labels = np.array([values[r["perf"]] for r in originals], dtype=str)
    works = np.array([int(r["work_id"]) for r in originals])
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
    test_perfs = {originals[i]["perf"] for i in folds[0][1]}
    val_perfs = {originals[i]["perf"] for i in folds[1][1]}
    class_of = {r["perf"]: int(k) for r, k in zip(originals, y)}

    def item(row: Mapping[str, Any]) -> FeatureItem:
        return FeatureItem(row["variant"], class_of[row["perf"]], Path(row["feat"]), int(row["n_frames"]))

    train = [item(r) for r in usable if r["perf"] in class_of and r["perf"] not in test_perfs | val_perfs]
    test_rows = [r for r in originals if r["perf"] in test_perfs]
    return LabelSplit(classes.tolist(), train, [item(r) for r in originals if r["perf"] in val_perfs],
                      [item(r) for r in test_rows], np.array([int(r["work_id"]) for r in test_rows]), left_out,
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
    contract = stored_contract({"model_id": name, "input_contract": record.get("input_contract")}, hp)
    return LoadedModel(name, model, hp, target, checkpoint, contract), classes
