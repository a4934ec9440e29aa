"""Data-parallel training: 2 CPU processes (gloo, loopback) train a tiny model; after every step both ranks hold the
same parameters, their batches are disjoint positions of one global order, a resumed run equals an uninterrupted
one, and the torchrun launcher runs a job and reports a failed rank with its stderr."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from csi_assets.distributed_training import DistributedTrainingFailed, free_port, run_torchrun, train_model
from csi_model import checkpoint as ckpt
from csi_model.distributed import (
    DistributedSetupError,
    Ranks,
    ShardedBatchSampler,
    backend_for,
    process_group,
    ranks_from_env,
    steps_per_rank,
)
from csi_model.distributed_train import TrainingJob, read_job, write_job
from csi_model.hparams import DistributedHParams, HParamsError, training_hparams_from_dict
from csi_model.model import CoverHunter, ModelConfig
from csi_model.sampler import MPerClassBatchSampler
from csi_model.training import EpochEnded, RetrievalTestSet, StepEnded, Trainer
from tests.train_fixtures import synthetic_features, tiny_hparams

WORLD = 2


def two_process_hparams(**overrides: object):
    """The tiny configuration, 2 processes on gloo; 2 epochs of 2 steps per loader and rank."""
    return tiny_hparams(**{"distributed": DistributedHParams(nproc=WORLD, backend="gloo"), "max_epochs": 2,
                           **overrides})


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return synthetic_features(tmp_path_factory.mktemp("features"), n_works=6, perfs_per_work=6, seed=3)


# -- the sharded sampler -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [2, 3, 5])
@pytest.mark.parametrize("seed", range(4))
def test_shards_are_the_positions_of_one_global_order_and_generators_stay_equal(world, seed):
    draw = np.random.default_rng(seed)
    labels = list(draw.integers(0, int(draw.integers(2, 9)), size=int(draw.integers(3, 60))))
    m = int(draw.integers(1, 4))
    batch_size = m * int(draw.integers(1, 5))

    def sampler() -> MPerClassBatchSampler:
        return MPerClassBatchSampler(labels, m, batch_size, np.random.default_rng([seed, 9]))

    reference = sampler()
    shards = [ShardedBatchSampler(sampler(), Ranks(rank, world, rank)) for rank in range(world)]
    for _ in range(3):  # epochs
        steps = steps_per_rank(len(reference), world)
        expected = list(reference.draw(steps * world))
        drawn = [list(s) for s in shards]
        assert all(len(d) == len(s) == steps for d, s in zip(drawn, shards))
        assert [drawn[k % world][k // world] for k in range(steps * world)] == expected
        states = {json.dumps(s.sampler.rng.bit_generator.state, default=str) for s in shards}
        assert states == {json.dumps(reference.rng.bit_generator.state, default=str)}


def test_a_partly_iterated_shard_still_draws_its_whole_epoch():
    """``zip`` stops at the first exhausted loader: a rank must not leave its generator behind the others'."""
    labels = [0, 0, 1, 1, 2, 2, 3, 3] * 3
    a = ShardedBatchSampler(MPerClassBatchSampler(labels, 2, 4, np.random.default_rng(1)), Ranks(0, 2, 0))
    b = ShardedBatchSampler(MPerClassBatchSampler(labels, 2, 4, np.random.default_rng(1)), Ranks(1, 2, 1))
    next(iter(a))
    list(b)
    assert a.sampler.rng.bit_generator.state == b.sampler.rng.bit_generator.state


# -- settings ------------------------------------------------------------------------------------------------------


def test_distributed_hparams_default_to_one_process_and_are_checked():
    assert training_hparams_from_dict({}).distributed == DistributedHParams(1, "auto")
    hp = training_hparams_from_dict({"distributed": {"nproc": 4, "backend": "gloo"}}, source="h.yaml")
    assert hp.distributed == DistributedHParams(4, "gloo")
    with pytest.raises(HParamsError, match="distributed.nproc: 0 is not >= 1"):
        training_hparams_from_dict({"distributed": {"nproc": 0}})
    with pytest.raises(HParamsError, match="distributed.backend: 'mpi' is not one of auto, nccl, gloo"):
        training_hparams_from_dict({"distributed": {"backend": "mpi"}})
    assert backend_for("auto", torch.device("cpu")) == "gloo"
    with pytest.raises(DistributedSetupError, match="nccl needs CUDA"):
        backend_for("nccl", torch.device("cpu"))


def test_a_one_process_run_of_multi_process_hparams_says_so(items, tmp_path):
    """Sweeps, label models and production folds train in one process whatever the hparams ask: never silently."""
    with pytest.warns(RuntimeWarning, match="distributed.nproc is 2 but this run trains in 1 process"):
        Trainer(two_process_hparams(), items, tmp_path)


