"""The training loop: resumable bit for bit from any checkpoint.

One epoch zips the three chunk-length loaders and visits each step's three batches in a shuffled order; each
batch is one AdamW step with the global grad norm clipped to 1.0. After the epoch come the validation loss (fixed
chunk starts, so the curve is not sampling noise), the test-set mAP, early stopping and the checkpoint.
A caller follows the run through typed events (:data:`TrainingEvent`: each step, each test set scored, each
checkpoint saved, each epoch's end); the test sets are scored by ``csi_model.evaluation``, the one evaluation path.

Exact resume: a checkpoint holds, besides weights and optimizer, the scheduler, early-stopping state, history and
every random stream (torch, the samplers' and the batch-order generators; each training batch's chunks are drawn
from (seed, epoch, batch number), whichever worker process cuts it). Evaluation runs under a forked torch RNG so
how often it runs never shifts training's random stream. Killed anywhere, a re-run repeats the interrupted epoch
exactly as the uninterrupted run did.

Several processes (``ranks``) train data-parallel through a few hooks here; :mod:`csi_model.distributed` says how.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter

from csi_model import checkpoint as ckpt
from csi_model.augment import SpecAugment, TempoRange, masked_mean_pool, tempo_resample
from csi_model.dataset import PAD_VALUE, ChunkDataset, EpochBatches, FeatureItem, collate_chunks
from csi_model.devices import autocast_dtype, pick_device
from csi_model.distributed import SINGLE, NullWriter, Ranks, shard, wrap_model
from csi_model.early_stopping import EarlyStopping
from csi_model.embedding import Embedder
from csi_model.evaluation import EmbeddingCache, RetrievalTestSet, evaluate
from csi_model.hparams import TrainingHParams
from csi_model.losses import CoverHunterLoss
from csi_model.metrics import RetrievalMetrics, require_answerable
from csi_model.model import CoverHunter, ModelConfig
from csi_model.sampler import MPerClassBatchSampler
from csi_model.scheduler import StepDecayLR

GRAD_CLIP_NORM = 1.0
MAX_CONSECUTIVE_NAN = 3


class TrainingDiverged(RuntimeError):
    """The loss was not finite for several consecutive steps: the run cannot recover by itself."""


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    steps: int  # global optimizer steps after this epoch
    lr: float
    train: dict[str, float]  # mean of each loss term over the epoch's steps
    val: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    mean_ap: dict[str, float] = field(default_factory=dict)
    hit_rate: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def flat(self) -> dict[str, float]:
        """Every number of the epoch under one name each: ``lr``, ``seconds``, ``train/<term>``, ``val/<term>``,
        ``test/<term>``, ``mAP/<test set>``, ``hit_rate/<test set>``."""
        out = {"lr": self.lr, "seconds": self.seconds}
        for prefix, values in (("train", self.train), ("val", self.val), ("test", self.test),
                               ("mAP", self.mean_ap), ("hit_rate", self.hit_rate)):
            out.update({f"{prefix}/{k}": v for k, v in values.items()})
        return out


@dataclass(frozen=True)
class StepEnded:
    """One optimizer step done (a step whose loss was not finite is skipped and reports nothing)."""

    step: int  # global optimizer steps so far
    epoch: int
    lr: float
    losses: dict[str, float]  # "total" and each loss term


@dataclass(frozen=True)
class TestSetEvaluated:
    """A retrieval test set scored with the epoch's weights."""

    epoch: int
    name: str
    metrics: RetrievalMetrics


@dataclass(frozen=True)
class CheckpointSaved:
    epoch: int
    checkpoint: ckpt.CheckpointPair


@dataclass(frozen=True)
class EpochEnded:
    """The epoch is complete: trained, evaluated, checkpointed when due; ``record`` is its history entry."""

    step: int
    record: EpochRecord


TrainingEvent = StepEnded | TestSetEvaluated | CheckpointSaved | EpochEnded
Progress = Callable[[TrainingEvent], None]
"""Called with every :data:`TrainingEvent` of a run, in order: steps, then per epoch its test sets, its
checkpoint (when one is saved) and its end."""


