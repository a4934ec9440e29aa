"""Exact cosine nearest-neighbour search of unit embeddings, at segment, performance and work level.

Matrix products in blocks of reference rows, merged with ``topk``, keep memory flat up to ~1M × 128 references
(512 MB); beyond that an ANN index (e.g. FAISS) can implement the same ``ReferenceIndex`` interface. Results are
ordered like a stable argsort of the distances: ties go to the lower reference index, so rankings are
reproducible and agree with ``csi_model.metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from csi_model.devices import pick_device
from csi_model.unit_rows import padded_rows, require_unit_rows, stack_tracks

DEFAULT_CHUNK_ROWS = 65536
# Distances held at once per block (query rows × reference rows): 64 MB of float32.
_CELLS_PER_BLOCK = 1 << 24


@dataclass(frozen=True)
class SearchResult:
    """Row q holds query q's neighbours, nearest first: reference (or group) indices and cosine distances."""

    indices: np.ndarray  # [Q, k] int64
    distances: np.ndarray  # [Q, k] float32


@dataclass(frozen=True)
class RowGroups:
    """Which group (performance, work) each reference row belongs to; built once per index, reused per query."""

    row_group: torch.Tensor  # [N] int64, group id per reference row
    n_groups: int  # max id + 1
    n_present: int  # ids that own at least one row (the rest would sit at distance +inf)

    @classmethod
    def of(cls, row_group: np.ndarray, n_rows: int, device: torch.device | str = "cpu") -> RowGroups:
        row_group = np.asarray(row_group)
        if row_group.shape != (n_rows,) or not np.issubdtype(row_group.dtype, np.integer):
            raise ValueError(f"group ids must be {n_rows} integers (one per reference row), got "
                             f"{row_group.dtype} {row_group.shape}")
        if n_rows == 0 or row_group.min() < 0:
            raise ValueError(f"group ids must be ≥ 0 and cover at least one row, got {row_group[:5]}…")
        return cls(row_group=torch.from_numpy(row_group.astype(np.int64)).to(device),
                   n_groups=int(row_group.max()) + 1, n_present=int(np.unique(row_group).size))


