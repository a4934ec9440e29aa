"""Training chunks cut from memory-mapped CQT features (see docs/reference_tool.md).

A chunk is read through ``np.load(mmap_mode='r')`` so only its frames are paged in, pooled in time with one
reshape-mean, and padded at the end when the track is shorter than the chunk. The valid (pooled) length travels
with the chunk so the model can mask the padding instead of pooling it as content as the reference does.
A batch is cut at once (``__getitems__``): starts and tempo factors drawn as arrays, one slice copy per file,
then pooling and SpecAugment over the whole ``[B, T, F]`` array. Training batches arrive as
:class:`EpochBatches` keys ``(epoch, batch number, index)`` and draw from a generator seeded by (run seed, epoch,
batch number): the draws do not depend on which worker cuts the batch, how many workers there are, or whether the
workers persist across epochs (they never see ``set_epoch``). Plain indices (evaluation, single items) draw from
(run seed, epoch, worker). A run is reproducible, and a different seed really changes the draws.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from csi_model.augment import TempoRange, masked_mean_pool, max_tempo_span, tempo_spans

# The reference's padding value; it sits below any real dB frame so leaked padding looks like silence.
PAD_VALUE = -100.0

# (chunks [B, T, F], valid lengths [B], generator) -> augmented copy [B, T, F]; padding frames stay untouched
Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
BatchKey = tuple[int, int, int]  # (epoch, batch number, item index)


class FeatureFileError(ValueError):
    """A feature file is missing, unreadable or disagrees with its catalog entry."""


@dataclass(frozen=True)
class FeatureItem:
    """One performance's feature file; ``start`` is the chunk start in raw frames for ``mode='defined'``."""

    perf: str
    work_id: int
    feat_path: Path
    n_frames: int
    start: int = 0


def mean_pool(feat: np.ndarray, mean_size: int) -> np.ndarray:
    """Average ``mean_size`` consecutive frames; a trailing remainder is dropped. ``[T, F] -> [T // m, F]``."""
    n_out = feat.shape[0] // mean_size
    blocks = np.asarray(feat[: n_out * mean_size], dtype=np.float32).reshape(n_out, mean_size, feat.shape[1])
    return blocks.mean(axis=1, dtype=np.float32)