@dataclass(frozen=True)
class TrainingResult:
    epochs_run: int  # epochs trained by this call (0 when the run had already finished)
    last_epoch: int  # -1 when no epoch exists yet
    best_epoch: int
    best_value: float | None
    stopped_early: bool
    history: list[EpochRecord]  # every epoch of the run, resumed ones included
    wall_seconds: float
    device: str
    num_classes: int
    checkpoint_dir: Path
    best_checkpoint: Path | None  # the g_ file of the best epoch
    latest_checkpoint: Path | None


@dataclass(frozen=True)
class WarmStart:
    """Weights a run with no checkpoint of its own starts from instead of a random init; once it has checkpoints
    it resumes from those as usual, so a killed warm-started run continues exactly.

    ``state``: the source's do_ file, to carry the optimizer's per-parameter moments over; lr, betas and weight
    decay stay this run's hyper-parameters (the reference copied the old ones, which silently undid a swept
    ``adam_betas``). ``heads``: load the classifier and centres too (the same classes); False loads the embedding
    network only, for a run that learns other classes (a label model)."""

    generator: Path  # a g_ file
    state: Path | None = None  # its do_ file
    heads: bool = True


def train(
    hp: TrainingHParams,
    train_items: Sequence[FeatureItem],
    model_dir: str | Path,
    val_items: Sequence[FeatureItem] = (),
    test_items: Sequence[FeatureItem] = (),
    test_sets: Sequence[RetrievalTestSet] = (),
    device: str | torch.device | None = None,
    progress: Progress | None = None,
    run_id: str = "train",
    warm_start: WarmStart | None = None,
    tempo: TempoRange | None = None,
    ranks: Ranks = SINGLE,
) -> TrainingResult:
    """Train (or resume) in ``model_dir``: ``checkpoints/`` and ``logs/<run_id>/`` are created under it.

    ``warm_start``: weights a run with no checkpoint yet starts from (see :class:`WarmStart`). ``tempo`` turns on
    tempo augmentation in the feature domain (each training chunk at a random tempo); leave it None when
    ``train_items`` already hold rendered tempo variants, so the two are never stacked. ``ranks``: this process's
    place in a data-parallel run (see :mod:`csi_model.distributed`; its process group must be initialised)."""
    return Trainer(hp, train_items, model_dir, val_items, test_items, test_sets, device, progress, run_id,
                   warm_start, tempo, ranks).run()


