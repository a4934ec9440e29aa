"""Training speed without changing results: evaluation embeds each track once per epoch; worker processes persist
across epochs yet draw each epoch's chunks anew, the same as in-process loading; mixed precision and torch.compile
train to the same losses (within their rounding)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from csi_model.augment import SpecAugment
from csi_model.dataset import ChunkDataset, EpochBatches, collate_chunks
from csi_model.embedding import Embedder
from csi_model.evaluation import RetrievalTestSet, evaluate
from csi_model.hparams import HParamsError, RandomEraseHParams, RollPitchHParams, SpecAugHParams
from csi_model.model import CoverHunter, ModelConfig
from csi_model.training import StepEnded, Trainer, train
from tests.train_fixtures import synthetic_features, tiny_hparams


def test_test_sets_sharing_references_embed_each_track_once_with_the_same_scores(tmp_path) -> None:
    items = synthetic_features(tmp_path, n_works=3, perfs_per_work=3, n_frames=(120, 160))
    hp = tiny_hparams()
    model = CoverHunter(ModelConfig.from_hparams(hp, 3)).eval()
    sets = [RetrievalTestSet("val", items[:3], items), RetrievalTestSet("test", items[3:6], items)]
    tracks_seen: list[int] = []
    model._encoder.register_forward_pre_hook(lambda _module, args: tracks_seen.append(args[0].shape[0]))
    embedder = Embedder.for_hparams(model, hp, torch.device("cpu"))
    alone = [evaluate(embedder, ts).metrics for ts in sets]
    forward_alone = sum(tracks_seen)
    tracks_seen.clear()
    shared: dict = {}
    together = [evaluate(embedder, ts, shared).metrics for ts in sets]
    assert [dataclasses.asdict(m) for m in together] == [dataclasses.asdict(m) for m in alone]
    assert set(shared) == {it.feat_path for it in items}
    assert 2 * sum(tracks_seen) == forward_alone  # the second set's queries and references are all known


# -- worker processes, mixed precision, torch.compile ---------------------------------------------------------

AUGMENT = SpecAugHParams(RandomEraseHParams(prob=0.5, erase_num=2), RollPitchHParams(prob=0.5, shift_num=2))


def _epochs_of_chunks(items, num_workers: int, epochs: int = 2) -> list[list[torch.Tensor]]:
    """The chunks a persistent-worker loader yields for the same batches of indices in each epoch."""
    ds = ChunkDataset(items, chunk_frames=40, mean_size=2, augment=SpecAugment(AUGMENT).batch, seed=5)
    batches = EpochBatches([[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    loader = DataLoader(ds, batch_sampler=batches, collate_fn=collate_chunks, num_workers=num_workers,
                        persistent_workers=num_workers > 0)
    out = []
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        out.append([feats for feats, _, _ in loader])
    return out


def test_persistent_workers_draw_new_chunks_each_epoch_whatever_the_worker_count(tmp_path) -> None:
    items = synthetic_features(tmp_path, n_works=3, perfs_per_work=3, n_frames=(120, 160))
    with_workers = _epochs_of_chunks(items, num_workers=2)
    first, second = with_workers
    assert all(not torch.equal(a, b) for a, b in zip(first, second))  # the epoch reached the persistent workers
    in_process = _epochs_of_chunks(items, num_workers=0)
    for epoch_a, epoch_b in zip(with_workers, in_process):  # draws depend on (seed, epoch, batch), not the worker
        assert all(torch.equal(a, b) for a, b in zip(epoch_a, epoch_b))


def test_a_run_with_two_workers_repeats_and_resumes_exactly(tmp_path) -> None:
    items = synthetic_features(tmp_path, n_works=4, perfs_per_work=4, n_frames=(60, 90))
    hp = tiny_hparams(max_epochs=2, num_workers=2, spec_augmentation=AUGMENT)
    first = train(hp, items, tmp_path / "a")
    again = train(hp, items, tmp_path / "b")
    assert [r.train for r in first.history] == [r.train for r in again.history]
    assert first.history[0].train != first.history[1].train
    in_process = train(dataclasses.replace(hp, num_workers=0), items, tmp_path / "c")
    assert [r.train for r in in_process.history] == [r.train for r in first.history]
    train(dataclasses.replace(hp, max_epochs=1), items, tmp_path / "d")
    resumed = train(hp, items, tmp_path / "d")
    assert [r.train for r in resumed.history] == [r.train for r in first.history]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_with_finite_losses_and_the_fp32_first_loss(tmp_path, precision: str) -> None:
    items = synthetic_features(tmp_path, n_works=4, perfs_per_work=4, n_frames=(60, 90))

    def run(hp, folder: str) -> tuple[list[float], dict[str, float]]:
        losses: list[float] = []
        result = train(hp, items, tmp_path / folder,
                       progress=lambda event: losses.append(event.losses["total"]) if isinstance(event, StepEnded)
                       else None)
        return losses, result.history[0].train

    full_steps, full = run(tiny_hparams(max_epochs=1), "fp32")
    mixed_steps, mixed = run(tiny_hparams(max_epochs=1, precision=precision), precision)
    assert mixed != full and all(np.isfinite(v) for v in mixed.values())  # autocast really ran, nothing overflowed
    assert mixed_steps[0] == pytest.approx(full_steps[0], rel=0.02)  # same weights and batch: rounding only


def test_precision_auto_is_fp32_on_cpu_and_unknown_values_are_rejected() -> None:
    from csi_model.devices import autocast_dtype

    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(HParamsError, match="precision"):
        tiny_hparams(precision="fp8")


def test_compiled_training_runs_and_computes_what_the_eager_model_does(tmp_path) -> None:
    items = synthetic_features(tmp_path, n_works=2, perfs_per_work=4, n_frames=(60, 60))
    hp = tiny_hparams(max_epochs=1, chunk_frame=(24,), compile=True)
    result = train(hp, items, tmp_path / "compiled")
    assert all(np.isfinite(v) for v in result.history[0].train.values())
    # dropout masks come from another generator once compiled, so compare without dropout: eval mode
    trainer = Trainer(hp, items, tmp_path / "again")
    trainer.model.eval()
    feats = torch.from_numpy(np.stack([np.load(it.feat_path)[:48:2] for it in items[:4]]))
    lengths = torch.tensor([24, 24, 20, 16])
    with torch.no_grad():
        compiled, eager = trainer.forward(feats, lengths), trainer.model(feats, lengths)
    assert trainer.forward is not trainer.model
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
