"""The trained_model asset on a real synthetic project: trains, registers and promotes, resumes, reports; and the
acceptance test that training really learns cover identification on synthetic covers."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest
import torch
import yaml

from csi_assets.assets import data, training
from csi_assets.errors import RunFailed
from csi_assets.layouts import DatasetLayout, TrainingLayout
from csi_assets.partitions import ensure_partition
from csi_assets.store import features as feature_store
from csi_assets.store import models as model_store
from csi_assets.testsets import retrieval_test_sets
from csi_assets.training_runs import check_compatible
from csi_model.checkpoint import list_checkpoints
from csi_model.cqt import settings_for
from csi_model.embedding import Embedder
from csi_model.evaluation import evaluate
from csi_model.hparams import DataPrepHParams, training_hparams_from_dict
from csi_model.model import CoverHunter, ModelConfig
from tests.audio_fixtures import write_tone
from tests.graph_fixtures import DATA_HPARAMS, Project, make_project, materialize

DATA_ASSETS = [data.dataset_catalog, data.speed_variants, data.cqt_features, data.work_ids, data.data_splits]
TRAINING = [training.trained_model, training.promoted_checkpoint_loads]


def tiny_training(dataset_dir: Path, **overrides: object) -> dict:
    """d 32, 1 block, 4.8 s chunks: seconds per epoch on the small project."""
    return {
        "covers": {"query_path": str(dataset_dir / "test.txt"), "ref_path": str(dataset_dir / "full.txt")},
        "chunk_frame": [40, 32, 24], "chunk_s": 4.8, "mean_size": 3, "m_per_class": 2, "batch_size": 8,
        "learning_rate": 0.002, "input_dim": 96, "embed_dim": 32, "seed": 7, "num_workers": 0, "device": "cpu",
        "early_stopping_patience": 100, "max_epochs": 1,
        "encoder": {"output_dims": 32, "num_blocks": 1, "attention_dim": 64}, **overrides,
    }


def _write_config(project: Project, config: dict) -> None:
    (project.training_dir / "config" / "hparams.yaml").write_text(yaml.safe_dump(config))


def _train(project: Project, instance: dg.DagsterInstance, **run_config: object) -> dg.ExecuteInJobResult:
    return materialize(project, TRAINING, instance, run_config={"ops": {"trained_model": {"config": run_config}}})


def _metadata(result: dg.ExecuteInJobResult) -> dict:
    [event] = result.get_asset_materialization_events()
    return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}


def _check(result: dg.ExecuteInJobResult) -> bool:
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation.passed


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("training"))
    instance = dg.DagsterInstance.ephemeral()
    materialize(project, DATA_ASSETS, instance)
    _write_config(project, tiny_training(project.dataset_dir))
    return project, instance


def test_trains_registers_promotes_and_resumes(small) -> None:
    project, instance = small
    first = _train(project, instance, promote=False)
    meta = _metadata(first)
    assert meta["epochs"] == 1 and meta["epochs_trained_now"] == 1 and meta["promoted"] is False
    assert meta["test_sets"] == {"covers": {"queries": 5, "refs": 15, "dropped_variant_lines": 40}}
    assert meta["items"] == {"train": 8 * 3, "val": 2, "test": 5}  # train: every tempo variant
    assert 0.0 <= meta["mAP/covers"] <= 1.0 and meta["num_classes"] == 5
    assert meta["parameters"]["total"] == meta["parameters_total"] > meta["parameters_embedding_network"]
    assert meta["curves"].startswith("![curves](data:image/png;base64,iVBOR")
    assert Path(meta["curves_file"]).read_bytes()[:4] == b"\x89PNG"
    assert "tensorboard --logdir" in meta["tensorboard"]
    assert any((project.training_dir / "logs").rglob("events.out.tfevents.*"))
    registered = model_store.get_model(project.store, meta["model_id"])
    assert registered.checkpoint == meta["checkpoint"]
    assert registered.metrics["mAP"]["covers"] == meta["mAP/covers"]
    assert model_store.promoted_model(project.store, "dataset") is None
    assert not _check(first)  # nothing promoted yet

    first_epoch_file = project.training_dir / "checkpoints" / "g_00000000"
    written = first_epoch_file.stat().st_mtime_ns
    more = _train(project, instance, max_epochs=3)
    meta = _metadata(more)
    assert meta["epochs"] == 3 and meta["epochs_trained_now"] == 2  # continued after epoch 0, not from 0
    assert first_epoch_file.stat().st_mtime_ns == written
    assert [p.epoch for p in list_checkpoints(project.training_dir / "checkpoints")] == [0, 1, 2]
    promoted = model_store.promoted_model(project.store, "dataset")
    assert promoted.model_id == meta["model_id"] and promoted.epoch == meta["best_epoch"]
    assert _check(more)

    again = _train(project, instance, max_epochs=3)
    meta_again = _metadata(again)
    assert meta_again["epochs_trained_now"] == 0 and meta_again["epochs"] == 3
    assert meta_again["model_id"] == meta["model_id"] and meta_again["mAP/covers"] == meta["mAP/covers"]
    assert _check(again)


def test_two_processes_train_through_torchrun(small, tmp_path: Path) -> None:
    """``distributed.nproc: 2`` in the hparams: the asset launches torchrun, follows its progress and registers
    rank 0's checkpoint like any other (same dataset and store, its own training folder, not promoted)."""
    project, instance = small
    two = Project(project.root, project.dataset_dir, tmp_path / "training", project.store_path)
    (two.training_dir / "config").mkdir(parents=True)
    _write_config(two, tiny_training(project.dataset_dir, distributed={"nproc": 2, "backend": "gloo"}))
    result = _train(two, instance, promote=False)
    meta = _metadata(result)
    assert meta["epochs"] == 1 and meta["epochs_trained_now"] == 1 and meta["promoted"] is False
    assert 0.0 <= meta["mAP/covers"] <= 1.0
    assert [p.epoch for p in list_checkpoints(two.training_dir / "checkpoints")] == [0]
    assert model_store.get_model(two.store, meta["model_id"]).checkpoint == meta["checkpoint"]
    logged = [e.message or "" for e in instance.all_logs(result.run_id)]
    assert any("training on cpu in 2 processes" in m for m in logged)
    assert any("torch.distributed.run" in m and "--nproc_per_node 2" in m for m in logged)
    assert any(m.startswith("epoch 0 [0..0] done in") for m in logged)  # rank 0's progress, followed


