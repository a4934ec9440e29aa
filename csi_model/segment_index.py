"""FAISS search of segment embeddings, ranked into performances and works with the exact search's definitions.

``csi_model.search`` scans every reference row per query; at 10^6–10^7 segments that costs seconds. Here the
segments live in a FAISS index keyed by stable int64 ids, each performance owning one contiguous id range:

- ``flat`` (``IndexIDMap2`` over ``IndexFlatIP``): exact, for reference sets below ``exact_below`` rows;
- ``ivf`` (``IndexIVFFlat``, inner product, hashtable direct map): approximate candidate search above it.

Both support adding and removing ids without a rebuild, and returning stored vectors by id. A query track
([S, D] unit segment rows) is answered in two steps: (1) every query segment's nearest index rows, widened until
they span at least ``top`` distinct groups (performances, or works) or the index has no more to give;
(2) an exact re-rank: every segment of every candidate performance is fetched and the distance is the smallest
cosine distance of any segment pair, exactly as ``csi_model.search`` defines it. With the flat index this is
provably the exact top-``top`` (a group missing from segment q's hits has ``top`` closer groups there); with IVF
it is exact distances over the probed candidates. Ties go to the lower performance name (works: lower work id),
as the exact search's stable order does. ``faiss`` is imported only when an index is built or read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from csi_model.unit_rows import require_unit_rows

FLAT, IVF = "flat", "ivf"
TRAIN_ROWS_PER_LIST = 64
"""k-means training sample per IVF list: enough for stable centroids, and it keeps training an IVF4096 on 1M
rows to about a minute on two cores (all rows would take ~15)."""


@dataclass(frozen=True)
class IndexConfig:
    """How the index is built: exact below ``exact_below`` rows, else IVF with ``nlist`` lists (default
    4·√rows, between 16 and 65536) searched ``nprobe`` at a time; ``candidates`` = first-round hits per query
    segment (widened ×4 until enough distinct groups are found)."""

    exact_below: int = 200_000
    nlist: int | None = None
    nprobe: int = 64
    candidates: int = 64

    def kind_for(self, rows: int) -> str:
        return FLAT if rows < self.exact_below else IVF

    def lists_for(self, rows: int) -> int:
        return self.nlist or int(min(65536, max(16, round(4 * math.sqrt(rows)))))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Groups:
    """Which id range each performance owns, and its work.

    ``first_id`` [P] int64 sorted ascending, ``count`` [P] segments, ``perfs`` [P] names, ``work_ids`` [P]."""

    first_id: np.ndarray
    count: np.ndarray
    perfs: np.ndarray
    work_ids: np.ndarray

    def perf_of(self, ids: np.ndarray) -> np.ndarray:
        """Performance index of each id (ids must be live ids of the index)."""
        return np.searchsorted(self.first_id, ids, side="right") - 1

    def ids_of(self, perfs: np.ndarray) -> np.ndarray:
        """All segment ids of these performances, concatenated in the given order."""
        counts = self.count[perfs]
        starts = np.repeat(self.first_id[perfs] - np.cumsum(counts) + counts, counts)
        return starts + np.arange(counts.sum())


@dataclass(frozen=True)
class GroupHit:
    perf: int  # index into Groups (works: the work's nearest performance)
    work_id: int
    distance: float  # 1 − cosine similarity of the nearest segment pair


def build_index(vectors: np.ndarray, ids: np.ndarray, config: IndexConfig) -> Any:
    """A new FAISS index of unit rows ``vectors`` [N, D] under int64 ``ids`` [N]; kind by ``config.kind_for(N)``."""
    import faiss

    vectors = _unit_float32(vectors, "reference segments")
    dim = vectors.shape[1]
    if config.kind_for(len(vectors)) == FLAT:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    else:
        nlist = min(config.lists_for(len(vectors)), len(vectors))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).permutation(len(vectors))[:TRAIN_ROWS_PER_LIST * nlist]
        index.train(vectors[np.sort(sample)])
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.nprobe = config.nprobe
    add_vectors(index, vectors, ids)
    return index


def add_vectors(index: Any, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add unit rows under new ids (the caller guarantees the ids are not in the index)."""
    if len(vectors):
        index.add_with_ids(_unit_float32(vectors, "reference segments"), np.ascontiguousarray(ids, dtype=np.int64))


