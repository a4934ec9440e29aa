"""FAISS search of segment embeddings, ranked into performances and works with the exact search's definitions.

``csi_model.search`` scans every reference row per query; at 10^6–10^7 segments that costs seconds. Here the
segments live in a FAISS index keyed by stable int64 ids, each performance owning one contiguous id range:

- ``flat`` (``IndexIDMap2`` over ``IndexFlatIP``): exact, for reference sets below ``exact_below`` rows;
- ``ivf_refine`` (:class:`RefinedIndex`, the default above it): an IVF over compressed codes (``codes``, default
  8-bit scalar quantisation: 4× smaller than float32 and scanned ~4× faster) finds ``refine_factor`` × k
  candidates per query segment, which are re-ranked by their stored vectors (``store``: float32, or float16 for
  half the memory) -- the vectors the exact re-rank below reads too;
- ``ivf`` (``IndexIVFFlat``, inner product, hashtable direct map): the float32 vectors in the lists.

All support adding and removing ids without a rebuild, and returning stored vectors by id. A query track
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

FLAT, IVF, IVF_REFINE = "flat", "ivf", "ivf_refine"
APPROXIMATE = (IVF, IVF_REFINE)
STORES = {"float32", "float16"}
REFINED_MAGIC = b"csi-ivf-refine\n"
"""First bytes of a written :class:`RefinedIndex` file (the IVF, then the vector store, in FAISS's format)."""
TRAIN_ROWS_PER_LIST = 64
"""k-means training sample per IVF list: enough for stable centroids, and it keeps training an IVF4096 on 1M
rows to about a minute on two cores (all rows would take ~15)."""


@dataclass(frozen=True)
class IndexConfig:
    """How the index is built: exact below ``exact_below`` rows, else ``approximate`` (``ivf_refine`` or
    ``ivf``) with ``nlist`` lists (default 4·√rows, between 16 and 65536) searched ``nprobe`` at a time;
    ``candidates`` = first-round hits per query segment (widened ×4 until enough distinct groups are found).
    ``ivf_refine`` only: ``codes`` = FAISS encoding in the lists (``SQ8``, ``SQfp16``, ``PQ32``, ...),
    ``store`` = precision of the vectors kept for re-ranking, ``refine_factor`` = candidates fetched per hit.

    Defaults: recall@10 0.98 against exact search at 1M segments with a p50 of 7 ms per 10-segment query on one
    core (``bench/identify.py``)."""

    exact_below: int = 200_000
    approximate: str = IVF_REFINE
    nlist: int | None = None
    nprobe: int = 256
    candidates: int = 64
    codes: str = "SQ8"
    store: str = "float32"
    refine_factor: int = 4

    def __post_init__(self) -> None:
        if self.approximate not in APPROXIMATE:
            raise ValueError(f"approximate index must be one of {APPROXIMATE}, got {self.approximate!r}")
        if self.store not in STORES:
            raise ValueError(f"store must be one of {sorted(STORES)}, got {self.store!r}")
        if min(self.nprobe, self.candidates, self.refine_factor) < 1:
            raise ValueError(f"nprobe, candidates and refine_factor must be ≥ 1, got {self.nprobe}, "
                             f"{self.candidates}, {self.refine_factor}")

    def kind_for(self, rows: int) -> str:
        return FLAT if rows < self.exact_below else self.approximate

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


class RefinedIndex:
    """An IVF over compressed codes that proposes candidates, and the vectors by id that re-rank them.

    It offers what this module uses of a FAISS index (``d``, ``ntotal``, ``nprobe``, ``search``,
    ``add_with_ids``, ``remove_ids``, ``reconstruct_batch``), so search and re-rank treat all kinds alike.
    Both parts hold the same ids; they are changed together."""

    def __init__(self, ivf: Any, store: Any, refine_factor: int) -> None:
        self.ivf, self.store, self.refine_factor = ivf, store, refine_factor

    @property
    def d(self) -> int:
        return int(self.store.d)

    @property
    def ntotal(self) -> int:
        return int(self.store.ntotal)

    @property
    def nprobe(self) -> int:
        return int(self.ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.ivf.nprobe = value

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids) [Q, k] of the k best of each row's ``refine_factor``·k IVF candidates by their
        stored vectors; id −1 (similarity −inf) where the probed lists hold fewer candidates than k."""
        _, candidates = self.ivf.search(queries, k * self.refine_factor)  # [Q, K]
        valid = candidates >= 0
        vectors = np.zeros(candidates.shape + (queries.shape[1],), dtype=np.float32)  # [Q, K, D]
        vectors[valid] = self.reconstruct_batch(candidates[valid])
        scores = np.einsum("qd,qkd->qk", queries, vectors)
        scores[~valid] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(candidates, order, 1)

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        return self.store.reconstruct_batch(np.ascontiguousarray(ids, dtype=np.int64))

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.ivf.add_with_ids(vectors, ids)
        self.store.add_with_ids(vectors, ids)

    def remove_ids(self, ids: np.ndarray) -> int:
        removed = int(self.ivf.remove_ids(ids))
        if int(self.store.remove_ids(ids)) != removed:
            raise RuntimeError("the IVF and the vector store of the reference index held different ids")
        return removed


def build_index(vectors: np.ndarray, ids: np.ndarray, config: IndexConfig) -> Any:
    """A new FAISS index of unit rows ``vectors`` [N, D] under int64 ``ids`` [N]; kind by ``config.kind_for(N)``."""
    vectors = _unit_float32(vectors, "reference segments")
    index = empty_index(vectors, len(vectors), config)
    add_vectors(index, vectors, ids)
    return index


def empty_index(vectors: np.ndarray, rows: int, config: IndexConfig) -> Any:
    """An empty index for ``rows`` unit rows (kind and lists chosen for that size), trained on a spread sample of
    ``vectors`` [N, D] (all rows, or a sample of them when the rows are added in chunks)."""
    import faiss

    dim = vectors.shape[1]
    kind = config.kind_for(rows)
    if kind == FLAT:
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    nlist = min(config.lists_for(rows), len(vectors))
    sample = _unit_float32(vectors[np.sort(np.random.default_rng(0).permutation(len(vectors))[
        :TRAIN_ROWS_PER_LIST * nlist])], "training sample")
    if kind == IVF:
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(sample)
        index.set_direct_map_type(faiss.DirectMap.Hashtable)
        index.nprobe = config.nprobe
        return index
    ivf = faiss.index_factory(dim, f"IVF{nlist},{config.codes}", faiss.METRIC_INNER_PRODUCT)
    ivf.train(sample)
    ivf.nprobe = config.nprobe
    store = faiss.IndexFlatIP(dim) if config.store == "float32" else \
        faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    return RefinedIndex(ivf, faiss.IndexIDMap2(store), config.refine_factor)


def add_vectors(index: Any, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add unit rows under new ids (the caller guarantees the ids are not in the index)."""
    if len(vectors):
        index.add_with_ids(_unit_float32(vectors, "reference segments"), np.ascontiguousarray(ids, dtype=np.int64))


def remove_ids(index: Any, ids: np.ndarray) -> int:
    """Remove these ids; returns how many rows went."""
    return int(index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64))) if len(ids) else 0


