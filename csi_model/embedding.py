"""Full-track embeddings: one L2-normalised vector per segment of every track (see docs/reference_tool.md).

A track is cut into consecutive segments of the evaluation window (`chunk_frame[0]·mean_size` raw frames) that
cover all of it: the tail becomes a shorter last segment instead of being dropped, and no segment is padded
with content-like values — padding is masked by the model. A tail shorter than a quarter window is merged into
the previous segment (at most 1.25 windows long): a few seconds of music make a noisy embedding of their own,
while the Conformer handles a slightly longer input without trouble. Evaluation, reference embeddings and
query identification all go through one :class:`Embedder`, so they measure the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from csi_model.dataset import pool_and_pad
from csi_model.hparams import TrainingHParams
from csi_model.model import CoverHunter

TRACKS_PER_BATCH = 64
"""Tracks per model call in :meth:`Embedder.batches`: long enough batches for the length-sorted segment batching,
short enough that a killed run loses little, memory stays bounded and a progress line moves."""

Item = TypeVar("Item")
Result = TypeVar("Result")


def segment_starts(n_frames: int, seg_len: int, min_tail: int | None = None) -> np.ndarray:
    """Raw-frame offsets of the segments of an `n_frames` track; segment i ends where i+1 starts (or at the end).

    A last segment shorter than `min_tail` (default a quarter of `seg_len`) is merged into the one before."""
    if n_frames < 1 or seg_len < 1:
        raise ValueError(f"need n_frames >= 1 and seg_len >= 1, got {n_frames} and {seg_len}")
    min_tail = seg_len // 4 if min_tail is None else min_tail
    starts = np.arange(0, n_frames, seg_len, dtype=np.int64)
    if len(starts) > 1 and n_frames - starts[-1] < min_tail:
        starts = starts[:-1]
    return starts


@dataclass(frozen=True)
class _Segment:
    track: int
    index: int  # position within its track
    start: int  # raw frames
    stop: int


def _segments(
    features: Sequence[np.ndarray], seg_len: int, min_tail: int, min_frames: int, input_dim: int
) -> list[_Segment]:
    segments = []
    for track, feat in enumerate(features):
        if feat.ndim != 2 or feat.shape[1] != input_dim:
            raise ValueError(f"track {track}: expected [frames, {input_dim}] features, got shape {feat.shape}")
        if feat.shape[0] < min_frames:
            raise TooShort(f"track {track}: {feat.shape[0]} raw frames, the model needs at least {min_frames}")
        starts = segment_starts(feat.shape[0], seg_len, min_tail)
        stops = np.append(starts[1:], feat.shape[0])
        segments += [_Segment(track, i, int(a), int(b)) for i, (a, b) in enumerate(zip(starts, stops))]
    return segments


class TooShort(ValueError):
    """A track shorter than the model's minimum input (:attr:`Embedder.min_frames` raw frames)."""


