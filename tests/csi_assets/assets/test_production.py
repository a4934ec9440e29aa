"""Production K-fold training: folds by performance stratified by work, the lr ladder, per-fold epochs, warm
starts, and a resume that goes straight into the final run."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import torch
import yaml

from csi_assets.assets import research
from csi_assets.layouts import DatasetLayout
from csi_assets.store import features as feature_store
from csi_assets.store import models as model_store
from csi_model import checkpoint as ckpt
from csi_model.folds import (
    FOLD_INDICES_FILE,
    LR_ANCHOR_FILE,
    PoolItem,
    ProductionRun,
    final_lr,
    fold_lr,
    ladder_ratio,
    load_or_make_folds,
    stratified_folds,
)
from csi_model.hparams import to_dict
from csi_model.training import Trainer, WarmStart, train
from tests.graph_fixtures import make_project, materialize
from tests.serving_fixtures import DATA_ASSETS
from tests.train_fixtures import synthetic_features, tiny_hparams


def test_folds_are_stratified_by_work_and_hold_whole_performances():
    work_of = {f"w{w}-p{p}": w for w in range(6) for p in range(6)}
    fold_of = stratified_folds(work_of, 3, seed=5)
    assert set(fold_of) == set(work_of)
    per_fold_work = Counter((fold, work_of[perf]) for perf, fold in fold_of.items())
    assert set(per_fold_work.values()) == {2}  # each work: 2 of its 6 performances in each of the 3 folds
    assert stratified_folds(work_of, 3, seed=5) == fold_of
    assert stratified_folds(work_of, 3, seed=6) != fold_of


def test_fold_indices_are_persisted_and_reused(tmp_path):
    work_of = {f"w{w}-p{p}": w for w in range(4) for p in range(3)}
    path = tmp_path / FOLD_INDICES_FILE
    first = load_or_make_folds(path, work_of, 3, seed=1)
    assert json.loads(path.read_text())["folds"] == first
    assert load_or_make_folds(path, work_of, 3, seed=999) == first  # a resume reuses, whatever the seed now
    with pytest.raises(ValueError, match="k_folds changed"):
        load_or_make_folds(path, work_of, 2, seed=1)


def test_lr_ladder_follows_the_formula():
    anchor, min_lr, k = 4e-4, 1e-5, 5
    ratio = (min_lr / anchor) ** (1 / (k - 1))
    assert ladder_ratio(anchor, min_lr, k) == pytest.approx(ratio)
    assert fold_lr(1, k, 1e-3, anchor, min_lr) == 1e-3
    assert [fold_lr(f, k, 1e-3, anchor, min_lr) for f in range(2, 6)] == pytest.approx(
        [anchor * ratio ** (f - 2) for f in range(2, 6)])
    assert fold_lr(k + 1, k, 1e-3, anchor, min_lr) == pytest.approx(min_lr)  # min_lr is the virtual fold K+1
    assert final_lr(k, 1e-3, anchor, min_lr) == pytest.approx(anchor * ratio ** 2.5)  # position K − 0.5
    assert final_lr(k, 1e-3, anchor, min_lr, position=3) == pytest.approx(anchor * ratio)
    assert fold_lr(3, k, 1e-3, None, min_lr) == final_lr(k, 1e-3, None, min_lr) == 1e-3  # no anchor


def test_warm_start_loads_weights_and_optimizer_moments_but_keeps_own_settings(tmp_path):
    items = synthetic_features(tmp_path / "feat", n_works=4, perfs_per_work=4)
    source = train(tiny_hparams(max_epochs=1), items, tmp_path / "source")
    warm = WarmStart(source.latest_checkpoint, ckpt.checkpoint_paths(source.checkpoint_dir, 0).state)
    hp = tiny_hparams(max_epochs=0, adam_b1=0.95, learning_rate=0.005)
    trainer = Trainer(hp, items, tmp_path / "warm", warm_start=warm)
    trainer.run()
    saved = ckpt.read_generator_state(source.latest_checkpoint)
    assert all(torch.equal(trainer.model.state_dict()[k], v) for k, v in saved.items())
    group = trainer.optimizer.param_groups[0]
    assert group["betas"][0] == 0.95 and group["lr"] == 0.005
    assert len(trainer.optimizer.state) > 0  # Adam moments carried over


class Killed(Exception):
    """Stands for the process being killed at the first step of the final run."""


def _kill_final(stage, hp):
    if stage != "final":
        return None

    def progress(event):
        raise Killed(stage)
    return progress


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """4 works × 5 performances; 4 go to the folds (each with a tempo "variant"), the 5th validates the final run."""
    folder = tmp_path_factory.mktemp("prod_feat")
    items = synthetic_features(folder, n_works=4, perfs_per_work=5, n_frames=(100, 160))
    held = [it for it in items if it.perf.endswith("-p4")]
    pool = []
    for it in items:
        if it not in held:
            pool += [PoolItem(it, it.perf, True),
                     PoolItem(dataclasses.replace(it, perf=f"sp_0.9-{it.perf}"), it.perf, False)]
    return pool, held


def test_production_folds_then_resume_straight_into_final(tmp_path, pool):
    items, held = pool
    hp = tiny_hparams(k_folds=3, max_epochs=2, min_lr=1e-5, fold_lr_decay=0.95, final_lr_decay=0.9,
                      final_early_stopping_patience=7)
    root = tmp_path / "production"
    with pytest.raises(Killed):
        ProductionRun(hp, items, held, root, progress=_kill_final).run()

    state = json.loads((root / "production_state.json").read_text())
    assert sorted(state["stages"]) == ["1", "2", "3"]  # all folds done, the final run not
    fold_of = json.loads((root / FOLD_INDICES_FILE).read_text())["folds"]
    assert set(fold_of) == {p.performance for p in items}  # the unit is the performance, not the variant
    for k in (1, 2, 3):  # epochs counted per fold: every fold ran its own max_epochs, numbered from 0
        history = ckpt.load_training_state(ckpt.latest_checkpoint(root / f"fold_{k}" / "checkpoints").state)["history"]
        assert [r["epoch"] for r in history] == [0, 1]
    anchor = json.loads((root / LR_ANCHOR_FILE).read_text())
    fold1_best = state["stages"]["1"]["best_epoch"]
    fold1_state = ckpt.load_training_state(ckpt.checkpoint_paths(root / "fold_1" / "checkpoints", fold1_best).state)
    assert anchor["lr_anchor"] == fold1_state["optim_g"]["param_groups"][0]["lr"]
    assert [state["stages"][str(k)]["lr"] for k in (1, 2, 3)] == pytest.approx(
        [hp.learning_rate, anchor["lr_anchor"], anchor["lr_anchor"] * (1e-5 / anchor["lr_anchor"]) ** 0.5])
    fold_mtimes = {p: p.stat().st_mtime_ns for p in (root / "fold_1" / "checkpoints").iterdir()}

    result = ProductionRun(hp, items, held, root).run()  # a fresh process: state comes from disk only

    assert result.final.epochs == hp.max_epochs
    assert result.final.lr == pytest.approx(final_lr(3, hp.learning_rate, anchor["lr_anchor"], 1e-5))
    assert result.hparams.lr_decay == 0.9 and result.hparams.early_stopping_patience == 7
    assert [f.stage for f in result.folds] == ["1", "2", "3"]
    assert {p: p.stat().st_mtime_ns for p in (root / "fold_1" / "checkpoints").iterdir()} == fold_mtimes
    assert Path(result.final.checkpoint).exists()
    final_val = result.final_training.history[-1].val
    assert np.isfinite(final_val["foc_loss"])  # the final run validated on the held-out performances


def test_changing_k_folds_on_a_started_run_is_refused(tmp_path, pool):
    items, held = pool
    root = tmp_path / "p"
    root.mkdir()
    (root / "production_state.json").write_text(json.dumps({"k_folds": 3, "stages": {}, "global_best": None}))
    with pytest.raises(ValueError, match="started with 3 folds"):
        ProductionRun(tiny_hparams(k_folds=2), items, held, root)


def test_production_model_asset_registers_the_final_model_unpromoted(tmp_path):
    project = make_project(tmp_path, works=5, perfs=4)
    instance = dg.DagsterInstance.ephemeral()
    assert materialize(project, DATA_ASSETS, instance).success
    hp = tiny_hparams(input_dim=96, k_folds=3, max_epochs=5, min_lr=1e-5, fold_lr_decay=0.98, final_lr_decay=0.98)
    (project.training_dir / "config" / "hparams_prod.yaml").write_text(yaml.safe_dump(to_dict(hp)))
    config = dg.RunConfig({"production_model": research.ProductionConfig(k_folds=2, max_epochs=2)})
    result = materialize(project, [research.production_model], instance, run_config=config)
    metadata = result.asset_materializations_for_node("production_model")[0].metadata
    assert metadata["k_folds"].value == 2 and not metadata["promoted"].value
    assert set(metadata["folds"].value) == {"fold 1", "fold 2"}
    assert all(fold["epochs"] == 2 for fold in metadata["folds"].value.values())
    row = model_store.get_model(project.store, metadata["model_id"].value)
    assert row is not None and not row.promoted and row.metrics["final"]["epochs"] == 2

    table = feature_store.feature_table(project.store, project.dataset_dir.name,
                                        DatasetLayout.at(project.dataset_dir).cqt_settings().settings_hash())
    pool_perfs = {r.perf for r in table if r.split in ("train", "val")}
    fold_of = json.loads((project.training_dir / "production" / FOLD_INDICES_FILE).read_text())["folds"]
    assert set(fold_of) == pool_perfs  # folds over performances; each variant follows its performance
    assert any(r.speed != 1.0 for r in table if r.perf in pool_perfs)  # the pool really has tempo variants