def remove_ids(index: Any, ids: np.ndarray) -> int:
    """Remove these ids; returns how many rows went."""
    return int(index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))) if len(ids) else 0


def index_kind(index: Any) -> str:
    import faiss

    return IVF if isinstance(index, faiss.IndexIVF) else FLAT


def write_index(index: Any, path: Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


def read_index(path: Path, nprobe: int | None = None) -> Any:
    import faiss

    index = faiss.read_index(str(path))
    if nprobe and isinstance(index, faiss.IndexIVF):
        index.nprobe = nprobe
    return index


def search_groups(index: Any, groups: Groups, tracks: list[np.ndarray], top: int, works: bool,
                  candidates: int = 64) -> list[list[GroupHit]]:
    """The ``top`` nearest performances (or works) of each query track [S_i, D], nearest first."""
    if top < 1:
        raise ValueError(f"top must be ≥ 1, got {top}")
    if index.ntotal == 0:
        raise ValueError("the reference index is empty")
    tracks = [_unit_float32(np.atleast_2d(t), f"query track {i}") for i, t in enumerate(tracks)]
    if tracks and tracks[0].shape[1] != index.d:
        raise ValueError(f"query segments have dimension {tracks[0].shape[1]}, the index {index.d}")
    hits = _segment_hits(index, groups, tracks, top, works, max(candidates, 4 * top))
    return [_rerank(index, groups, track, perfs, top, works) for track, perfs in zip(tracks, hits)]


def _segment_hits(index: Any, groups: Groups, tracks: list[np.ndarray], top: int, works: bool,
                  k: int) -> list[np.ndarray]:
    """Candidate performances of each track: the perfs of its segments' hits, widened until each segment's hits
    cover ``top`` distinct groups, the index is exhausted (IVF: fewer than k in the probed lists) or all is read."""
    found: list[np.ndarray | None] = [None] * len(tracks)
    pending = list(range(len(tracks)))
    while pending:
        k = min(k, index.ntotal)
        _, ids = index.search(np.concatenate([tracks[t] for t in pending]), k)  # [ΣS, k]
        valid = ids >= 0
        perfs = np.where(valid, groups.perf_of(np.where(valid, ids, 0)), -1)
        labels = np.where(valid, groups.work_ids[np.maximum(perfs, 0)] if works else perfs, -1)
        ordered = np.sort(labels, axis=1)
        distinct = (np.diff(ordered, axis=1) != 0).sum(axis=1) + 1 - (ordered[:, 0] == -1)
        short = (distinct < top) & valid.all(axis=1)  # a row with -1 has exhausted what the index can give
        rows = np.cumsum([0] + [len(tracks[t]) for t in pending])
        still = []
        for n, t in enumerate(pending):
            block = slice(rows[n], rows[n + 1])
            found[t] = np.unique(perfs[block][valid[block]])
            if short[block].any() and k < index.ntotal:
                still.append(t)
        pending, k = still, k * 4
    return found  # type: ignore[return-value]


def _rerank(index: Any, groups: Groups, track: np.ndarray, perfs: np.ndarray, top: int,
            works: bool) -> list[GroupHit]:
    """Exact nearest-segment-pair distances of the candidate performances, grouped and ordered."""
    if len(perfs) == 0:
        return []
    ids = groups.ids_of(perfs)
    vectors = index.reconstruct_batch(ids)  # [M, D]
    similarity = (track @ vectors.T).max(axis=0)  # [M] best over query segments
    bounds = np.r_[0, np.cumsum(groups.count[perfs])[:-1]]
    nearest = np.maximum.reduceat(similarity, bounds)
    distance = 1.0 - np.clip(nearest, -1.0, 1.0).astype(np.float32)  # [P_candidates]
    order = np.lexsort((groups.perfs[perfs], distance))  # nearest first, ties: the lower perf name
    if works:  # each work once, as near as its nearest performance; ties: the lower work id
        work = groups.work_ids[perfs[order]]
        _, first = np.unique(work, return_index=True)
        best = order[first]
        order = best[np.lexsort((groups.work_ids[perfs[best]], distance[best]))]
    return [GroupHit(int(perfs[i]), int(groups.work_ids[perfs[i]]), float(distance[i])) for i in order[:top]]


def _unit_float32(vectors: np.ndarray, role: str) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    require_unit_rows(vectors, role)
    return vectors