def _run_check(project: Project, instance: dg.DagsterInstance) -> dg.ExecuteInJobResult:
    """Only trained_model's check, on the project's partition. Dagster drops the partitions of a job of checks
    alone (no asset in it has partitions), so `materialize` cannot take the partition key; the run's partition tag
    is what the check's context reads."""
    key = str(ensure_partition(instance, project.dataset))
    return dg.materialize([training.promoted_checkpoint_loads, training.trained_model], instance=instance,
                          resources=project.resources, tags={"dagster/partition": key},
                          selection=dg.AssetSelection.checks_for_assets(training.trained_model))


def test_promoted_checkpoint_that_vanished_fails_the_check(small, tmp_path: Path) -> None:
    project, instance = small
    promoted = model_store.promoted_model(project.store, "dataset")
    if promoted is None:
        _train(project, instance)
        promoted = model_store.promoted_model(project.store, "dataset")
    moved = tmp_path / "moved"
    Path(promoted.checkpoint).rename(moved)
    try:
        result = _run_check(project, instance)
        assert not _check(result)
    finally:
        moved.rename(promoted.checkpoint)
    assert _check(_run_check(project, instance))  # the partition's promoted model, back in place


def test_a_test_set_without_answerable_queries_fails_before_training(small) -> None:
    project, instance = small
    singles = project.root / "singles.txt"  # one performance of each of two works, queried against each other
    singles.write_text('{"perf": "w000_p0"}\n{"perf": "w001_p0"}\n')
    checkpoints = sorted(project.training_dir.rglob("*_0*"))
    _write_config(project, tiny_training(project.dataset_dir, singles={"query_path": str(singles),
                                                                       "ref_path": str(singles)}))
    try:
        result = materialize(project, TRAINING, instance, raise_on_error=False)
    finally:
        _write_config(project, tiny_training(project.dataset_dir))
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error.message
    assert "test set 'singles': none of its 2 queries has another performance of its work" in failure
    assert sorted(project.training_dir.rglob("*_0*")) == checkpoints  # nothing trained


