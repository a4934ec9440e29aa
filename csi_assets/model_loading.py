"""The one way to get a servable model out of the store: reference embeddings, evaluation and identification all
load it here, so they embed with the same weights, architecture, device rule and CQT settings.

The architecture comes from the hyper-parameters stored with the model (not from whatever ``hparams.yaml`` says
today), the classifier width from the checkpoint itself, and the weights must still have the fingerprint the
model id was derived from: a checkpoint overwritten after registration is refused instead of silently serving
other weights under the old id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import numpy as np
import torch

from csi_assets.store import Store
from csi_assets.store import models as model_store
from csi_model.checkpoint import CheckpointError, load_generator, read_generator_state
from csi_model.cqt import CqtSettings, settings_for
from csi_model.devices import pick_device
from csi_model.embedding import segment_starts
from csi_model.hparams import TrainingHParams, load_data_hparams, training_hparams_from_dict
from csi_model.model import CoverHunter, ModelConfig

_CLASSIFIER_KEY = "_ce_layer.weight"


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

    def segment_starts(self, n_frames: int) -> np.ndarray:
        """Raw-frame starts of the segments ``csi_model.embedding.embed_tracks`` cuts a track into.

        Same window and tail rule as ``embed_tracks``: the tail may not be shorter than what the model accepts."""
        seg_len = self.hparams.eval_chunk_raw_frames
        return segment_starts(n_frames, seg_len, max(seg_len // 4, self.min_raw_frames))

    @property
    def min_raw_frames(self) -> int:
        """Shortest track (raw CQT frames) the model can embed."""
        return self.model.min_raw_frames(self.hparams.mean_size)


def load_model(store: Store, dataset: str, model_id: str | None = None, device: str | None = None) -> LoadedModel:
    """The promoted model of ``dataset`` (or ``model_id``), built from its stored hparams and its g_ checkpoint."""
    row = model_store.get_model(store, model_id) if model_id else model_store.promoted_model(store, dataset)
    if row is None:
        raise ModelLoadError(f"no model {model_id!r} in the store" if model_id else
                             f"no promoted model for dataset {dataset!r}: materialize trained_model first "
                             "(or promote a registered model)")
    hp = training_hparams_from_dict(row["hparams"], source=f"hparams of model {row['model_id']}")
    checkpoint = Path(row["checkpoint"])
    if not checkpoint.is_absolute():
        checkpoint = Path(row["training_dir"]) / checkpoint
    if not checkpoint.is_file():
        raise ModelLoadError(f"{checkpoint}: checkpoint of model {row['model_id']} is missing")
    try:
        state = read_generator_state(checkpoint)
        num_classes = int(state[_CLASSIFIER_KEY].shape[0]) if _CLASSIFIER_KEY in state else 1
        model = CoverHunter(ModelConfig.from_hparams(hp, num_classes))
        report = load_generator(checkpoint, model)
    except CheckpointError as err:
        raise ModelLoadError(str(err)) from err
    if row.get("fingerprint") and report.fingerprint != row["fingerprint"]:
        raise ModelLoadError(f"{checkpoint}: weights changed since model {row['model_id']} was registered "
                             f"(fingerprint {report.fingerprint}, registered {row['fingerprint']})")
    target = pick_device(device or hp.device)
    return LoadedModel(row["model_id"], model.to(target).eval(), hp, target, checkpoint)


def dataset_cqt_settings(dataset_dir: str | Path) -> CqtSettings:
    """The CQT settings the dataset's features were computed with (its data-prep ``hparams.yaml``)."""
    return settings_for(load_data_hparams(Path(dataset_dir) / "hparams.yaml"))