class ReferenceIndex:
    """Exact cosine search over unit reference vectors [N, D]; ``search`` is the interface an ANN index would keep."""

    def __init__(self, embeddings: np.ndarray, chunk_rows: int = DEFAULT_CHUNK_ROWS, device: str | None = "cpu"):
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        require_unit_rows(embeddings, "reference embeddings")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be ≥ 1, got {chunk_rows}")
        self.device = pick_device(device)
        self.embeddings = torch.from_numpy(embeddings).to(self.device)  # [N, D]
        self.chunk_rows = chunk_rows

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def search(self, queries: np.ndarray, k: int) -> SearchResult:
        """The k nearest references of every query row (k is capped at the number of references)."""
        queries = self._query_tensor(queries)
        k = _checked_k(k, len(self))
        out_d, out_i = [], []
        for batch in torch.split(queries, self._query_rows_per_batch()):
            best_d, best_i = _empty_best(len(batch), self.device)
            for start, block in self._reference_blocks(len(batch)):
                distance = _cosine_distance(batch, block)  # [B, n]
                block_d, block_i = _smallest_k(distance, min(k, block.shape[0]))
                best_d, best_i = _merge(best_d, best_i, block_d, block_i + start, k)
            out_d.append(best_d)
            out_i.append(best_i)
        return _result(torch.cat(out_i), torch.cat(out_d))

    def search_groups(self, query_tracks: Sequence[np.ndarray], groups: RowGroups | np.ndarray,
                      k: int) -> SearchResult:
        """The k nearest groups (performances, works) of every query track.

        A query track is several segment vectors [S, D]; its distance to a group is the minimum over its
        segments and the group's reference rows (``groups``: the group id of every reference row).
        """
        tracks = self._padded_tracks(query_tracks)  # [T, S_max, D]
        if not isinstance(groups, RowGroups):
            groups = RowGroups.of(groups, len(self), self.device)
        ref_group, n_groups = groups.row_group, groups.n_groups
        k = _checked_k(k, groups.n_present)  # never pick a group without rows (+inf)
        out_d, out_i = [], []
        for batch in torch.split(tracks, max(1, _CELLS_PER_BLOCK // n_groups)):
            n_tracks, max_segments = batch.shape[:2]
            segments = batch.reshape(n_tracks * max_segments, self.dim)  # [T·S_max, D]
            best = torch.full((n_tracks, n_groups), torch.inf, device=self.device)  # [T, G]
            for start, block in self._reference_blocks(len(segments)):
                # 1 − clamp(·) is monotone, so the nearest segment pair is the most similar one.
                nearest = (segments @ block.T).view(n_tracks, max_segments, -1).amax(dim=1)  # [T, n]
                distance = 1.0 - nearest.clamp_(-1.0, 1.0)
                block_groups = ref_group[start:start + block.shape[0]]
                best.scatter_reduce_(1, block_groups[None, :].expand_as(distance), distance, "amin")  # [T, G]
            best_d, best_i = _smallest_k(best, k)
            out_d.append(best_d)
            out_i.append(best_i)
        return _result(torch.cat(out_i), torch.cat(out_d))

    def _reference_blocks(self, query_rows: int):
        rows = max(1, min(self.chunk_rows, _CELLS_PER_BLOCK // max(query_rows, 1)))
        for start in range(0, len(self), rows):
            yield start, self.embeddings[start:start + rows]

    def _query_rows_per_batch(self) -> int:
        return max(1, _CELLS_PER_BLOCK // min(self.chunk_rows, len(self)))

    def _query_tensor(self, queries: np.ndarray) -> torch.Tensor:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        require_unit_rows(queries, "queries")
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {queries.shape[1]}, the references {self.dim}")
        return torch.from_numpy(queries).to(self.device)

    def _padded_tracks(self, query_tracks: Sequence[np.ndarray]) -> torch.Tensor:
        """Tracks as one [T, S_max, D] tensor (short tracks repeat their last segment)."""
        segments, counts = stack_tracks(query_tracks, "query")
        if segments.shape[1] != self.dim:
            raise ValueError(f"query segments have dimension {segments.shape[1]}, the references {self.dim}")
        return torch.from_numpy(segments[padded_rows(counts)]).to(self.device)


class PerformanceIndex:
    """Segment-level references grouped into performances and works: answers "which recording / which work?"."""

    def __init__(self, segment_embeddings: np.ndarray, segment_perf: np.ndarray, perf_work: np.ndarray,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, device: str | None = "cpu"):
        segment_perf, perf_work = np.asarray(segment_perf), np.asarray(perf_work)
        if segment_perf.shape != (len(segment_embeddings),):
            raise ValueError(f"segment_perf has shape {segment_perf.shape}, expected ({len(segment_embeddings)},)")
        if segment_perf.size and (segment_perf.min() < 0 or segment_perf.max() >= len(perf_work)):
            raise ValueError(f"segment_perf must index the {len(perf_work)} performances of perf_work")
        self.index = ReferenceIndex(segment_embeddings, chunk_rows, device)
        self.perfs = RowGroups.of(segment_perf, len(self.index), self.index.device)
        self.works = RowGroups.of(np.asarray(perf_work)[segment_perf], len(self.index), self.index.device)

    def search_perfs(self, query_tracks: Sequence[np.ndarray], k: int) -> SearchResult:
        """Top-k performances (indices into ``perf_work``) per query track."""
        return self.index.search_groups(query_tracks, self.perfs, k)

    def search_works(self, query_tracks: Sequence[np.ndarray], k: int) -> SearchResult:
        """Top-k works (values of ``perf_work``) per query track; a work is as near as its nearest performance."""
        return self.index.search_groups(query_tracks, self.works, k)


def _cosine_distance(queries: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
    return 1.0 - (queries @ refs.T).clamp_(-1.0, 1.0)  # [Q, D] × [n, D] -> [Q, n]


def _smallest_k(distance: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k smallest per row in stable-argsort order: by distance, ties by column."""
    values, columns = torch.topk(distance, k, dim=1, largest=False, sorted=False)  # [Q, k]
    kth = values.max(dim=1).values
    # topk picks arbitrarily among values tied with the k-th; redo those (rare) rows with a stable sort.
    ambiguous = ((distance <= kth[:, None]).sum(dim=1) > k).nonzero().squeeze(1)
    if ambiguous.numel():
        columns[ambiguous] = torch.sort(distance[ambiguous], dim=1, stable=True).indices[:, :k]
        values[ambiguous] = distance[ambiguous].gather(1, columns[ambiguous])
    columns, by_column = torch.sort(columns, dim=1)
    values = values.gather(1, by_column)
    values, by_distance = torch.sort(values, dim=1, stable=True)
    return values, columns.gather(1, by_distance)


def _merge(best_d: torch.Tensor, best_i: torch.Tensor, new_d: torch.Tensor, new_i: torch.Tensor,
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k nearest of two candidate lists; ``best`` holds only lower indices, so ties stay stable."""
    distances, order = torch.sort(torch.cat([best_d, new_d], dim=1), dim=1, stable=True)
    return distances[:, :k], torch.cat([best_i, new_i], dim=1).gather(1, order[:, :k])


def _empty_best(rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.empty((rows, 0), dtype=torch.float32, device=device),
            torch.empty((rows, 0), dtype=torch.int64, device=device))


def _result(indices: torch.Tensor, distances: torch.Tensor) -> SearchResult:
    return SearchResult(indices=indices.cpu().numpy(), distances=distances.cpu().numpy())


def _checked_k(k: int, available: int) -> int:
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    if available < 1:
        raise ValueError("the reference index is empty")
    return min(k, available)
