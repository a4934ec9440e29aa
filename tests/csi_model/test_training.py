"""Training loop: learning, divergence abort, early stopping, exact resume, retrieval gain. Tiny CPU configs."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from csi_model import checkpoint as ckpt
from csi_model.dataset import FeatureItem
from csi_model.early_stopping import EarlyStopping
from csi_model.embedding import Embedder
from csi_model.evaluation import RetrievalTestSet, evaluate
from csi_model.hparams import RandomEraseHParams, RollPitchHParams, SpecAugHParams
from csi_model.metrics import NoAnswerableQueries
from csi_model.model import CoverHunter, ModelConfig
from csi_model.training import CheckpointSaved, EpochEnded, StepEnded, TestSetEvaluated, TrainingDiverged, train
from tests.train_fixtures import synthetic_features, tiny_hparams

AUGMENT = SpecAugHParams(RandomEraseHParams(prob=0.5, erase_num=2), RollPitchHParams(prob=0.5, shift_num=2))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors on a shared 2-core machine: one intra-op thread avoids spin-wait contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, list[FeatureItem]]:
    folder = tmp_path_factory.mktemp("features")
    items = synthetic_features(folder, n_works=6, perfs_per_work=6, seed=3)
    train_items = [it for it in items if int(it.perf[-1]) < 4]
    held_out = [it for it in items if int(it.perf[-1]) >= 4]
    unseen = synthetic_features(folder / "unseen", n_works=3, perfs_per_work=2, seed=4, first_work_id=6)
    return {"train": train_items, "held_out": held_out, "unseen": unseen}


def test_loss_decreases_and_result_is_complete(data, tmp_path):
    hp = tiny_hparams(max_epochs=4)
    seen = []
    result = train(hp, data["train"], tmp_path, val_items=data["held_out"],
                   progress=seen.append)
    totals = [r.train["total"] for r in result.history]
    assert result.epochs_run == 4 and len(result.history) == 4
    assert totals[-1] < 0.7 * totals[0]
    assert result.history[-1].val["foc_loss"] < result.history[0].val["foc_loss"]
    assert result.num_classes == 6 and result.device == "cpu"
    assert result.latest_checkpoint == tmp_path / "checkpoints" / "g_00000003"
    assert result.best_checkpoint is not None and result.best_checkpoint.exists()
    steps_per_epoch = 3 * 3  # 24 items, batch 8 -> 3 batches per loader, three loaders
    steps = [e for e in seen if isinstance(e, StepEnded)]
    assert [e.step for e in steps] == list(range(1, 4 * steps_per_epoch + 1))
    assert {"total", "foc_loss", "tri_loss"} <= set(steps[0].losses) and steps[0].lr > 0
    assert [e.record for e in seen if isinstance(e, EpochEnded)] == result.history
    saved = [e.checkpoint.generator for e in seen if isinstance(e, CheckpointSaved)]
    assert saved[-1] == result.latest_checkpoint
    assert {type(e) for e in seen} == {StepEnded, CheckpointSaved, EpochEnded}  # no test sets: none evaluated
    assert any((tmp_path / "logs" / "train").glob("events.out.tfevents.*"))


def test_tensorboard_scalar_names(data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hp = tiny_hparams(max_epochs=1)
    test_set = RetrievalTestSet("tiny", data["held_out"])
    train(hp, data["train"], tmp_path, val_items=data["held_out"], test_items=data["held_out"],
          test_sets=[test_set])
    events = EventAccumulator(str(tmp_path / "logs" / "train"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"csi/lr", "csi/foc_loss", "csi/tri_loss", "csi/total", "csi_val/foc_loss", "csi_test/foc_loss",
            "mAP/tiny", "hit_rate/tiny"} <= tags


def test_divergence_aborts_with_a_clear_error(data, tmp_path):
    hp = tiny_hparams(learning_rate=1e30, min_lr=1e29, max_epochs=3)
    with pytest.raises(TrainingDiverged, match="3 consecutive steps"):
        train(hp, data["train"], tmp_path)


def test_poisoned_features_abort(tmp_path):
    items = synthetic_features(tmp_path, n_works=2, perfs_per_work=4, seed=1)
    for item in items:
        np.save(item.feat_path, np.full((item.n_frames, 48), np.nan, dtype=np.float32))
    with pytest.raises(TrainingDiverged, match="NaN"):
        train(tiny_hparams(max_epochs=2), items, tmp_path / "model")


def test_too_short_tracks_are_named_before_training(tmp_path):
    items = synthetic_features(tmp_path, n_works=2, perfs_per_work=4, n_frames=(12, 12), seed=1)
    with pytest.raises(ValueError, match="fewer than 13 raw frames.*w000_p0.npy"):
        train(tiny_hparams(), items, tmp_path / "model")


def test_test_set_without_answerable_queries_is_rejected_before_training(data, tmp_path):
    singles = [it for it in data["unseen"] if it.perf.endswith("p0")]  # one performance per work
    with pytest.raises(NoAnswerableQueries, match="test set 'singles': none of its 3 queries"):
        train(tiny_hparams(), data["train"], tmp_path, test_sets=[RetrievalTestSet("singles", singles)])
    assert not (tmp_path / "checkpoints").exists()


def test_training_time_metrics_leave_unanswerable_queries_out(data):
    hp = tiny_hparams()
    torch.manual_seed(hp.seed)
    model = CoverHunter(ModelConfig.from_hparams(hp, 6))
    refs = data["held_out"]
    pairs = tuple((i, i) for i in range(len(refs)))
    embedder = Embedder.for_hparams(model, hp, torch.device("cpu"))
    plain = evaluate(embedder, RetrievalTestSet("plain", refs, refs, pairs)).metrics
    lonely = RetrievalTestSet("lonely", [*refs, data["unseen"][0]], refs, pairs)  # its work has no reference
    scored = evaluate(embedder, lonely).metrics
    assert (scored.n_queries, scored.n_unanswerable) == (plain.n_queries + 1, 1)
    assert (scored.mean_ap, scored.mr1, scored.hit_rate) == (plain.mean_ap, plain.mr1, plain.hit_rate)
    assert scored.mr1 >= 1.0


def test_early_stopping_stops_and_a_rerun_does_nothing(data, tmp_path):
    # Validation on works the classifier never sees: their focal loss only grows, so patience runs out.
    hp = tiny_hparams(max_epochs=10, early_stopping_patience=2)
    result = train(hp, data["train"], tmp_path, val_items=data["unseen"])
    assert result.stopped_early and result.epochs_run < 10
    assert result.last_epoch == result.best_epoch + 2
    again = train(hp, data["train"], tmp_path, val_items=data["unseen"])
    assert again.epochs_run == 0 and again.last_epoch == result.last_epoch


def test_resume_is_bit_identical(data, tmp_path):
    hp = tiny_hparams(max_epochs=3, spec_augmentation=AUGMENT, hold_steps=5, warmup=True, warmup_steps=4)
    kwargs = dict(val_items=data["held_out"], test_sets=[RetrievalTestSet("tiny", data["held_out"])])
    events = []
    straight = train(hp, data["train"], tmp_path / "straight", progress=events.append, **kwargs)
    scored = [(e.epoch, e.metrics.mean_ap) for e in events if isinstance(e, TestSetEvaluated) and e.name == "tiny"]
    assert scored == [(r.epoch, r.mean_ap["tiny"]) for r in straight.history]
    first = train(dataclasses.replace(hp, max_epochs=2), data["train"], tmp_path / "resumed", **kwargs)
    resumed = train(hp, data["train"], tmp_path / "resumed", **kwargs)
    assert (first.epochs_run, resumed.epochs_run, straight.epochs_run) == (2, 1, 3)
    assert [r.train for r in resumed.history] == [r.train for r in straight.history]
    assert resumed.history[-1].lr == straight.history[-1].lr
    model_a = ckpt.read_generator_state(straight.latest_checkpoint)
    model_b = ckpt.read_generator_state(resumed.latest_checkpoint)
    assert model_a.keys() == model_b.keys()
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    state_a = ckpt.load_training_state(ckpt.latest_checkpoint(tmp_path / "straight" / "checkpoints").state)
    state_b = ckpt.load_training_state(ckpt.latest_checkpoint(tmp_path / "resumed" / "checkpoints").state)
    assert _same(state_a["optim_g"], state_b["optim_g"])
    assert state_a["scheduler"] == state_b["scheduler"] and state_a["steps"] == state_b["steps"]
    assert state_a["generators"] == state_b["generators"]


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_seed_changes_the_run(data, tmp_path):
    a = train(tiny_hparams(max_epochs=1, seed=1), data["train"], tmp_path / "a")
    b = train(tiny_hparams(max_epochs=1, seed=2), data["train"], tmp_path / "b")
    assert a.history[0].train != b.history[0].train


def test_training_improves_retrieval_of_unseen_recordings(data, tmp_path):
    hp = tiny_hparams(max_epochs=6, learning_rate=0.003)
    test_set = RetrievalTestSet("held_out", data["held_out"])
    torch.manual_seed(hp.seed)
    untrained = CoverHunter(ModelConfig.from_hparams(hp, 6))
    before = evaluate(Embedder.for_hparams(untrained, hp, torch.device("cpu")), test_set).metrics.mean_ap
    result = train(hp, data["train"], tmp_path, test_sets=[test_set])
    after = result.history[-1].mean_ap["held_out"]
    assert after > before + 0.2, (before, after)


def test_map_early_stopping_uses_raw_best_and_smoothed_counter():
    stop = EarlyStopping("mAP", patience=2, smoothing_alpha=0.5)
    assert stop.update(0, 0.5)  # seeds the EMA
    assert stop.update(1, 0.9)  # raw best; smoothed 0.7 improves too
    assert not stop.update(2, 0.6)  # smoothed 0.65: counter 1
    assert not stop.update(3, 0.6, in_hold=True)  # frozen during hold
    assert stop.map_stopping_counter == 1 and not stop.should_stop
    assert not stop.update(4, 0.6)
    assert stop.should_stop and stop.best_checkpoint_epoch == 1 and stop.best_checkpoint_value == 0.9
    assert math.isclose(stop.smoothed_map, 0.6125)


def test_val_loss_early_stopping():
    stop = EarlyStopping("val_loss", patience=2)
    assert stop.update(0, 1.0) and not stop.update(1, 1.5) and stop.update(2, 0.8)
    assert stop.early_stopping_counter == 0
    stop.update(3, 0.9)
    stop.update(4, 0.9)
    assert stop.should_stop and stop.best_checkpoint_epoch == 2
    assert EarlyStopping.from_state_dict(stop.state_dict()) == stop


def test_prodigy_without_package_is_a_clear_error(data, tmp_path):
    try:
        import prodigyopt  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="prodigyopt"):
            train(tiny_hparams(optimizer="prodigy"), data["train"], tmp_path)
    else:
        pytest.skip("prodigyopt is installed")
