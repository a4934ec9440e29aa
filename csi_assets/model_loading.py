"""The one way to get a servable model out of the store: reference embeddings, evaluation and identification all
load it here, so they embed with the same weights, architecture, device rule and CQT settings.

The architecture comes from the hyper-parameters stored with the model (not from whatever ``hparams.yaml`` says
today), the classifier width from the checkpoint itself, and the weights must still have the fingerprint the
model id was derived from: a checkpoint overwritten after registration is refused instead of silently serving
other weights under the old id. Features are fed to the model only after :func:`dataset_input` compared the
dataset's CQT settings with the model's input contract (``csi_model.contract``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from csi_assets.store import Store
from csi_assets.store import models as model_store
from csi_assets.store.records import ModelRecord
from csi_model.checkpoint import CheckpointError
from csi_model.contract import InputContract, InputContractError, InputContractWarning, check_input_contract
from csi_model.cqt import CqtSettings, settings_for
from csi_model.devices import pick_device
from csi_model.embedding import Embedder
from csi_model.hparams import (
    DataPrepHParams,
    HParamsError,
    TrainingHParams,
    load_data_hparams,
    training_hparams_from_dict,
)
from csi_model.loading import model_from_checkpoint
from csi_model.model import CoverHunter


class ModelLoadError(RuntimeError):
    """No promoted model, an unknown model id, or a checkpoint that is missing or no longer matches."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference (eval mode, on ``device``) with the settings it was trained with."""

    model_id: str
    model: CoverHunter
    hparams: TrainingHParams
    device: torch.device
    checkpoint: Path
    contract: InputContract  # the CQT settings of the features it was trained on

    @property
    def embedder(self) -> Embedder:
        """The model with the evaluation window, minimum input and batch size of its hparams, on its device."""
        return Embedder.for_hparams(self.model, self.hparams, self.device)


def load_model(store: Store, dataset: str, model_id: str | None = None, device: str | None = None) -> LoadedModel:
    """The promoted model of ``dataset`` (or ``model_id``), built from its stored hparams and its g_ checkpoint."""
    row = model_store.get_model(store, model_id) if model_id else model_store.promoted_model(store, dataset)
    if row is None:
        raise ModelLoadError(f"no model {model_id!r} in the store" if model_id else
                             f"no promoted model for dataset {dataset!r}: materialize trained_model first "
                             "(or promote a registered model)")
    return load_model_fields(**model_fields(row), device=device)


MODEL_FIELDS = ("model_id", "training_dir", "checkpoint", "fingerprint", "hparams", "input_contract")
"""The fields of a model's record that load it: what a worker that does not open the store (a Dask worker) is
handed, as JSON."""


def model_fields(row: ModelRecord) -> dict[str, Any]:
    """The :data:`MODEL_FIELDS` of a model record, as keyword arguments of :func:`load_model_fields`."""
    return {name: getattr(row, name) for name in MODEL_FIELDS}


def load_model_fields(model_id: str, training_dir: str, checkpoint: str, fingerprint: str | None,
                      hparams: Mapping[str, Any], input_contract: Mapping[str, Any] | None,
                      device: str | None = None) -> LoadedModel:
    """A model from the :data:`MODEL_FIELDS` of its record (see :class:`~csi_assets.store.records.ModelRecord`)."""
    hp = training_hparams_from_dict(dict(hparams), source=f"hparams of model {model_id}")
    path = Path(checkpoint)
    if not path.is_absolute():
        path = Path(training_dir) / path
    if not path.is_file():
        raise ModelLoadError(f"{path}: checkpoint of model {model_id} is missing")
    target = pick_device(device or hp.device)
    try:
        model, report = model_from_checkpoint(path, hp, target)
    except CheckpointError as err:
        raise ModelLoadError(str(err)) from err
    if fingerprint and report.fingerprint != fingerprint:
        raise ModelLoadError(f"{path}: weights changed since model {model_id} was registered "
                             f"(fingerprint {report.fingerprint}, registered {fingerprint})")
    return LoadedModel(model_id, model, hp, target, path, stored_contract(model_id, input_contract, hp))


def stored_contract(model_id: str, recorded: Mapping[str, Any] | None, hp: TrainingHParams) -> InputContract:
    """The input contract ``recorded`` with model ``model_id``; for a model registered before contracts were
    recorded, what its stored hparams say (hop and bins), with a warning that the rest cannot be checked."""
    if recorded:
        return InputContract.from_dict(recorded)
    contract = InputContract.from_training_hparams(
        hp, f"hparams stored with model {model_id} (registered without an input contract)")
    warnings.warn(f"model {model_id} was registered before input contracts were recorded: only its "
                  f"hop and n_bins are known (from its hparams); {', '.join(contract.unknown())} of the features "
                  "fed to it cannot be checked. Re-register it (materialize trained_model) to record them.",
                  InputContractWarning, stacklevel=2)
    return contract


def dataset_input(model: LoadedModel, data_hp: DataPrepHParams, log: Any = None) -> CqtSettings:
    """The CQT settings of a dataset's features, after checking they are the ones ``model`` was trained on.

    Every path that feeds a dataset's features (or features computed with its settings) to a model calls this:
    a mismatch is a :class:`ModelLoadError` naming both values and both sources. Fields that cannot be checked
    are an :class:`InputContractWarning`, also written to ``log`` (e.g. a Dagster run's log) when given."""
    settings = settings_for(data_hp)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputContractWarning)
        try:
            check_input_contract(model.contract, InputContract.from_settings(settings, data_hp.source or "<hparams>"),
                                 model.model_id)
        except InputContractError as err:
            raise ModelLoadError(str(err)) from err
    for warning in caught:
        if log is not None:
            log.warning(str(warning.message))
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return settings


def dataset_cqt_settings(dataset_dir: str | Path, model: LoadedModel) -> CqtSettings:
    """The CQT settings of the dataset folder's ``hparams.yaml``, checked against ``model``'s input contract."""
    try:
        data_hp = load_data_hparams(Path(dataset_dir) / "hparams.yaml")
    except HParamsError as err:
        raise ModelLoadError(str(err)) from err
    return dataset_input(model, data_hp)
