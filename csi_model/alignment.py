"""Coarse alignment: the time offset between two performances of the same work (see docs/reference_tool.md).

This is the "coarse" half of the paper's coarse-to-fine scheme. Each track is cut into short overlapping windows
(default 15 s every 5 s), every window is embedded by the model on its pooled CQT, and each window of track i
votes for the offset ``start_i − start_j`` to its nearest (cosine) window of track j. The pair's answer is the
offset with the most votes, each vote weighted by its similarity mapped to [0, 1] (``(1 + cos) / 2``): a window
whose best match is poor (an intro, a solo that the other version lacks) counts less than a confident one, and a
tie goes to the smallest absolute shift (no evidence of a shift means none).

Unlike the reference tool: the match ``b = a`` is allowed, so identical recordings align at 0; performances are
matched by exact id, never by substring; a one-window track aligns like any other; all window pairs of a work are
compared with one matrix product instead of Python loops; and the result is called what it is, seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from csi_model.embedding import Embedder

DEFAULT_WINDOW_S = 15.0
DEFAULT_HOP_S = 5.0
_MS = 1000.0  # offsets are voted on in whole milliseconds, so float starts never split a bin


@dataclass(frozen=True)
class TrackWindows:
    """The window embeddings of one track: ``starts_s`` [W] seconds, ``vectors`` [W, D] unit rows."""

    starts_s: np.ndarray
    vectors: np.ndarray


@dataclass(frozen=True)
class Alignment:
    perf_i: str
    perf_j: str
    shift_s: float  # content at time t in perf_i is at t − shift_s in perf_j

    def to_dict(self) -> dict[str, object]:
        return {"perf_i": self.perf_i, "perf_j": self.perf_j, "shift_s": self.shift_s}


def window_starts(n_frames: int, window: int, hop: int) -> np.ndarray:
    """Raw-frame starts of the windows of a track: every ``hop`` while a whole window fits, and always 0 (a track
    shorter than a window is one window). The tail after the last whole window is covered up to hop − 1 frames;
    the coarse offset needs no more."""
    if n_frames < 1 or window < 1 or hop < 1:
        raise ValueError(f"need n_frames, window and hop >= 1, got {n_frames}, {window}, {hop}")
    return np.arange(0, max(n_frames - window, 0) + 1, hop, dtype=np.int64)


def embed_windows(
    embedder: Embedder,
    features: Sequence[np.ndarray],
    fps: float,
    window_s: float = DEFAULT_WINDOW_S,
    hop_s: float = DEFAULT_HOP_S,
) -> list[TrackWindows]:
    """Embed the overlapping windows of every raw ``[frames, bins]`` feature (memory maps welcome).

    Each window goes through ``embedder`` as a track of its own whose evaluation window is the window length,
    so it is exactly one segment, pooled and masked as evaluation and identification embed theirs."""
    if hop_s <= 0 or window_s <= 0:
        raise ValueError(f"window and hop must be positive seconds, got {window_s} and {hop_s}")
    windows = embedder.with_window(max(1, round(window_s * fps / embedder.mean_size)))  # pooled frames per window
    window, hop = windows.window, max(1, round(hop_s * fps))
    starts = [window_starts(len(f), window, hop) for f in features]
    pieces = [f[a : a + window] for f, s in zip(features, starts) for a in s]
    vectors = windows.embed(pieces)  # one [1, D] per window
    flat = np.concatenate(vectors) if vectors else np.empty((0, embedder.model.config.embed_dim), np.float32)
    bounds = np.cumsum([0] + [len(s) for s in starts])
    return [TrackWindows(s / fps, flat[a:b]) for s, a, b in zip(starts, bounds[:-1], bounds[1:])]


def coarse_shifts(tracks: Sequence[TrackWindows]) -> np.ndarray:
    """``[P, P]`` shifts in seconds between every ordered pair of the tracks of ONE work (diagonal 0).

    For each target track j, one matrix product gives every window's similarity to j's windows, so the nearest
    window in j and the votes of all source tracks are found at once (memory: windows of the work × windows of j)."""
    if not tracks:
        return np.zeros((0, 0))
    vectors = np.concatenate([t.vectors for t in tracks]).astype(np.float32)  # [N, D]
    starts_ms = np.rint(np.concatenate([t.starts_s for t in tracks]) * _MS).astype(np.int64)  # [N]
    owner = np.repeat(np.arange(len(tracks)), [len(t.starts_s) for t in tracks])  # [N] track of each window
    bounds = np.cumsum([0] + [len(t.starts_s) for t in tracks])
    shifts = np.zeros((len(tracks), len(tracks)))
    for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        similarity = vectors @ vectors[a:b].T  # [N, W_j] cosine (unit rows); never the whole [N, N]
        best = similarity.argmax(axis=1)  # [N] best window of track j for each window
        nearest = a + best
        weight = (1.0 + similarity[np.arange(len(owner)), best]) / 2.0
        shifts[:, j] = _vote(owner, starts_ms - starts_ms[nearest], weight, len(tracks)) / _MS
        shifts[j, j] = 0.0
    return shifts


def _vote(owner: np.ndarray, offsets_ms: np.ndarray, weight: np.ndarray, n_tracks: int) -> np.ndarray:
    """Per source track, the offset with the largest summed weight (ties: the smallest |offset|)."""
    low = offsets_ms.min()
    span = offsets_ms.max() - low + 1
    bins, inverse = np.unique(owner * span + (offsets_ms - low), return_inverse=True)
    votes = np.bincount(inverse, weights=weight)
    track, offset = bins // span, bins % span + low
    order = np.lexsort((np.abs(offset), -votes, track))
    winners = order[np.r_[True, track[order][1:] != track[order][:-1]]]
    best = np.zeros(n_tracks, dtype=np.int64)
    best[track[winners]] = offset[winners]
    return best


def align_works(perfs: Sequence[str], work_ids: Sequence[int], tracks: Sequence[TrackWindows]) -> list[Alignment]:
    """Every ordered pair (i, j) of performances of the same work, i = j included (shift 0), in input order."""
    if not len(perfs) == len(work_ids) == len(tracks):
        raise ValueError(f"{len(perfs)} perfs, {len(work_ids)} work ids and {len(tracks)} tracks differ in number")
    if len(set(perfs)) != len(perfs):
        raise ValueError("performance ids must be unique")
    alignments = []
    work_ids = np.asarray(work_ids)
    for work in dict.fromkeys(work_ids.tolist()):
        members = np.flatnonzero(work_ids == work)
        shifts = coarse_shifts([tracks[m] for m in members])
        alignments += [Alignment(perfs[mi], perfs[mj], float(shifts[a, b]))
                       for a, mi in enumerate(members) for b, mj in enumerate(members)]
    return alignments
