"""Classify recordings by a musical category (a label of the catalog): its value, its probability and the top 3.

Two sources, tried in this order:

- the **label model** (``label_model`` asset): the CoverHunter network trained with the label as its class, in
  ``<training_dir>/labels/<label>/`` -- each segment of the query goes through its classifier head and the
  segments' probabilities are averaged;
- else the **probe** (``label_probe`` asset) of the promoted CSI model: the query's segments are embedded by the
  promoted model like every reference, averaged into one unit vector (the mean of the unit segment vectors,
  renormalised, as the probe was trained on) and scored by the stored logistic regression.

Queries are decoded and transformed exactly as ``csi identify`` does (16 kHz mono, the dataset's CQT settings).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from csi_assets.label_model import LABEL_MODEL_FILE, label_model_folder, load_label_model
from csi_assets.layouts import DatasetLayout
from csi_assets.model_loading import LoadedModel, ModelLoadError, dataset_cqt_settings, load_model
from csi_assets.store import Store
from csi_assets.store import models as model_store
from csi_model.cqt import CqtSettings, compute_cqt
from csi_model.embedding import mean_unit_vectors, softmax_rows
from csi_model.label_probe import LinearProbe

TOP = 3
PROBE_FILE = "probe.npz"
"""The logistic probe of a label fitted on every labelled performance, as plain arrays (``label_probe`` writes it)."""


class ClassifyError(RuntimeError):
    """Something the user must fix (no store, no promoted model, no probe or label model for the label)."""


@dataclass(frozen=True)
class Prediction:
    query: str
    label: str
    value: str
    probability: float
    top: list[tuple[str, float]]  # the TOP most probable values, best first
    source: str  # "label_model" or "probe"
    model: str  # the label model's folder, or the promoted model id the probe reads

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "label": self.label, "value": self.value, "probability": self.probability,
                "top": [{"value": v, "probability": p} for v, p in self.top], "source": self.source,
                "model": self.model}


def probe_file(training_dir: str | os.PathLike[str], model_id: str, label: str) -> Path:
    return Path(training_dir) / "reports" / model_id / "labels" / label / PROBE_FILE


def _checked_settings(dataset_dir: Path, model: LoadedModel) -> CqtSettings:
    """The dataset's CQT settings, refused (ClassifyError) unless they are the ones ``model`` was trained on."""
    try:
        return dataset_cqt_settings(dataset_dir, model)
    except ModelLoadError as err:
        raise ClassifyError(str(err)) from err


class Classifier:
    """The label model of ``label`` or, without one, the promoted model and its probe; loaded once."""

    def __init__(self, store_path: str | os.PathLike[str], dataset_dir: str | os.PathLike[str], label: str,
                 device: str | None = None, lock_timeout_s: float = 120.0) -> None:
        """Opens the store read-only (raises ``StoreLockedError`` if a writer holds it beyond ``lock_timeout_s``)."""
        store_path, dataset = Path(store_path), DatasetLayout.at(dataset_dir)
        if not store_path.is_file():
            raise ClassifyError(f"no store at {store_path}: materialize the main job first")
        store = Store(store_path, lock_timeout_s, read_only=True)
        self.label = label
        promoted = model_store.promoted_model(store, dataset.name)
        if promoted is None:
            raise ClassifyError(f"no promoted model for dataset {dataset.name!r}: materialize trained_model")
        folder = label_model_folder(promoted.training_dir, label)
        if (folder / LABEL_MODEL_FILE).is_file():
            self.source, self.name = "label_model", str(folder)
            try:
                self.model, self.classes = load_label_model(folder / LABEL_MODEL_FILE, device)
            except ModelLoadError as err:
                raise ClassifyError(str(err)) from err
            self.probe = None
            self.settings = _checked_settings(dataset.root, self.model)
            return
        path = probe_file(promoted.training_dir, promoted.model_id, label)
        if not path.is_file():
            raise ClassifyError(f"no label model ({folder / LABEL_MODEL_FILE}) and no probe ({path}) for label "
                                f"{label!r}: materialize label_probe (or label_model) for partition {label!r}")
        try:
            self.model: LoadedModel = load_model(store, dataset.name, device=device)
        except ModelLoadError as err:
            raise ClassifyError(str(err)) from err
        self.source, self.name = "probe", self.model.model_id
        self.settings = _checked_settings(dataset.root, self.model)
        self.probe = LinearProbe.load(path)
        self.classes = self.probe.classes

    def classify(self, names: Sequence[str], signals: Sequence[np.ndarray],
                 failed: Callable[[str, str], None] | None = None) -> list[Prediction]:
        """One prediction per decoded 16 kHz mono signal (``names`` label the results). A recording too short for
        the model raises :class:`ClassifyError`, or with ``failed`` is reported as ``failed(name, message)`` and
        left out, so the others are still answered."""
        features = compute_cqt(list(signals), self.settings, self.model.device)

        def fail(name: str, message: str) -> None:
            if failed is None:
                raise ClassifyError(message)
            failed(name, message)

        kept_names, kept = self.model.embedder.drop_too_short(names, features, self.settings.fps, "classify", fail)
        if not kept:
            return []
        probabilities = self._probabilities(kept)  # [N, K]
        return [self._prediction(name, row) for name, row in zip(kept_names, probabilities)]

    def _probabilities(self, features: list[np.ndarray]) -> np.ndarray:
        if self.probe is None:
            logits = self.model.embedder.logits(features)
            return np.stack([softmax_rows(track).mean(axis=0) for track in logits])
        tracks = self.model.embedder.embed(features)
        vectors = np.concatenate([mean_unit_vectors(t, np.zeros(len(t), dtype=np.int64)) for t in tracks])
        return self.probe.predict_proba(vectors)

    def _prediction(self, name: str, probabilities: np.ndarray) -> Prediction:
        order = np.argsort(-probabilities, kind="stable")
        top = [(self.classes[k], round(float(probabilities[k]), 4)) for k in order[:TOP]]
        return Prediction(name, self.label, top[0][0], top[0][1], top, self.source, self.name)