class Trainer:
    def __init__(
        self,
        hp: TrainingHParams,
        train_items: Sequence[FeatureItem],
        model_dir: str | Path,
        val_items: Sequence[FeatureItem] = (),
        test_items: Sequence[FeatureItem] = (),
        test_sets: Sequence[RetrievalTestSet] = (),
        device: str | torch.device | None = None,
        progress: Progress | None = None,
        run_id: str = "train",
        warm_start: WarmStart | None = None,
        tempo: TempoRange | None = None,
        ranks: Ranks = SINGLE,
    ) -> None:
        if not train_items:
            raise ValueError("no training items: the train split is empty")
        self.hp = hp
        self.model_dir = Path(model_dir)
        self.checkpoint_dir = self.model_dir / "checkpoints"
        self.log_dir = self.model_dir / "logs" / run_id
        self.device = torch.device(device) if device is not None else pick_device(hp.device)
        self.progress = progress
        self.tempo = tempo
        self.ranks = ranks
        if hp.distributed.nproc != ranks.world_size:
            warnings.warn(f"{hp.source or '<hparams>'}: distributed.nproc is {hp.distributed.nproc} but this run "
                          f"trains in {ranks.world_size} process(es) (only trained_model launches several)",
                          RuntimeWarning, stacklevel=2)
        self.test_sets = list(test_sets)
        self.num_classes = _num_classes(hp, [train_items, val_items, test_items])
        for ts in self.test_sets:
            _check_long_enough([*ts.queries, *(ts.refs or ())], hp.mean_size, f"test set {ts.name!r}")
            require_answerable(ts.answerable(), f"test set {ts.name!r}")
        for name, items in (("train", train_items), ("val", val_items), ("test", test_items)):
            _check_long_enough(items, hp.mean_size, f"{name} split")

        torch.manual_seed(hp.seed)
        self.model = CoverHunter(ModelConfig.from_hparams(hp, self.num_classes)).to(self.device)
        self.train_model = wrap_model(self.model, self.device, ranks)  # what steps call; checkpoints save model
        if ranks.distributed:  # after the identical init: each rank its own dropout stream
            torch.manual_seed(_mix(hp.seed, 3, *ranks.seed_parts()))
        # the training step's forward: compiled on request (same parameters; evaluation runs the plain module)
        self.forward = torch.compile(self.train_model) if hp.compile else self.train_model
        self.amp_dtype = autocast_dtype(hp.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.loss = CoverHunterLoss.from_hparams(hp)
        self.optimizer = _optimizer(hp, self.model)
        self.scheduler = _scheduler(hp, self.optimizer)
        self.stopping = _early_stopping(hp, self.test_sets)
        self.sampler_rngs = [np.random.default_rng([hp.seed, 1, i]) for i in range(len(hp.chunk_frame))]
        self.order_rng = np.random.default_rng([hp.seed, 2])
        self.train_sets, self.train_batches, self.train_loaders = self._train_loaders(train_items)
        self.val_loader = self._fixed_loader(val_items)
        self.test_loader = self._fixed_loader(test_items)
        self.steps = 0
        self.last_epoch = -1
        self.stopped_early = False
        self.history: list[EpochRecord] = []
        self._nan_streak = 0
        self.warm_start = warm_start

    # -- set-up ----------------------------------------------------------------------------------------------

    def _train_loaders(self, items: Sequence[FeatureItem]
                       ) -> tuple[list[ChunkDataset], list[EpochBatches], list[DataLoader]]:
        """One loader per chunk length; its batches carry (epoch, batch number) to seed their draws, so worker
        processes can persist across epochs (``persistent_workers``) without repeating an epoch's chunks."""
        hp = self.hp
        augment = SpecAugment(hp.spec_augmentation).batch if hp.spec_augmentation is not None else None
        aug_seed = hp.spec_augmentation.seed if hp.spec_augmentation is not None else 0
        items = list(items) * (self.tempo.copies if self.tempo is not None else 1)
        labels = [item.work_id for item in items]
        sets, samplers, loaders = [], [], []
        for i, chunk in enumerate(hp.chunk_frame):
            ds = ChunkDataset(items, chunk * hp.mean_size, hp.mean_size, hp.mode, augment,
                              seed=_mix(hp.seed, aug_seed, i, *self.ranks.seed_parts()), input_dim=hp.input_dim,
                              tempo=self.tempo)
            sampler = EpochBatches(shard(MPerClassBatchSampler(labels, hp.m_per_class, hp.batch_size,
                                                               self.sampler_rngs[i]), self.ranks))
            sets.append(ds)
            samplers.append(sampler)
            loaders.append(self._loader(ds, persistent_workers=hp.num_workers > 0, batch_sampler=sampler))
        return sets, samplers, loaders

    def _fixed_loader(self, items: Sequence[FeatureItem]) -> DataLoader | None:
        """Every item once, at a fixed chunk: the track's centre (or its catalog start in ``defined`` mode)."""
        if not items:
            return None
        chunk = self.hp.eval_chunk_raw_frames
        if self.hp.mode == "random":
            items = [dataclasses.replace(it, start=max(0, (it.n_frames - chunk) // 2)) for it in items]
        ds = ChunkDataset(items, chunk, self.hp.mean_size, "defined", input_dim=self.hp.input_dim)
        return self._loader(ds, batch_size=self.hp.batch_size)

    def _loader(self, ds: ChunkDataset, **kwargs: Any) -> DataLoader:
        """A loader with its own torch generator: DataLoader draws a worker base seed from it per iterator, which
        would otherwise shift the global torch stream differently in a resumed run (persistent workers make one
        iterator per run, not per epoch). The datasets draw from their own numpy generators."""
        return DataLoader(ds, collate_fn=collate_chunks, num_workers=self.hp.num_workers,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(self.hp.seed),
                          **kwargs)

    # -- the run ---------------------------------------------------------------------------------------------

    def run(self) -> TrainingResult:
        started = time.monotonic()
        self._resume()
        if self.last_epoch < 0 and self.warm_start is not None:
            self._warm_start(self.warm_start)
        first_epoch = self.last_epoch + 1
        writer = (SummaryWriter(str(self.log_dir), purge_step=self.steps + 1 if self.steps else None)
                  if self.ranks.is_main else NullWriter())
        try:
            for epoch in range(first_epoch, self.hp.max_epochs):
                if self.stopped_early:
                    break
                self._epoch(epoch, writer)
        finally:
            writer.close()
        return self._result(self.last_epoch - first_epoch + 1, time.monotonic() - started)

    def _warm_start(self, start: WarmStart) -> None:
        if start.heads:
            ckpt.load_generator(start.generator, self.model)
        else:
            ckpt.load_embedding_network(start.generator, self.model)
        if start.state is not None:
            own = [{k: v for k, v in group.items() if k != "params"} for group in self.optimizer.param_groups]
            self.optimizer.load_state_dict(ckpt.load_training_state(start.state)["optim_g"])
            for group, settings in zip(self.optimizer.param_groups, own):
                group.update(settings)

    def _epoch(self, epoch: int, writer: SummaryWriter | NullWriter) -> None:
        began = time.monotonic()
        train_losses = self.ranks.mean(self._train_epoch(epoch, writer))
        evaluate = epoch % self.hp.every_n_epoch_to_test == 0
        final = epoch == self.hp.max_epochs - 1
        with torch.random.fork_rng(devices=[]):
            val = self._fixed_losses(self.val_loader) if evaluate else {}
            test = self._fixed_losses(self.test_loader) if evaluate else {}
            due = [ts for ts in self.test_sets if epoch % ts.every_n_epoch == 0 or final]
            mean_ap, hit_rate = self._retrieval(epoch, due)
        val, test, mean_ap, hit_rate = self.ranks.broadcast((val, test, mean_ap, hit_rate))  # rank 0's decide
        is_best = self._update_stopping(epoch, val, {ts.name: mean_ap[ts.name] for ts in due
                                                     if epoch % ts.every_n_epoch == 0})
        record = EpochRecord(epoch, self.steps, self._logged_lr(), train_losses, val, test, mean_ap, hit_rate,
                             time.monotonic() - began)
        self.history.append(record)
        self.last_epoch = epoch
        self._log_epoch(writer, record)
        if is_best or final or self.stopped_early or epoch % self.hp.every_n_epoch_to_save == 0:
            self._notify(CheckpointSaved(epoch, self._save(epoch)))
        self._notify(EpochEnded(self.steps, record))

    def _train_epoch(self, epoch: int, writer: SummaryWriter | NullWriter) -> dict[str, float]:
        self.model.train()
        for ds, batches in zip(self.train_sets, self.train_batches):
            ds.set_epoch(epoch)
            batches.set_epoch(epoch)
        sums: dict[str, float] = {}
        n = 0
        for batches in zip(*self.train_loaders):
            for k in self.order_rng.permutation(len(batches)):
                terms = self._step(batches[k], self.hp.chunk_frame[k])
                if terms is None:
                    continue
                n += 1
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value
                lr = self._logged_lr()
                for key, value in {"lr": lr, **terms}.items():
                    writer.add_scalar(f"csi/{key}", value, self.steps)
                self._notify(StepEnded(self.steps, epoch, lr, terms))
        return {key: value / max(n, 1) for key, value in sums.items()}

    def _step(self, batch: tuple[torch.Tensor, ...], out_frames: int) -> dict[str, float] | None:
        """One optimizer step on chunks of ``out_frames`` pooled frames; a non-finite loss skips the update, and
        three in a row abort the run. Tempo-drawn chunks are resampled and pooled here, batched on the device.
        """
        feats, lengths, labels, *scales = (t.to(self.device, non_blocking=True) for t in batch)
        if scales:  # raw frames at drawn tempi: resample to the chunk, then pool (as the dataset does otherwise)
            feats, lengths = tempo_resample(feats, lengths, scales[0], out_frames * self.hp.mean_size, PAD_VALUE)
            feats, lengths = masked_mean_pool(feats, lengths, self.hp.mean_size, PAD_VALUE)
        if bool((lengths == feats.shape[1]).all()):
            lengths = None  # no padding in the batch (the usual case): the unmasked path computes the same, faster
        self.scheduler.step()
        self.steps += 1
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            embedding, logits = self.forward(feats, lengths)
            total, terms = self.loss(embedding, logits, labels, self.model.centres)
        if not self.ranks.all_finite(total):  # every rank skips the same steps
            self._nan_streak += 1
            if self._nan_streak >= MAX_CONSECUTIVE_NAN:
                raise TrainingDiverged(
                    f"training diverged: the loss was {total.item()} for {self._nan_streak} consecutive steps "
                    f"(last at step {self.steps}, lr {self._logged_lr():.3g}); lower learning_rate or check the "
                    f"features for NaN/inf"
                )
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self._nan_streak = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()  # the scaler is a pass-through unless precision is fp16
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP_NORM)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"total": total.item(), **{key: value.item() for key, value in terms.items()}}

    # -- evaluation ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _fixed_losses(self, loader: DataLoader | None) -> dict[str, float]:
        """Mean of each loss term over every item once (item-weighted), in eval mode."""
        if loader is None:
            return {}
        self.model.eval()
        sums: dict[str, float] = {}
        count = 0
        for feats, lengths, labels in loader:
            feats, lengths, labels = feats.to(self.device), lengths.to(self.device), labels.to(self.device)
            embedding, logits = self.model(feats, lengths)
            total, terms = self.loss(embedding, logits, labels, self.model.centres)
            for key, value in {"total": total, **terms}.items():
                sums[key] = sums.get(key, 0.0) + value.item() * len(labels)
            count += len(labels)
        return {key: value / count for key, value in sums.items()}

    def _retrieval(self, epoch: int, test_sets: Iterable[RetrievalTestSet]
                   ) -> tuple[dict[str, float], dict[str, float]]:
        mean_ap, hit_rate = {}, {}
        embedder = Embedder.for_hparams(self.model, self.hp, self.device)
        embedded: EmbeddingCache = {}  # test sets share their references: each track is embedded once
        for ts in test_sets:
            metrics = evaluate(embedder, ts, embedded).metrics
            mean_ap[ts.name], hit_rate[ts.name] = metrics.mean_ap, metrics.hit_rate
            self._notify(TestSetEvaluated(epoch, ts.name, metrics))
        return mean_ap, hit_rate

    def _notify(self, event: TrainingEvent) -> None:
        if self.progress is not None:
            self.progress(event)

    def _update_stopping(self, epoch: int, val: dict[str, float], stopping_maps: dict[str, float]) -> bool:
        """Feed the configured signal to early stopping; returns True when this epoch is the best so far."""
        in_hold = self.scheduler.in_hold
        if self.stopping.metric == "mAP":
            relevant = [stopping_maps[name] for name in self.hp.map_stopping_testsets if name in stopping_maps]
            if not relevant:
                return False
            is_best = self.stopping.update(epoch, float(np.mean(relevant)), in_hold)
        elif "foc_loss" in val:
            is_best = self.stopping.update(epoch, val["foc_loss"], in_hold)
        else:
            return False  # no validation items: nothing to stop on, every epoch runs
        self.stopped_early = self.stopping.should_stop
        return is_best

    # -- logging ---------------------------------------------------------------------------------------------

    def _logged_lr(self) -> float:
        group = self.optimizer.param_groups[0]
        return float(group["lr"] * group.get("d", 1.0))  # Prodigy's effective step is d·lr

    @staticmethod
    def _log_epoch(writer: SummaryWriter, record: EpochRecord) -> None:
        for prefix, values in (("csi_val", record.val), ("csi_test", record.test),
                               ("mAP", record.mean_ap), ("hit_rate", record.hit_rate)):
            for key, value in values.items():
                writer.add_scalar(f"{prefix}/{key}", value, record.epoch)
        writer.flush()

    # -- checkpoints -----------------------------------------------------------------------------------------

    def _save(self, epoch: int) -> ckpt.CheckpointPair:
        """Rank 0 writes; the others hand it their RNG states and wait until the pair is complete."""
        extra = {"rank_rng": self.ranks.gather(ckpt.capture_rng_state())} if self.ranks.distributed else {}
        if self.ranks.is_main:
            self._write_checkpoint(epoch, extra)
        self.ranks.barrier()
        return ckpt.checkpoint_paths(self.checkpoint_dir, epoch)

    def _write_checkpoint(self, epoch: int, extra: dict[str, Any]) -> None:
        early = self.stopping.state_dict()
        early["scheduler_step_count"] = self.scheduler.steps_done
        ckpt.save_checkpoint(
            self.checkpoint_dir, epoch, self.model, self.optimizer, steps=self.steps, early_stopping=early,
            scheduler=self.scheduler,
            extra={
                "stopped_early": self.stopped_early,
                "grad_scaler": self.scaler.state_dict(),
                "history": [dataclasses.asdict(r) for r in self.history],
                "generators": {
                    "samplers": [rng.bit_generator.state for rng in self.sampler_rngs],
                    "batch_order": self.order_rng.bit_generator.state,
                },
                **extra,
            },
        )

    def _resume(self) -> None:
        """Continue from the newest complete checkpoint pair, restoring every counter and random stream."""
        pair = ckpt.latest_checkpoint(self.checkpoint_dir)
        if pair is None:
            return
        ckpt.load_generator(pair.generator, self.model)
        state = ckpt.load_training_state(pair.state)
        self.optimizer.load_state_dict(state["optim_g"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps = int(state["steps"])
        self.last_epoch = int(state["epoch"])
        early = {k: v for k, v in state["early_stopping"].items() if k != "scheduler_step_count"}
        self.stopping = dataclasses.replace(EarlyStopping.from_state_dict(early),
                                            patience=self.hp.early_stopping_patience)
        self.stopped_early = bool(state["stopped_early"])
        self.history = [EpochRecord(**r) for r in state["history"]]
        ckpt.restore_rng_state(state["rng"])
        self._restore_rank_rng(state.get("rank_rng"))
        generators = state["generators"]
        for generator, saved in zip(self.sampler_rngs, generators["samplers"]):
            generator.bit_generator.state = saved
        self.order_rng.bit_generator.state = generators["batch_order"]
        if state.get("grad_scaler"):  # fp16 runs; absent from checkpoints written before mixed precision
            self.scaler.load_state_dict(state["grad_scaler"])

    def _restore_rank_rng(self, saved: list[dict[str, Any]] | None) -> None:
        """Each rank continues its own random stream; a checkpoint of another number of processes (or of one) has
        none for this rank, which then starts a fresh one from (seed, rank, epoch)."""
        if not self.ranks.distributed:
            return
        if saved is not None and len(saved) == self.ranks.world_size:
            ckpt.restore_rng_state(saved[self.ranks.rank])
        else:
            torch.manual_seed(_mix(self.hp.seed, 3, *self.ranks.seed_parts(), self.last_epoch + 1))

    def _result(self, epochs_run: int, seconds: float) -> TrainingResult:
        best = self.stopping.best_checkpoint_epoch
        return TrainingResult(
            epochs_run=epochs_run,
            last_epoch=self.last_epoch,
            best_epoch=best if best >= 0 else self.last_epoch,
            best_value=self.stopping.best_checkpoint_value,
            stopped_early=self.stopped_early,
            history=list(self.history),
            wall_seconds=seconds,
            device=str(self.device),
            num_classes=self.num_classes,
            checkpoint_dir=self.checkpoint_dir,
            best_checkpoint=self._generator_file(best if best >= 0 else self.last_epoch),
            latest_checkpoint=self._generator_file(self.last_epoch),
        )


    def _generator_file(self, epoch: int) -> Path | None:
        path = ckpt.checkpoint_paths(self.checkpoint_dir, epoch).generator
        return path if path.exists() else None


# -- construction helpers ------------------------------------------------------------------------------------


def _num_classes(hp: TrainingHParams, item_lists: Iterable[Sequence[FeatureItem]]) -> int:
    """``foc.output_dims`` when set (checked against the labels), else the largest work_id + 1."""
    largest = max((it.work_id for items in item_lists for it in items), default=-1)
    if hp.foc.output_dims is None:
        return largest + 1
    if largest >= hp.foc.output_dims:
        raise ValueError(f"{hp.source or '<hparams>'}: foc.output_dims {hp.foc.output_dims} is too small for "
                         f"work_id {largest}")
    return hp.foc.output_dims


def _check_long_enough(items: Iterable[FeatureItem], mean_size: int, where: str) -> None:
    """Fail before training, naming the files, rather than when a random batch first meets a too-short track."""
    shortest = CoverHunter.min_raw_frames(mean_size)
    short = [it for it in items if it.n_frames < shortest]
    if short:
        names = ", ".join(f"{it.feat_path} ({it.n_frames})" for it in short[:3])
        raise ValueError(f"{where}: {len(short)} track(s) have fewer than {shortest} raw frames, the model's "
                         f"minimum at mean_size {mean_size}: {names}{' ...' if len(short) > 3 else ''}")


def _optimizer(hp: TrainingHParams, model: torch.nn.Module) -> torch.optim.Optimizer:
    betas = (hp.adam_b1, hp.adam_b2)
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=hp.learning_rate, betas=betas, weight_decay=hp.weight_decay)
    try:
        from prodigyopt import Prodigy
    except ImportError as err:
        raise ImportError(f"{hp.source or '<hparams>'}: optimizer 'prodigy' needs the 'prodigyopt' package "
                          f"(pip install prodigyopt), or set optimizer: adamw") from err
    return Prodigy(model.parameters(), lr=1.0, betas=betas, weight_decay=hp.weight_decay, decouple=True,
                   d_coef=hp.prodigy_d_coef, safeguard_warmup=hp.prodigy_safeguard_warmup)


def _scheduler(hp: TrainingHParams, optimizer: torch.optim.Optimizer) -> StepDecayLR:
    """Prodigy finds its own step size: its lr stays 1.0 (warmup still applies); AdamW decays as configured."""
    warmup = hp.warmup_steps if hp.warmup else 0
    if hp.optimizer == "prodigy":
        return StepDecayLR(optimizer, 1.0, 1.0, 1.0, hp.hold_steps, warmup)
    return StepDecayLR(optimizer, hp.learning_rate, hp.lr_decay, hp.min_lr, hp.hold_steps, warmup)


def _early_stopping(hp: TrainingHParams, test_sets: Sequence[RetrievalTestSet]) -> EarlyStopping:
    """mAP mode needs at least one stopping test set that exists; otherwise fall back to val_loss."""
    names = {ts.name for ts in test_sets}
    use_map = hp.early_stop_metric == "mAP" and any(name in names for name in hp.map_stopping_testsets)
    return EarlyStopping("mAP" if use_map else "val_loss", hp.early_stopping_patience, hp.map_smoothing_alpha)


def _mix(*parts: int) -> int:
    """One 63-bit seed from several integers (hparams seed, augmentation seed, loader index)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, np.uint64)[0] >> np.uint64(1))