@dataclass(frozen=True)
class Embedder:
    """The one way features become embeddings: a model with its evaluation window, minimum input and batch size.

    ``chunk_frames`` is the window in pooled frames (hparams ``chunk_frame[0]``), ``mean_size`` the raw frames
    pooled into one, ``batch_size`` the segments per model call, ``device`` where the model runs (default: where
    it is). Training-time evaluation, reports, sweeps, reference embeddings, ingestion, identification,
    classification and alignment all embed through one of these, so they measure the same thing."""

    model: CoverHunter
    chunk_frames: int
    mean_size: int
    batch_size: int
    device: torch.device | None = None

    @classmethod
    def for_hparams(cls, model: CoverHunter, hp: TrainingHParams, device: torch.device | str | None = None
                    ) -> Embedder:
        """The evaluation window, pooling and batch size of the hyper-parameters ``model`` was trained with."""
        return cls(model, hp.chunk_frame[0], hp.mean_size, hp.batch_size,
                   torch.device(device) if device is not None else None)

    def with_window(self, chunk_frames: int) -> Embedder:
        """The same embedder with another evaluation window (pooled frames), e.g. alignment's short windows."""
        return replace(self, chunk_frames=chunk_frames)

    @property
    def window(self) -> int:
        """The evaluation window in raw frames."""
        return self.chunk_frames * self.mean_size

    @property
    def min_frames(self) -> int:
        """Shortest track (raw CQT frames) the model can embed: the minimum-frames rule of every caller."""
        return self.model.min_raw_frames(self.mean_size)

    def long_enough(self, n_frames: int) -> bool:
        return n_frames >= self.min_frames

    def split_by_length(self, items: Sequence[Item], n_frames: Callable[[Item], int]
                        ) -> tuple[list[Item], list[Item]]:
        """``(long enough, too short)`` of ``items``, order kept; ``n_frames(item)`` is its raw frame count."""
        kept, short = [], []
        for item in items:
            (kept if self.long_enough(n_frames(item)) else short).append(item)
        return kept, short

    def drop_too_short(self, names: Sequence[str], features: Sequence[np.ndarray], fps: float, doing: str,
                       fail: Callable[[str, str], None]) -> tuple[list[str], list[np.ndarray]]:
        """``(names, features)`` of the tracks long enough to embed, order kept; every other one is reported as
        ``fail(name, "<name>: too short to <doing> (x.xx s; the model needs y.yy s)")`` (``fail`` may raise).
        ``fps``: frames per second of the features, for the message."""
        kept, short = self.split_by_length(list(zip(names, features)), lambda pair: len(pair[1]))
        for name, feature in short:
            fail(name, f"{name}: too short to {doing} ({len(feature) / fps:.2f} s; "
                       f"the model needs {self.min_frames / fps:.2f} s)")
        return [name for name, _ in kept], [feature for _, feature in kept]

    def segment_starts(self, n_frames: int) -> np.ndarray:
        """Raw-frame starts of the segments :meth:`embed` cuts a track of ``n_frames`` into: the tail may not be
        shorter than a quarter window nor than what the model accepts."""
        return segment_starts(n_frames, self.window, self._min_tail)

    @property
    def _min_tail(self) -> int:
        return max(self.window // 4, self.min_frames)

    def embed(self, features: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per track ``[segments, embed_dim]`` float32 segment embeddings, rows of unit norm.

        ``features`` are raw (un-pooled) ``[frames, bins]`` arrays, memory-maps welcome (float16 or float32).
        Raises :class:`TooShort` naming the track for one under :attr:`min_frames`, ``ValueError`` for a wrong
        shape. Segments of all tracks are sorted by length and embedded ``batch_size`` at a time, so batches are
        nearly padding-free; the result does not depend on the batch size or the order of the tracks (up to
        float rounding)."""
        return self._run(features, logits=False)

    def logits(self, features: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per track ``[segments, num_classes]``: the classifier head's logits of each segment embedding."""
        return self._run(features, logits=True)

    def batches(self, items: Sequence[Item], load: Callable[[Item], np.ndarray],
                embed: Callable[[list[np.ndarray]], list[Result]] | None = None,
                tracks_per_batch: int = TRACKS_PER_BATCH) -> Iterator[tuple[Sequence[Item], list[Result]]]:
        """``(batch, one result per item of the batch)`` for consecutive batches of ``tracks_per_batch`` items:
        ``load(item)`` gives its features, ``embed`` (default :meth:`embed`) turns a batch of them into results.
        Only one batch of features is in memory at a time, and the caller can store or report after each."""
        embed = embed or self.embed  # type: ignore[assignment]
        for first in range(0, len(items), tracks_per_batch):
            batch = items[first:first + tracks_per_batch]
            yield batch, embed([load(item) for item in batch])

    def _run(self, features: Sequence[np.ndarray], logits: bool) -> list[np.ndarray]:
        model, mean_size = self.model, self.mean_size
        segments = _segments(features, self.window, self._min_tail, self.min_frames, model.config.input_dim)
        segments.sort(key=lambda s: s.stop - s.start, reverse=True)
        counts = np.bincount([s.track for s in segments], minlength=len(features))
        width = model.config.num_classes if logits else model.config.embed_dim
        embeddings = [np.empty((n, width), dtype=np.float32) for n in counts]

        device = self.device if self.device is not None else next(model.parameters()).device
        was_training = model.training
        model.to(device).eval()
        try:
            with torch.no_grad():
                for first in range(0, len(segments), self.batch_size):
                    batch = segments[first : first + self.batch_size]
                    frames = -(-(batch[0].stop - batch[0].start) // mean_size)  # longest first: pooled, rounded up
                    pooled = [pool_and_pad(features[s.track][s.start : s.stop], mean_size, frames) for s in batch]
                    x = torch.from_numpy(np.stack([p for p, _ in pooled])).to(device)  # [b, frames, F]
                    lengths = torch.tensor([n for _, n in pooled], device=device)  # [b]
                    embedded = model.embed(x, lengths)  # [b, E]
                    vectors = (model.classify(embedded) if logits else F.normalize(embedded, dim=1)).cpu().numpy()
                    for segment, vector in zip(batch, vectors):
                        embeddings[segment.track][segment.index] = vector
        finally:
            model.train(was_training)
        return embeddings


def mean_unit_vectors(segment_vectors: np.ndarray, segment_track: np.ndarray) -> np.ndarray:
    """One unit vector per track: the renormalised mean of its unit segment vectors ``[S, D]``, where
    ``segment_track`` ``[S]`` (non-decreasing, starting at 0, no gaps) numbers each segment's track -> ``[T, D]``.

    The spherical mean is the point closest (in summed cosine) to all of a track's segments, and a long track
    counts once, like a short one."""
    first_rows = np.flatnonzero(np.r_[True, np.diff(segment_track) != 0])
    sums = np.add.reduceat(np.asarray(segment_vectors, dtype=np.float64), first_rows, axis=0)  # [T, D]
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Class probabilities ``[S, K]`` of logits ``[S, K]`` (e.g. one track of :meth:`Embedder.logits`)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