def test_missing_torchrun_variables_are_named():
    with pytest.raises(DistributedSetupError, match="MASTER_ADDR, MASTER_PORT are not set: start this process with "
                                                    "torchrun"):
        ranks_from_env({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert ranks_from_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": "1"}) == Ranks(1, 2, 1)


def test_a_job_file_reads_back_as_written(items, tmp_path):
    hp = training_hparams_from_dict({**_plain_tiny(), "distributed": {"nproc": 2},
                                     "covers": {"query_path": "q.txt", "ref_path": "r.txt"}}, source="cfg.yaml")
    test_set = RetrievalTestSet("covers", items[:6], items[6:12], ((0, 1), (2, 3)), every_n_epoch=2)
    from csi_model.augment import TempoRange
    job = TrainingJob(hp, tmp_path, items[:20], items[20:24], items[24:], [test_set], TempoRange(0.9, 1.1, 3))
    assert read_job(write_job(job)) == dataclasses.replace(
        job, train_items=list(job.train_items), val_items=list(job.val_items), test_items=list(job.test_items),
        test_sets=[dataclasses.replace(test_set, queries=list(test_set.queries), refs=list(test_set.refs))])


def _plain_tiny() -> dict:
    from csi_model.hparams import to_dict
    return to_dict(tiny_hparams())


# -- two processes -------------------------------------------------------------------------------------------------


def _parameter_hash(model: torch.nn.Module) -> str:
    return ckpt.model_fingerprint(dict(model.named_parameters()))


def _rank_main(rank: int, port: int, hp, items, folder: Path) -> None:
    """One rank: train straight for 2 epochs, recording each step's parameter hash and the batches this rank was
    handed; then train 1 epoch and resume to 2 in another folder, for the resume comparison."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with process_group("gloo", "cpu") as (ranks, device):
        trainer = Trainer(hp, items, folder / "straight", val_items=items[:8], device=device, ranks=ranks)
        # the sharded samplers, under EpochBatches
        planned = [copy.deepcopy(loader.batch_sampler.batches) for loader in trainer.train_loaders]
        batches = [[list(sampler) for sampler in planned] for _ in range(hp.max_epochs)]
        hashes: list[str] = []
        trainer.progress = lambda event: (
            hashes.append(_parameter_hash(trainer.model)) if isinstance(event, StepEnded) else None)
        straight = trainer.run()
        Trainer(dataclasses.replace(hp, max_epochs=1), items, folder / "resumed", val_items=items[:8], device=device,
                ranks=ranks).run()
        resumed = Trainer(hp, items, folder / "resumed", val_items=items[:8], device=device, ranks=ranks).run()
        record = {"hashes": hashes, "batches": batches, "crop_seeds": [ds.seed for ds in trainer.train_sets],
                  "losses": [r.train for r in straight.history],
                  "val": [r.val for r in straight.history],
                  "resumed_losses": [r.train for r in resumed.history], "epochs_run": resumed.epochs_run}
        (folder / f"rank{rank}.json").write_text(json.dumps(record))


def test_two_processes_keep_identical_parameters_on_disjoint_shards_and_resume_exactly(items, tmp_path):
    hp = two_process_hparams()
    mp.spawn(_rank_main, args=(free_port(), hp, items, tmp_path), nprocs=WORLD, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]

    steps_per_epoch = 3 * steps_per_rank(36 // 8, WORLD)  # 36 items, batch 8: 4 batches → 2 per rank, 3 loaders
    assert len(ranks[0]["hashes"]) == len(ranks[1]["hashes"]) == hp.max_epochs * steps_per_epoch
    assert ranks[0]["hashes"] == ranks[1]["hashes"]  # identical parameters after every step
    assert len(set(ranks[0]["hashes"])) == len(ranks[0]["hashes"])  # and every step changed them

    labels = [it.work_id for it in items]
    for loader in range(3):  # the trainer's sampler generators, seeded as it seeds them
        reference = MPerClassBatchSampler(labels, hp.m_per_class, hp.batch_size,
                                          np.random.default_rng([hp.seed, 1, loader]))
        for epoch in range(hp.max_epochs):
            expected = list(reference.draw(2 * WORLD))
            shards = [r["batches"][epoch][loader] for r in ranks]
            assert [shards[k % WORLD][k // WORLD] for k in range(2 * WORLD)] == expected
            assert shards[0] != shards[1]
    assert set(ranks[0]["crop_seeds"]).isdisjoint(ranks[1]["crop_seeds"])  # each rank draws its own chunks

    # rank 0 alone wrote checkpoints and logs; they load into the one-process model (no "module." prefix)
    assert [p.epoch for p in ckpt.list_checkpoints(tmp_path / "straight" / "checkpoints")] == [0, 1]
    assert len(list((tmp_path / "straight" / "logs" / "train").glob("events.out.tfevents.*"))) == 1
    model = CoverHunter(ModelConfig.from_hparams(hp, 6))
    ckpt.load_generator(tmp_path / "straight" / "checkpoints" / "g_00000001", model)
    assert len(ckpt.load_training_state(tmp_path / "straight" / "checkpoints" / "do_00000001")["rank_rng"]) == WORLD

    # resumed after epoch 0: the same losses, and bit-identical weights and optimizer state, as the straight run
    assert ranks[0]["epochs_run"] == 1
    assert ranks[0]["resumed_losses"] == ranks[0]["losses"] == ranks[1]["losses"]
    assert ranks[0]["val"] == ranks[1]["val"]  # rank 0's evaluation decides on every rank
    for name in ("g_00000001", "do_00000001"):
        straight = torch.load(tmp_path / "straight" / "checkpoints" / name, weights_only=False)
        resumed = torch.load(tmp_path / "resumed" / "checkpoints" / name, weights_only=False)
        _assert_same(straight, resumed, name)


def _assert_same(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            if key != "history":  # holds wall-clock seconds
                _assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# -- the torchrun launcher -----------------------------------------------------------------------------------------


def test_torchrun_launcher_trains_and_streams_progress(items, tmp_path):
    hp = two_process_hparams(max_epochs=1)
    progress, lines = [], []
    result = train_model(hp, items, tmp_path, val_items=items[:8],
                         test_sets=[RetrievalTestSet("tiny", items[:12])],
                         progress=progress.append, log=lines.append)
    assert result.epochs_run == 1 and result.last_epoch == 0 and result.num_classes == 6
    assert result.latest_checkpoint == tmp_path / "checkpoints" / "g_00000000"
    assert "tiny" in result.history[0].mean_ap and "foc_loss" in result.history[0].val
    assert [e.step for e in progress if isinstance(e, StepEnded)] == list(range(1, 7))
    assert isinstance(progress[-1], EpochEnded)
    assert any("torch.distributed.run" in line and "--nproc_per_node 2" in line for line in lines)
    model = CoverHunter(ModelConfig.from_hparams(hp, 6))
    ckpt.load_generator(result.best_checkpoint, model)


def test_a_failing_rank_is_reported_with_its_stderr(tmp_path):
    """NaN features: every rank skips the same non-finite steps (no rank waits for another's gradients) until the
    run aborts; the launcher's error leads with the ranks' own errors."""
    items = synthetic_features(tmp_path / "features", n_works=4, perfs_per_work=4, seed=1)
    for item in items:
        np.save(item.feat_path, np.full((item.n_frames, 48), np.nan, dtype=np.float32))
    job = TrainingJob(two_process_hparams(max_epochs=1), tmp_path / "model", items)
    with pytest.raises(DistributedTrainingFailed) as failure:
        run_torchrun(job, None, lambda line: None)
    message = str(failure.value).splitlines()
    assert message[0].startswith("torchrun with 2 processes exited with code 1 (training folder")
    cause = "TrainingDiverged: training diverged: the loss was nan for 3 consecutive steps (last at step 3"
    assert any(line.startswith("rank ") and cause in line for line in message[1:3]), message[:3]
    assert message.index("the last lines of its stderr:") <= 3
    assert not (tmp_path / "model" / "distributed" / "result.json").exists()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_caller_that_gives_up_stops_the_processes(tmp_path):
    """A cancelled run (here: the progress callback raises at step 1 of a 50-epoch run) terminates torchrun and its
    ranks at once, and its output readers end cleanly: no epoch is ever saved, no reader fails on a closed pipe."""
    items = synthetic_features(tmp_path / "features", n_works=24, perfs_per_work=6, seed=2)  # 27 steps per epoch

    def cancel(event: object) -> None:
        raise RuntimeError("cancelled")

    job = TrainingJob(two_process_hparams(max_epochs=50), tmp_path / "model", items)
    with pytest.raises(RuntimeError, match="cancelled"):
        run_torchrun(job, cancel, lambda line: None)
    assert ckpt.list_checkpoints(tmp_path / "model" / "checkpoints") == []


def test_progress_lines_round_trip_and_a_cut_line_is_plain_output() -> None:
    """A progress line carries its typed event whole; one cut short (its process died mid-write) or garbled is not
    an event, so the launcher logs it instead of failing the run on it."""
    import io
    from contextlib import redirect_stdout

    from csi_model.distributed_train import parse_progress, print_progress

    event = StepEnded(step=3, epoch=1, lr=1e-3, losses={"total": 0.5})
    out = io.StringIO()
    with redirect_stdout(out):
        print_progress(event)
    line = out.getvalue().rstrip("\n")
    assert parse_progress(line) == event
    for cut in (len(line) - 1, len(line) // 2, len("csi-progress ") + 3):
        assert parse_progress(line[:cut]) is None
    assert parse_progress("csi-progress not base64 at all!") is None
    assert parse_progress("an ordinary log line") is None