def index_kind(index: Any) -> str:
    import faiss

    if isinstance(index, RefinedIndex):
        return IVF_REFINE
    return IVF if isinstance(index, faiss.IndexIVF) else FLAT


def write_index(index: Any, path: Path) -> None:
    """One file: FAISS's format, or for a :class:`RefinedIndex` a marker, its IVF and its store, streamed."""
    import faiss

    if not isinstance(index, RefinedIndex):
        faiss.write_index(index, str(path))
        return
    with open(path, "wb") as out:
        out.write(REFINED_MAGIC + index.refine_factor.to_bytes(4, "little"))
        writer = faiss.PyCallbackIOWriter(out.write)
        faiss.write_index(index.ivf, writer)
        faiss.write_index(index.store, writer)


def read_index(path: Path, nprobe: int | None = None) -> Any:
    import faiss

    with open(path, "rb") as handle:
        refined = handle.read(len(REFINED_MAGIC)) == REFINED_MAGIC
        if refined:
            factor = int.from_bytes(handle.read(4), "little")
            reader = faiss.PyCallbackIOReader(handle.read)
            index = RefinedIndex(faiss.read_index(reader), faiss.read_index(reader), factor)
    if not refined:
        index = faiss.read_index(str(path))
    if nprobe and isinstance(index, (faiss.IndexIVF, RefinedIndex)):
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
