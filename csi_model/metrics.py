"""Retrieval metrics of a query × reference distance matrix (mAP, MR1, HR@1, P@10) and their bootstrap CIs.

Each query row is ranked by ascending distance with a *stable* sort (ties go to the lower reference index) and
excluded cells are skipped. Excluded cells are given as a boolean mask rather than a −1 sentinel, so a genuine
distance of −1e-7 (rounding of 1 − cos) is never mistaken for "skip this cell".

A query is *answerable* when at least one kept cell of its row holds a reference of its own work. An
unanswerable query (typically a work with a single performance in a self-similarity test set) says nothing about
the model: it is left out of every metric and only counted (``n_unanswerable``), so a perfect ranking scores
mAP 1 and MR1 1 whatever the test set's make-up, and MR1 is never below 1. With no answerable query at all the
metrics are undefined and ``NoAnswerableQueries`` is raised rather than a 0 reported as a score.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

from csi_model.unit_rows import stack_tracks

DEFAULT_TOPK = 10000
# Cells per block of query rows: bounds the argsort/cumsum temporaries to a few hundred MB.
_CELLS_PER_BLOCK = 1 << 22
# Up to this many relevant references per query, ranking by counting beats sorting the row.
_MAX_COUNTED_RELEVANT = 16


class NoAnswerableQueries(ValueError):
    """No query has a relevant reference among its kept cells: every retrieval metric is undefined."""


@dataclass(frozen=True)
class RetrievalMetrics:
    """Means over the answerable queries; ``mr1`` is the mean 1-based rank of the first relevant reference.

    ``n_queries`` counts every query row, ``n_unanswerable`` those left out (no relevant reference among their
    kept cells), ``n_scored`` = ``n_queries − n_unanswerable`` the rows the means are over.
    """

    mean_ap: float
    mr1: float
    hit_rate: float
    precision_at_10: float
    n_queries: int
    n_unanswerable: int

    @property
    def n_scored(self) -> int:
        return self.n_queries - self.n_unanswerable

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "n_scored": self.n_scored}


@dataclass(frozen=True)
class PerQueryMetrics:
    """One value per query row, kept so the bootstrap can resample queries without re-ranking anything.

    Rows of unanswerable queries hold NaN (AP, P@10), rank 0 and no hit; every summary skips them by
    ``answerable``, and a NaN makes any use that forgets the mask visible instead of quietly low.
    """

    average_precision: np.ndarray  # [Q] float64, AP within topk (0 if no relevant reference within topk)
    first_relevant_rank: np.ndarray  # [Q] int64, ≥ 1 (full ranking, not cut at topk); 0 = unanswerable
    hit_at_1: np.ndarray  # [Q] bool
    precision_at_10: np.ndarray  # [Q] float64
    answerable: np.ndarray  # [Q] bool, a relevant reference exists among the row's kept cells

    def summary(self) -> RetrievalMetrics:
        require_answerable(self.answerable, "summary")
        scored = _metric_columns(self)[self.answerable].mean(axis=0)  # [M]
        return RetrievalMetrics(*map(float, scored), n_queries=int(self.answerable.size),
                                n_unanswerable=int((~self.answerable).sum()))


@dataclass(frozen=True)
class MetricInterval:
    """Point estimate plus the bootstrap distribution's mean, percentile interval and standard deviation."""

    point: float
    mean: float
    ci_low: float
    ci_high: float
    std: float
    n_bootstrap: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def self_match_mask(n: int) -> np.ndarray:
    """Exclusion mask when the query set is the reference set: a track must not find itself."""
    return np.eye(n, dtype=bool)


def pair_mask(pairs: Iterable[tuple[int, int]], n_queries: int, n_refs: int) -> np.ndarray:
    """Exclusion mask from ``query_in_ref`` pairs (query i is the same recording as reference j)."""
    cells = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2)
    bad = (cells[:, 0] < 0) | (cells[:, 0] >= n_queries) | (cells[:, 1] < 0) | (cells[:, 1] >= n_refs)
    if bad.any():
        i, j = cells[np.argmax(bad)]
        raise ValueError(f"query_in_ref pair ({i}, {j}) is outside the {n_queries}×{n_refs} distance matrix "
                         f"({int(bad.sum())} such pairs)")
    mask = np.zeros((n_queries, n_refs), dtype=bool)
    mask[cells[:, 0], cells[:, 1]] = True
    return mask