def test_a_clip_too_short_for_the_model_is_left_out_by_name_and_training_runs(tmp_path: Path) -> None:
    """Whatever the catalog accepts, training accepts: a 0.3 s clip (8 CQT frames, the model needs 19 at
    mean_size 3) is left out of the splits and the test sets, named in the log and the metadata."""
    project = make_project(tmp_path, works=4, perfs=3, seconds=6.0)
    write_tone(project.dataset_dir / "wav" / "blip.wav", seconds=0.3)
    catalog = project.dataset_dir / "dataset.txt"
    work = json.loads(catalog.read_text().splitlines()[0])["work"]
    with catalog.open("a") as stream:
        stream.write(json.dumps({"perf": "blip", "wav": "wav/blip.wav", "dur_s": 0.3, "work": work}) + "\n")
    instance = dg.DagsterInstance.ephemeral()
    materialize(project, DATA_ASSETS, instance)
    _write_config(project, tiny_training(project.dataset_dir))
    result = _train(project, instance, promote=True)
    assert result.success
    assert sorted(_metadata(result)["too_short_left_out"]) == ["blip", "sp_0.9-blip", "sp_1.1-blip"]
    logged = " ".join(e.message or "" for e in instance.all_logs(result.run_id) if e.level >= 30)
    assert "blip (catalog line 13, 0.3 s, 8 CQT frames): shorter than the 19 frames" in logged


def test_hparams_that_do_not_fit_the_features_are_refused() -> None:
    hp = training_hparams_from_dict({"input_dim": 84, "cqt": {"hop_size": 0.02}}, source="train.yaml")
    with pytest.raises(RunFailed, match=r"expects hop_size 0.02 s .*\(train.yaml\) but data.yaml says hop_size 0.04 s"
                                         r".*expects n_bins 84 \(train.yaml\) but data.yaml says n_bins 96"):
        check_compatible(hp, DataPrepHParams(source="data.yaml"))


# -- acceptance: training learns cover identification --------------------------------------------------------------

ACCEPTANCE_DATA = dict(DATA_HPARAMS, aug_speed_mode=[1.0], val_data_split=0.15, val_unseen=0.0,
                       test_data_split=0.2, test_data_unseen=0.0)
"""12 works × 8 performances of 8 s, originals only (the synthetic performances already vary in tempo): 2-3 of
each work's performances are held out for val and test, so the test queries are new recordings of known works."""


def acceptance_training(dataset_dir: Path) -> dict:
    """A window spanning the whole clip (100 pooled frames at mean_size 2) and pitch-roll augmentation against the
    performances' ±5-semitone key changes; d 32, 1 block. Early stopping is off; the checkpoint kept is the epoch of
    60 with the best retrieval mAP on the *validation* split (as the demo does: on 12 works the validation loss is
    a noisy guide to retrieval), so the test set is never used for a decision."""
    return tiny_training(
        dataset_dir, chunk_frame=[100, 80, 60], chunk_s=8.0, mean_size=2, learning_rate=0.004, max_epochs=60,
        spec_augmentation={"roll_pitch": {"prob": 0.8, "shift_num": 6, "method": "flex_melody"}},
        val={"query_path": str(dataset_dir / "val.txt"), "ref_path": str(dataset_dir / "full.txt")},
        early_stop_metric="mAP", map_stopping_testsets=["val"],
    )


def test_training_beats_the_untrained_model_by_0_2_map(tmp_path: Path) -> None:
    project = make_project(tmp_path, works=12, perfs=8, seconds=8.0, data_hparams=ACCEPTANCE_DATA)
    instance = dg.DagsterInstance.ephemeral()
    materialize(project, DATA_ASSETS, instance)
    _write_config(project, acceptance_training(project.dataset_dir))
    meta = _metadata(_train(project, instance))

    hp = TrainingLayout.at(project.training_dir).hparams()
    data_hp = DatasetLayout.at(project.dataset_dir).hparams()
    table = feature_store.feature_table(project.store, "dataset", settings_for(data_hp).settings_hash())
    [test_set] = [ts for ts in retrieval_test_sets(hp, table, project.training_dir)[0] if ts.name == "covers"]
    device = torch.device("cpu")
    torch.manual_seed(hp.seed)  # the trainer's initialisation: same seed, same architecture
    model = CoverHunter(ModelConfig.from_hparams(hp, meta["num_classes"]))
    untrained = evaluate(Embedder.for_hparams(model, hp, device), test_set).metrics.mean_ap
    promoted = model_store.promoted_model(project.store, "dataset")
    model.load_state_dict(torch.load(promoted.checkpoint, weights_only=True)["generator"])
    trained = evaluate(Embedder.for_hparams(model, hp, device), test_set).metrics.mean_ap
    print(f"test mAP untrained {untrained:.3f}, trained {trained:.3f} (best epoch {meta['best_epoch']})")
    assert trained == pytest.approx(meta["mAP/covers"])  # the asset reports the promoted checkpoint's score
    assert len(test_set.queries) >= 16
    assert trained >= untrained + 0.2
