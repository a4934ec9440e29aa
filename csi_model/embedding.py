"""Full-track embeddings: one L2-normalised vector per segment of every track (see docs/reference_tool.md).

A track is cut into consecutive segments of the evaluation window (`chunk_frame[0]·mean_size` raw frames) that
cover all of it: the tail becomes a shorter last segment instead of being dropped, and no segment is padded
with content-like values — padding is masked by the model. A tail shorter than a quarter window is merged into
the previous segment (at most 1.25 windows long): a few seconds of music make a noisy embedding of their own,
while the Conformer handles a slightly longer input without trouble. Evaluation, reference embeddings and
query identification all go through `embed_tracks`, so they measure the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from csi_model.dataset import pool_and_pad
from csi_model.model import CoverHunter


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
            raise ValueError(f"track {track}: {feat.shape[0]} raw frames, the model needs at least {min_frames}")
        starts = segment_starts(feat.shape[0], seg_len, min_tail)
        stops = np.append(starts[1:], feat.shape[0])
        segments += [_Segment(track, i, int(a), int(b)) for i, (a, b) in enumerate(zip(starts, stops))]
    return segments


def embed_tracks(
    model: CoverHunter,
    features: Sequence[np.ndarray],
    chunk_frames: int,
    mean_size: int,
    batch_size: int,
    device: torch.device | str | None = None,
    logits: bool = False,
) -> list[np.ndarray]:
    """Embed every segment of every track -> per track `[segments, embed_dim]` float32, rows of unit norm (with
    `logits`: the classifier head's `[segments, num_classes]` logits of each segment embedding instead).

    `features` are raw (un-pooled) `[frames, bins]` arrays, memory-maps welcome (float16 or float32).
    `chunk_frames` is the window in pooled frames (hparams `chunk_frame[0]`). Segments of all tracks are sorted
    by length and embedded `batch_size` at a time, so batches are nearly padding-free. The model is moved to
    `device` (default: where it is) and run in eval mode; its train/eval mode is restored afterwards."""
    seg_len = chunk_frames * mean_size
    min_frames = model.min_raw_frames(mean_size)
    segments = _segments(features, seg_len, max(seg_len // 4, min_frames), min_frames, model.config.input_dim)
    segments.sort(key=lambda s: s.stop - s.start, reverse=True)
    counts = np.bincount([s.track for s in segments], minlength=len(features))
    width = model.config.num_classes if logits else model.config.embed_dim
    embeddings = [np.empty((n, width), dtype=np.float32) for n in counts]

    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.to(device).eval()
    try:
        with torch.no_grad():
            for first in range(0, len(segments), batch_size):
                batch = segments[first : first + batch_size]
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
    """Class probabilities ``[S, K]`` of logits ``[S, K]`` (e.g. ``embed_tracks(..., logits=True)`` per track)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)