def answerable_queries(query_labels: np.ndarray, ref_labels: np.ndarray,
                       excluded: np.ndarray | None = None) -> np.ndarray:
    """[Q] bool: which queries have a reference of their own work among their kept (not excluded) cells.

    Needs labels only, so a test set can be checked before any model exists.
    """
    relevant = np.asarray(ref_labels)[None, :] == np.asarray(query_labels)[:, None]  # [Q, R]
    if excluded is not None:
        relevant &= ~np.asarray(excluded, dtype=bool)
    return relevant.any(axis=1)


def require_answerable(answerable: np.ndarray, what: str = "the test set") -> None:
    """Raise ``NoAnswerableQueries`` naming ``what`` when no query can be answered."""
    if not np.any(answerable):
        raise NoAnswerableQueries(
            f"{what}: none of its {np.size(answerable)} queries has another performance of its work among the "
            "references (after excluding the query itself / its query_in_ref pairs), so mAP, MR1, HR@1 and P@10 "
            "are undefined; add works with at least two performances")


def per_query_metrics(distances: np.ndarray, query_labels: np.ndarray, ref_labels: np.ndarray,
                      excluded: np.ndarray | None = None, topk: int = DEFAULT_TOPK) -> PerQueryMetrics:
    """Score every query row against its label, in blocks of rows (no per-query Python loop).

    Raises ``NoAnswerableQueries`` when no query is answerable (see the module docstring).
    """
    distances, query_labels, ref_labels, excluded = _checked(distances, query_labels, ref_labels, excluded, topk)
    n_queries, n_refs = distances.shape
    depth = min(topk, n_refs)
    rows_per_block = max(1, _CELLS_PER_BLOCK // max(n_refs, 1))
    parts = [_score_rows(distances[lo:lo + rows_per_block], query_labels[lo:lo + rows_per_block], ref_labels,
                         None if excluded is None else excluded[lo:lo + rows_per_block], depth)
             for lo in range(0, n_queries, rows_per_block)]
    scored = PerQueryMetrics(*(np.concatenate(column) for column in zip(*parts)))
    require_answerable(scored.answerable, "distance matrix")
    return scored


def retrieval_metrics(distances: np.ndarray, query_labels: np.ndarray, ref_labels: np.ndarray,
                      excluded: np.ndarray | None = None, topk: int = DEFAULT_TOPK) -> RetrievalMetrics:
    """mAP, MR1, HR@1 and P@10 of a distance matrix over its answerable queries (see the module docstring)."""
    return per_query_metrics(distances, query_labels, ref_labels, excluded, topk).summary()


def bootstrap_metrics(per_query: PerQueryMetrics, query_labels: np.ndarray, n_bootstrap: int = 1000,
                      seed: int = 12345, confidence: float = 0.95) -> dict[str, MetricInterval]:
    """Work-stratified bootstrap: resample query *works*, keep all their answerable rows and all references.

    Only answerable rows take part (a work whose queries are all unanswerable is never drawn), so every
    replicate is a mean over answerable queries like the point estimate. Every reference column is kept, so a
    query row's metrics do not change under resampling; a replicate is therefore a weighted mean of per-work
    sums, with weights = how often each work was drawn.
    """
    query_labels = np.asarray(query_labels)
    if query_labels.shape != per_query.average_precision.shape:
        raise ValueError(f"{query_labels.shape[0] if query_labels.ndim else 0} query labels for "
                         f"{per_query.average_precision.size} scored queries")
    if n_bootstrap < 1:
        raise ValueError(f"n_bootstrap must be ≥ 1, got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    require_answerable(per_query.answerable, "bootstrap")
    values = _metric_columns(per_query)[per_query.answerable]  # [A, M]
    _, work_of_row = np.unique(query_labels[per_query.answerable], return_inverse=True)
    n_works = int(work_of_row.max()) + 1
    rows_per_work = np.bincount(work_of_row, minlength=n_works)
    sums_per_work = np.stack([np.bincount(work_of_row, weights=column, minlength=n_works) for column in values.T],
                             axis=1)  # [W, M]
    rng = np.random.default_rng(seed)
    replicates = np.empty((n_bootstrap, values.shape[1]))
    for b in range(n_bootstrap):
        times_drawn = np.bincount(rng.integers(0, n_works, size=n_works), minlength=n_works)  # [W]
        replicates[b] = times_drawn @ sums_per_work / (times_drawn @ rows_per_work)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(replicates, [tail, 100.0 - tail], axis=0)
    points = values.mean(axis=0)
    return {name: MetricInterval(point=float(points[m]), mean=float(replicates[:, m].mean()),
                                 ci_low=float(low[m]), ci_high=float(high[m]),
                                 std=float(replicates[:, m].std(ddof=1)) if n_bootstrap > 1 else 0.0,
                                 n_bootstrap=n_bootstrap)
            for m, name in enumerate(_METRIC_NAMES)}


def min_segment_distance(query_segments: list[np.ndarray], ref_segments: list[np.ndarray],
                         max_cells: int = 1 << 24) -> np.ndarray:
    """Track × track distance = min cosine distance over segment pairs, as float32 [Q, R].

    One matrix product per block of query tracks, then segment→track max-similarity reductions along both axes
    (``np.maximum.reduceat``); blocks hold at most ``max_cells`` similarities.
    """
    queries, query_counts = stack_tracks(query_segments, "query")
    refs, ref_counts = stack_tracks(ref_segments, "reference")
    query_starts, ref_starts = np.cumsum(query_counts) - query_counts, np.cumsum(ref_counts) - ref_counts
    query_bounds = np.append(query_starts, len(queries))
    rows_per_block = max(1, max_cells // len(refs))
    distances = np.empty((len(query_segments), len(ref_segments)), dtype=np.float32)
    first = 0
    while first < len(query_segments):
        # Largest run of whole tracks whose segments fit the block (at least one track).
        last = max(first + 1, int(np.searchsorted(query_bounds, query_bounds[first] + rows_per_block, "right")) - 1)
        last = min(last, len(query_segments))
        rows = slice(query_bounds[first], query_bounds[last])
        similarity = queries[rows] @ refs.T  # [S_q, S_r]
        per_ref_track = np.maximum.reduceat(similarity, ref_starts, axis=1)  # [S_q, R]
        per_track = np.maximum.reduceat(per_ref_track, query_starts[first:last] - query_bounds[first], axis=0)
        distances[first:last] = 1.0 - np.clip(per_track, -1.0, 1.0)  # [Q_block, R]
        first = last
    return distances


_METRIC_NAMES = ("mean_ap", "mr1", "hit_rate", "precision_at_10")


def _metric_columns(per_query: PerQueryMetrics) -> np.ndarray:
    return np.stack([per_query.average_precision, per_query.first_relevant_rank.astype(np.float64),
                     per_query.hit_at_1.astype(np.float64), per_query.precision_at_10], axis=1)


def _score_rows(distances: np.ndarray, query_labels: np.ndarray, ref_labels: np.ndarray,
                excluded: np.ndarray | None, depth: int) -> tuple[np.ndarray, ...]:
    """All four metrics follow from the ranks of a row's relevant cells, so only those are ranked.

    AP is over the relevant references within the top ``depth`` (0 when none is); the first relevant rank is
    taken from the full ranking, so a query whose match lies beyond ``depth`` ranks low instead of 0.
    """
    kept = np.ones(distances.shape, dtype=bool) if excluded is None else ~excluded
    relevant = (ref_labels[None, :] == query_labels[:, None]) & kept
    answerable = relevant.any(axis=1)
    ranks = _relevant_ranks(distances, relevant, kept)  # [B, K]
    found = ranks <= depth  # sorted ranks, so the found ones come first in each row
    n_found = found.sum(axis=1)
    hits_so_far = np.arange(1, ranks.shape[1] + 1)  # the m-th relevant cell has m hits up to its rank
    precision_sum = np.where(found, hits_so_far / ranks, 0.0).sum(axis=1)
    average_precision = np.divide(precision_sum, n_found, out=np.zeros(len(ranks)), where=n_found > 0)
    first_rank = np.where(answerable, ranks[:, 0], 0).astype(np.int64)
    hit_at_1 = first_rank == 1
    precision_at_10 = (ranks <= min(10, depth)).sum(axis=1) / 10.0
    average_precision[~answerable] = np.nan
    precision_at_10[~answerable] = np.nan
    return average_precision, first_rank, hit_at_1, precision_at_10, answerable


def _relevant_ranks(distances: np.ndarray, relevant: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """1-based stable-sort ranks among the kept cells of each row's relevant cells, ascending [B, K].

    Rows with fewer than K relevant cells are padded with a rank past the end. Works have a handful of
    performances, so counting the cells ahead of each relevant one (K passes over the block) beats sorting
    whole rows; a block with many relevant cells per row falls back to a stable argsort.
    """
    n_rows, n_cols = distances.shape
    counts = relevant.sum(axis=1)
    width = max(int(counts.max(initial=0)), 1)
    rows, cols = np.nonzero(relevant)  # row-major: columns ascend within a row
    slot = np.arange(rows.size) - np.repeat(np.cumsum(counts) - counts, counts)
    past_end = n_cols + 1
    ranks = np.full((n_rows, width), past_end, dtype=np.int64)
    if width <= _MAX_COUNTED_RELEVANT:
        column = np.full((n_rows, width), n_cols, dtype=np.int64)
        column[rows, slot] = cols
        index = np.arange(n_cols)
        candidates = np.where(kept, distances, np.inf)  # excluded cells are never ahead of a kept one
        for m in range(width):  # a loop over relevant slots, each pass vectorised over the whole block
            present = column[:, m] < n_cols
            own = np.minimum(column[:, m], n_cols - 1)[:, None]
            threshold = np.take_along_axis(distances, own, axis=1)  # [B, 1]
            ahead = (candidates < threshold) | ((candidates == threshold) & (index < own))
            ranks[present, m] = ahead[present].sum(axis=1) + 1
        return np.sort(ranks, axis=1)
    order = np.argsort(np.where(kept, distances, np.inf), axis=1, kind="stable")  # excluded cells sort last
    rows, positions = np.nonzero(np.take_along_axis(relevant, order, axis=1))
    ranks[rows, slot] = positions + 1  # slot order = rank order here, since positions ascend within a row
    return ranks


def _checked(distances: np.ndarray, query_labels: np.ndarray, ref_labels: np.ndarray,
             excluded: np.ndarray | None, topk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    distances = np.asarray(distances)
    query_labels, ref_labels = np.asarray(query_labels), np.asarray(ref_labels)
    if distances.ndim != 2:
        raise ValueError(f"distance matrix must be 2-D [queries, refs], got shape {distances.shape}")
    if query_labels.shape != (distances.shape[0],) or ref_labels.shape != (distances.shape[1],):
        raise ValueError(f"labels {query_labels.shape} / {ref_labels.shape} do not match the distance matrix "
                         f"{distances.shape}")
    if distances.shape[0] == 0:
        raise NoAnswerableQueries(f"distance matrix {distances.shape} has no query rows: nothing to score")
    if excluded is not None:
        excluded = np.asarray(excluded, dtype=bool)
        if excluded.shape != distances.shape:
            raise ValueError(f"exclusion mask {excluded.shape} does not match the distance matrix "
                             f"{distances.shape}")
    kept = distances if excluded is None else distances[~excluded]
    if not np.isfinite(kept).all():
        raise ValueError("distance matrix has NaN or infinite entries outside the excluded cells")
    if topk < 1:
        raise ValueError(f"topk must be ≥ 1, got {topk}")
    return distances, query_labels, ref_labels, excluded
