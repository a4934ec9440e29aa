"""A synthetic project with its data assets materialised and a tiny CoverHunter registered as the promoted model:
what the serving, evaluation and identification tests start from."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import torch
import yaml

from csi_assets.assets import data
from csi_assets.store import models as model_store
from csi_assets.training_runs import trained_contract
from csi_model.checkpoint import model_fingerprint, save_checkpoint
from csi_model.hparams import TrainingHParams, load_data_hparams, to_dict
from csi_model.model import CoverHunter, ModelConfig
from tests.graph_fixtures import DATA_HPARAMS, Project, make_project, materialize
from tests.train_fixtures import tiny_hparams

ORIGINALS_ONLY = {**DATA_HPARAMS, "aug_speed_mode": [1.0]}
"""Serving needs no tempo copies; leaving them out makes the data stage of these tests three times faster."""
DATA_ASSETS = [data.dataset_catalog, data.speed_variants, data.cqt_features, data.work_ids, data.data_splits]


def serving_hparams(**overrides: object) -> TrainingHParams:
    """Tiny model on the project's 96-bin CQT: a window of 24 pooled frames (48 raw, ~1.9 s), so a 6 s track
    has three segments plus tail handling."""
    return tiny_hparams(input_dim=96, **overrides)


def materialize_data(project: Project, instance: dg.DagsterInstance | None = None) -> None:
    assert materialize(project, DATA_ASSETS, instance=instance).success


def register_model(project: Project, model: CoverHunter, hp: TrainingHParams, epoch: int = 0) -> str:
    """Save ``model`` as a g_/do_ checkpoint pair in the project's training folder and promote it."""
    checkpoints = project.training_dir / "checkpoints"
    optimizer = torch.optim.AdamW(model.parameters())
    pair = save_checkpoint(checkpoints, epoch, model, optimizer, steps=0, early_stopping={})
    fingerprint = model_fingerprint(model.state_dict())
    model_id = model_store.model_id_for("test", fingerprint)
    (project.training_dir / "config" / "hparams.yaml").write_text(yaml.safe_dump(to_dict(hp)))
    model_store.register_model(
        project.store, model_id=model_id, dataset=project.dataset, training_dir=str(project.training_dir),
        checkpoint=str(pair.generator), epoch=epoch, fingerprint=fingerprint, hparams=to_dict(hp), metrics={},
        promote=True, input_contract=trained_contract(load_data_hparams(project.dataset_dir / "hparams.yaml")))
    return model_id


def random_model(hp: TrainingHParams, num_classes: int = 8, seed: int = 0) -> CoverHunter:
    torch.manual_seed(seed)
    return CoverHunter(ModelConfig.from_hparams(hp, num_classes))


def project_with_model(root: Path, works: int = 5, perfs: int = 3, seconds: float = 6.0,
                       **hp_overrides: object) -> tuple[Project, str, TrainingHParams]:
    project = make_project(root, works=works, perfs=perfs, seconds=seconds, data_hparams=ORIGINALS_ONLY)
    materialize_data(project)
    hp = serving_hparams(**hp_overrides)
    return project, register_model(project, random_model(hp), hp), hp


def materialized_metadata(project: Project, assets: list, node: str, run_config: dict | None = None) -> dict:
    """Materialize ``assets`` (their checks must pass) and return ``node``'s materialization metadata as values."""
    result = materialize(project, assets, run_config=run_config)
    assert result.success
    assert all(check.passed for check in result.get_asset_check_evaluations())
    metadata = result.asset_materializations_for_node(node)[0].metadata
    return {key: value.value for key, value in metadata.items()}