def pool_and_pad(raw: np.ndarray, mean_size: int, out_frames: int) -> tuple[np.ndarray, int]:
    """Pool the valid raw frames and pad to ``out_frames``; a partial last group is averaged over what exists.

    Returns ``(pooled [out_frames, F] float32, valid pooled length)``.
    """
    n_full = raw.shape[0] // mean_size
    length = min(out_frames, -(-raw.shape[0] // mean_size))
    pooled = np.full((out_frames, raw.shape[1]), PAD_VALUE, dtype=np.float32)
    pooled[: min(n_full, out_frames)] = mean_pool(raw, mean_size)[:out_frames]
    if length > n_full:
        pooled[n_full] = np.asarray(raw[n_full * mean_size :], dtype=np.float32).mean(axis=0)
    return pooled, length


def open_features(item: FeatureItem, input_dim: int | None = None) -> np.ndarray:
    """Memory-map a ``[T, F]`` feature file and check it against the catalog's frame count and bin count."""
    try:
        feat = np.load(item.feat_path, mmap_mode="r")
    except (OSError, ValueError, EOFError) as err:  # EOFError: an empty file
        raise FeatureFileError(f"{item.feat_path}: cannot read features of {item.perf!r}: {err}") from err
    if feat.ndim != 2 or feat.shape[0] == 0:
        raise FeatureFileError(f"{item.feat_path}: expected a non-empty [frames, bins] array, got shape {feat.shape}")
    if feat.shape[0] != item.n_frames:
        raise FeatureFileError(
            f"{item.feat_path}: catalog says {item.n_frames} frames for {item.perf!r}, the file has {feat.shape[0]}"
        )
    if input_dim is not None and feat.shape[1] != input_dim:
        raise FeatureFileError(f"{item.feat_path}: {feat.shape[1]} bins, the model expects input_dim {input_dim}")
    return feat


def check_feature_file(item: FeatureItem, input_dim: int) -> None:
    """Read a whole stored feature and raise :class:`FeatureFileError` (naming the file) unless it is readable,
    ``[item.n_frames, input_dim]`` and finite: catches truncated, overwritten and corrupted files."""
    feat = open_features(item, input_dim)
    finite = np.isfinite(feat)
    if not finite.all():
        frame = int(np.flatnonzero(~finite.all(axis=1))[0])
        raise FeatureFileError(f"{item.feat_path}: features of {item.perf!r} hold {int((~finite).sum())} NaN/inf "
                               f"values (first at frame {frame})")


class ChunkDataset(Dataset):
    """Chunks of ``chunk_frames`` raw frames, returned as ``(feat [chunk/mean_size, F], length, work_id)``.

    ``mode='random'`` draws the start uniformly in ``[0, n_frames - chunk]``; ``'defined'`` uses each item's start.
    ``augment`` (training only) receives the batch's pooled chunks, their valid lengths and the batch's generator.

    With ``tempo`` (training only) each item draws a factor ``k`` and returns instead the ``round(chunk_frames * k)``
    *raw* frames that a chunk played ``k`` times faster covers (spec augmentation applied to them), padded to the
    range's longest span, their count, the work id and the scale ``span / chunk_frames``: the trainer resamples the
    batch to ``chunk_frames`` and pools it on the device. Resampling before pooling keeps the interpolation's blur
    below the pooled resolution, as a real tempo change would.
    """

    def __init__(
        self,
        items: Sequence[FeatureItem],
        chunk_frames: int,
        mean_size: int,
        mode: str = "random",
        augment: Augment | None = None,
        seed: int = 0,
        input_dim: int | None = None,
        tempo: TempoRange | None = None,
    ) -> None:
        if mode not in ("random", "defined"):
            raise ValueError(f"mode {mode!r} is not 'random' or 'defined'")
        if chunk_frames % mean_size:
            raise ValueError(f"chunk of {chunk_frames} raw frames is not a multiple of mean_size {mean_size}")
        self.items = list(items)
        self.chunk_frames = chunk_frames
        self.mean_size = mean_size
        self.mode = mode
        self.augment = augment
        self.seed = seed
        self.input_dim = input_dim
        self.tempo = tempo
        self.epoch = 0
        self._checked: set[int] = set()
        self._rng_key: tuple[int, int] | None = None
        self._rng = np.random.default_rng()

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """For plain-index access: draws depend only on (seed, epoch, worker). Training batches carry their epoch
        in their keys (:class:`EpochBatches`) instead, which also reaches persistent workers."""
        self.epoch = epoch

    def labels(self) -> list[int]:
        return [item.work_id for item in self.items]

    def __getitem__(self, index: int) -> tuple:
        return self._cut([index], self._generator())[0]

    def __getitems__(self, keys: Sequence[int] | Sequence[BatchKey]) -> list[tuple]:
        """A whole batch (the DataLoader's fetcher calls this with the batch sampler's list). Keys from
        :class:`EpochBatches` seed the batch's draws from (seed, epoch, batch number); plain indices draw as
        ``__getitem__`` does."""
        if keys and isinstance(keys[0], tuple):
            epoch, number, _ = keys[0]
            return self._cut([k[2] for k in keys], batch_generator(self.seed, epoch, number))
        return self._cut(list(keys), self._generator())

    def _cut(self, indices: Sequence[int], rng: np.random.Generator) -> list[tuple]:
        """Cut, pool and augment the chunks of ``indices`` as one ``[B, T, F]`` array; the only per-item work is
        the slice copy out of each file's memory map (only those frames are read)."""
        items = [self.items[i] for i in indices]
        feats = [self._features(i) for i in indices]
        if self.tempo is not None:
            spans = tempo_spans(self.chunk_frames, self.tempo.draws(rng, len(items)))
            width = max_tempo_span(self.chunk_frames, self.tempo)
        else:
            spans = np.full(len(items), self.chunk_frames)
            width = self.chunk_frames
        starts = self._starts(items, spans, rng)
        raw = np.full((len(items), width, feats[0].shape[1]), PAD_VALUE, dtype=np.float32)
        lengths = np.empty(len(items), dtype=np.int64)
        for b, (feat, start, span) in enumerate(zip(feats, starts, spans)):
            content = feat[start : start + span]
            raw[b, : len(content)] = content
            lengths[b] = len(content)
        labels = [item.work_id for item in items]
        if self.tempo is not None:  # resampled and pooled on the training device
            raw = self.augment(raw, lengths, rng) if self.augment is not None else raw
            return [(torch.from_numpy(raw[b]), int(lengths[b]), labels[b], spans[b] / self.chunk_frames)
                    for b in range(len(items))]
        pooled, pooled_lengths = masked_mean_pool(torch.from_numpy(raw), torch.from_numpy(lengths), self.mean_size,
                                                  PAD_VALUE)
        if self.augment is not None:
            pooled = torch.from_numpy(self.augment(pooled.numpy(), pooled_lengths.numpy(), rng))
        return [(pooled[b], int(pooled_lengths[b]), labels[b]) for b in range(len(items))]

    def _starts(self, items: Sequence[FeatureItem], spans: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Chunk starts in raw frames: each item's own in ``defined`` mode (checked), else uniform draws."""
        n_frames = np.array([item.n_frames for item in items])
        if self.mode == "random":
            return rng.integers(0, np.maximum(n_frames - spans, 0) + 1)
        starts = np.array([item.start for item in items])
        outside = np.flatnonzero((starts < 0) | (starts >= np.maximum(n_frames, 1)))
        if outside.size:
            item = items[outside[0]]
            raise FeatureFileError(
                f"{item.feat_path}: start {item.start} is outside the {item.n_frames} frames of {item.perf!r}"
            )
        return starts

    def _features(self, index: int) -> np.ndarray:
        """Validate each file once per process; the map is reopened per access so no descriptors pile up."""
        item = self.items[index]
        if index in self._checked:
            return np.load(item.feat_path, mmap_mode="r")
        feat = open_features(item, self.input_dim)
        self._checked.add(index)
        return feat

    def _generator(self) -> np.random.Generator:
        info = get_worker_info()
        key = (self.epoch, info.id if info is not None else -1)
        if key != self._rng_key:
            self._rng = np.random.default_rng([self.seed, key[0], key[1] + 1])
            self._rng_key = key
        return self._rng


def batch_generator(seed: int, epoch: int, number: int) -> np.random.Generator:
    """The generator of one training batch: a stream of its own per (seed, epoch, batch number)."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch], spawn_key=(number,)))


class EpochBatches:
    """A batch sampler whose batches carry their epoch and number: ``[(epoch, batch number, index), ...]``.

    It runs in the main process, so :meth:`set_epoch` takes effect even with persistent workers, which keep the
    dataset copy they started with; :meth:`ChunkDataset.__getitems__` seeds each batch from the key."""

    def __init__(self, batches: Iterable[list[int]]) -> None:
        self.batches = batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[BatchKey]]:
        epoch = self.epoch
        for number, batch in enumerate(self.batches):
            yield [(epoch, number, index) for index in batch]

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]


def collate_chunks(batch: list[tuple]) -> tuple[torch.Tensor, ...]:
    """Stack to ``(feats [B, T', F], lengths [B], labels [B])``, plus ``scales [B]`` for tempo-drawn chunks."""
    columns = list(zip(*batch))
    out = (torch.stack(columns[0]), torch.tensor(columns[1], dtype=torch.long),
           torch.tensor(columns[2], dtype=torch.long))
    return out if len(columns) == 3 else (*out, torch.tensor(columns[3], dtype=torch.float32))
