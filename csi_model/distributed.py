"""Data-parallel training over several processes (``torch.distributed``, launched by ``torchrun``).

Every rank runs the same :class:`csi_model.training.Trainer` on its own device; gradients are averaged by
``DistributedDataParallel``, so after each optimizer step every rank holds the same parameters. The m-per-class
sampler is sharded by position: every rank draws the whole epoch's batch order from the same generator (the same
seed and the same state on every rank) and keeps batches ``rank, rank + W, rank + 2W, ...``, so the ranks see
disjoint batches of one global deterministic order and their generators stay equal without any communication.
Rank 0 alone writes checkpoints, logs and TensorBoard events; the others wait at a barrier. A checkpoint also holds
every rank's RNG state, so a resumed run with the same number of processes repeats the uninterrupted one exactly.

One process (``world_size`` 1) is :data:`SINGLE`: every collective here is then a no-op and nothing changes.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import Sampler

from csi_model.devices import pick_device
from csi_model.sampler import MPerClassBatchSampler

T = TypeVar("T")
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What ``torchrun`` sets for every process it starts; the process group is initialised from them."""


class DistributedSetupError(RuntimeError):
    """The environment cannot run the requested multi-process training (missing variables, devices, backend)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the process group, and the few collectives training needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and results."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def seed_parts(self) -> tuple[int, ...]:
        """Extra seed material that gives each rank its own random stream; empty in one process (seeds unchanged)."""
        return (self.rank,) if self.distributed else ()

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank (a picklable object)."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T] | None:
        """Every rank's ``value`` in rank order on rank 0; None on the other ranks. Values travel as
        ``torch.save`` bytes (tensors pickled by ``gather_object`` itself do not load back) and are read with
        ``weights_only``: tensors, numbers, strings and containers of them."""
        if not self.distributed:
            return [value]
        payload = io.BytesIO()
        torch.save(value, payload)
        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        torch.distributed.gather_object(payload.getvalue(), out, dst=0)
        return None if out is None else [torch.load(io.BytesIO(b), weights_only=True) for b in out]

    def all_finite(self, value: torch.Tensor) -> bool:
        """True when ``value`` is finite on every rank: all ranks then agree to skip (or take) a step together."""
        finite = torch.isfinite(value.detach()).all().to(torch.float32).reshape(1)
        if self.distributed:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        return bool(finite.item())

    def mean(self, values: Mapping[str, float]) -> dict[str, float]:
        """The per-key mean of every rank's ``values`` (each rank's epoch means of its own batches)."""
        if not self.distributed:
            return dict(values)
        every: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(every, dict(values))
        return {key: sum(v[key] for v in every) / len(every) for key in every[0]}


SINGLE = Ranks()


def steps_per_rank(num_iters: int, world_size: int) -> int:
    """Batches each of ``world_size`` ranks takes from an epoch of ``num_iters``: an epoch covers about the same
    data as in one process; at least one batch each, so a small data set still trains."""
    return max(1, num_iters // world_size)


class ShardedBatchSampler(Sampler[list[int]]):
    """Rank ``rank``'s share of an :class:`MPerClassBatchSampler`: positions ``rank, rank + W, ...`` of the
    ``W · steps_per_rank`` batches the sampler draws this epoch.

    The whole epoch is drawn when iteration starts, so every rank advances the generator by the same amount however
    far a loader is iterated (``zip`` stops at the first exhausted loader)."""

    def __init__(self, sampler: MPerClassBatchSampler, ranks: Ranks) -> None:
        self.sampler = sampler
        self.ranks = ranks
        self.num_iters = steps_per_rank(len(sampler), ranks.world_size)

    def __len__(self) -> int:
        return self.num_iters

    def __iter__(self) -> Iterator[list[int]]:
        batches = list(self.sampler.draw(self.num_iters * self.ranks.world_size))
        return iter(batches[self.ranks.rank :: self.ranks.world_size])


def shard(sampler: MPerClassBatchSampler, ranks: Ranks) -> Sampler[list[int]]:
    """The sampler itself in one process, else this rank's share of it."""
    return ShardedBatchSampler(sampler, ranks) if ranks.distributed else sampler


def wrap_model(model: nn.Module, device: torch.device, ranks: Ranks) -> nn.Module:
    """The module that training steps call: ``model`` itself in one process, else a ``DistributedDataParallel``
    around it. Checkpoints are always written from ``model``, so their tensor names carry no ``module.`` prefix."""
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


class NullWriter:
    """The TensorBoard writer of the ranks that do not log (every rank but 0)."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def ranks_from_env(env: Mapping[str, str] | None = None) -> Ranks:
    """The rank, world size and local rank ``torchrun`` set; a missing or malformed variable names itself."""
    env = os.environ if env is None else env
    missing = [name for name in ENV_VARS if name not in env]
    if missing:
        raise DistributedSetupError(f"environment variables {', '.join(missing)} are not set: start this process with "
                                    f"torchrun (e.g. torchrun --nproc_per_node 2 -m csi_model.distributed_train JOB)")
    try:
        ranks = Ranks(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]))
    except ValueError as err:
        raise DistributedSetupError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {err}") from None
    if not 0 <= ranks.rank < ranks.world_size:
        raise DistributedSetupError(f"RANK {ranks.rank} is outside WORLD_SIZE {ranks.world_size}")
    return ranks


def device_for(requested: str | None, ranks: Ranks) -> torch.device:
    """This rank's device: ``cuda:<local rank>`` when the hparams' device resolves to CUDA, else the CPU. Apple's
    MPS has no multi-process backend: an error rather than a silent fall-back to a slower device."""
    device = pick_device(requested)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if ranks.local_rank >= count:
            raise DistributedSetupError(f"local rank {ranks.local_rank} has no GPU: this machine has {count}; "
                                        f"use at most {count} processes per node (distributed.nproc)")
        return torch.device("cuda", ranks.local_rank)
    if device.type != "cpu":
        raise DistributedSetupError(f"device {device.type!r} cannot train in several processes; set device: cpu or "
                                    f"cuda, or distributed.nproc: 1")
    return device


def backend_for(requested: str, device: torch.device) -> str:
    """``auto`` → nccl on CUDA, gloo on the CPU; nccl on the CPU is an error (it only moves CUDA tensors)."""
    if requested == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if requested == "nccl" and device.type != "cuda":
        raise DistributedSetupError(f"backend nccl needs CUDA devices, this run trains on {device}; use gloo or auto")
    return requested


@contextlib.contextmanager
def process_group(backend: str = "auto", device: str | None = None) -> Iterator[tuple[Ranks, torch.device]]:
    """Join the process group described by ``torchrun``'s environment for the duration of the block; yields this
    process's ranks and device. The group is torn down on the way out, error or not; after a block that ended
    normally, only once every rank has ended it (a rank that tears its gloo connections down while another still
    holds them can make that one abort on exit: "terminate called without an active exception", seen on a busy
    machine)."""
    ranks = ranks_from_env()
    chosen = device_for(device, ranks)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    torch.distributed.init_process_group(backend_for(backend, chosen), rank=ranks.rank,
                                         world_size=ranks.world_size)
    try:
        yield ranks, chosen
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
