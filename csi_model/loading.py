"""The one way to build a model from a g_ file: the architecture from the hyper-parameters it was trained with,
the classifier's width from the file itself, the weights loaded exactly (``csi_model.checkpoint.load_generator``).

Serving, evaluation, the import of a reference training folder, registration after training, the checks and the
benchmarks all build their model here, so the classifier-size rule exists once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from csi_model.checkpoint import CLASSIFIER_KEY, LoadReport, load_generator, read_generator_state
from csi_model.hparams import TrainingHParams
from csi_model.model import CoverHunter, ModelConfig


def classes_in(state: Mapping[str, Tensor]) -> int:
    """Number of classes of a g_ file's state dict: its classifier's rows (1 for a file without a classifier)."""
    return int(state[CLASSIFIER_KEY].shape[0]) if CLASSIFIER_KEY in state else 1


def model_from_checkpoint(path: str | Path, hp: TrainingHParams, device: torch.device | str | None = None,
                          num_classes: int | None = None) -> tuple[CoverHunter, LoadReport]:
    """``(model in eval mode on device, load report)`` of the g_ file ``path`` for a model described by ``hp``.

    ``num_classes``: the classes the caller expects (a label model's values); ``None`` takes them from the file.
    Raises ``FileNotFoundError`` for a missing file and ``csi_model.checkpoint.CheckpointError`` naming every
    tensor that does not fit (a different class count included)."""
    if num_classes is None:
        num_classes = classes_in(read_generator_state(path))
    model = CoverHunter(ModelConfig.from_hparams(hp, num_classes))
    report = load_generator(path, model)
    return model.to(device if device is not None else "cpu").eval(), report
