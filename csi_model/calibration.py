"""Turn a cosine distance into a score: z-score and p-values under the null of *unrelated* recordings.

The null distribution is sampled from pairs of unit embeddings of different works, with works given by the
catalog's integer work ids (guessing works from perf-id prefixes would make same-work pairs count as negatives).
Sampling is one bounded procedure: enumerate every cross-work pair when there are few, otherwise rejection-sample
with a bounded number of vectorised rounds.

Two p-values (definitions and reasoning in docs/statistics.md):

- ``p_value`` (per pair): P(D ≤ d) for *one* unrelated pair, read off the null sample's ECDF. A sample of n pairs
  cannot tell probabilities below 1/(n + 1) apart, so the value never goes below ``p_floor`` = 1/(n + 1), and
  ``at_floor`` says when it was raised to it (the true value is then smaller: report "< p_floor").
- ``search_p_value`` (per search): a query is compared with N references, so even an unrelated query has a best
  match far into the tail of the per-pair null. P(best of N unrelated distances ≤ d) = 1 − (1 − p_pair)^N is the
  chance that a search of N unrelated references turns up a distance this small; it is conservative when the
  references are exchangeable given the query (Jensen's inequality), and it uses the N actually searched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from csi_model.unit_rows import padded_rows, require_unit_rows, stack_tracks

DEFAULT_N_PAIRS = 50000
DEFAULT_N_QUANTILES = 1001
DEFAULT_SEED = 12345
_SMALLEST_PROBABILITY = 1e-6
_MAX_ROUNDS = 16
_MAX_CANDIDATES_PER_ROUND = 1 << 23
_NORM_TOLERANCE = 1e-4
# Bound on pairs × S_max² × D per block of track pairs: keeps the gathered segments and products near 256 MB.
_PAIR_CELLS_PER_BLOCK = 1 << 25


@dataclass(frozen=True)
class Calibration:
    """Summary of the null distance distribution; small p-value / strongly negative z-score = likely match."""

    mu: float
    sigma: float
    ecdf_quantiles: np.ndarray  # [n_quantiles] float32, non-decreasing distances
    ecdf_probs: np.ndarray  # [n_quantiles] float32, P(D ≤ quantile | unrelated)
    n_pairs: int
    n_quantiles: int

    def z_score(self, distance: np.ndarray | float) -> np.ndarray:
        return (np.asarray(distance, dtype=np.float64) - self.mu) / self.sigma

    @property
    def p_floor(self) -> float:
        """The smallest per-pair p the null sample supports: 1/(n_pairs + 1)."""
        return 1.0 / (self.n_pairs + 1)

    def p_value(self, distance: np.ndarray | float) -> np.ndarray:
        """Per-pair p: estimated P(D ≤ d | unrelated works), never below ``p_floor``."""
        return np.maximum(self._ecdf(distance), self.p_floor)

    def at_floor(self, distance: np.ndarray | float) -> np.ndarray:
        """True where the null sample puts less than ``p_floor`` below ``distance``: both p-values are then
        upper bounds (print them as "< value")."""
        return self._ecdf(distance) < self.p_floor

    def search_p_value(self, distance: np.ndarray | float, n_compared: int) -> np.ndarray:
        """Per-search p: P(the nearest of ``n_compared`` unrelated references is at ≤ d) = 1 − (1 − p_pair)^N.

        ``n_compared`` is the number of references the query was compared with (performances, also when works
        are ranked: a work is as near as its nearest performance). Never below 1 − (1 − p_floor)^N.
        """
        if n_compared < 1:
            raise ValueError(f"a search compares a query with at least 1 reference, got n_compared={n_compared}")
        with np.errstate(divide="ignore"):  # p_pair = 1 gives log 0 = −inf, hence p = 1: right
            return -np.expm1(n_compared * np.log1p(-self.p_value(distance)))

    def _ecdf(self, distance: np.ndarray | float) -> np.ndarray:
        return np.clip(np.interp(distance, self.ecdf_quantiles, self.ecdf_probs), 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain floats and lists, ready for JSON."""
        return {"mu": float(self.mu), "sigma": float(self.sigma),
                "ecdf_quantiles": self.ecdf_quantiles.astype(float).tolist(),
                "ecdf_probs": self.ecdf_probs.astype(float).tolist(),
                "n_pairs": int(self.n_pairs), "n_quantiles": int(self.n_quantiles)}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Calibration:
        missing = {"mu", "sigma", "ecdf_quantiles", "ecdf_probs", "n_pairs", "n_quantiles"} - set(record)
        if missing:
            raise ValueError(f"calibration record lacks {sorted(missing)}")
        quantiles = np.asarray(record["ecdf_quantiles"], dtype=np.float32)
        probs = np.asarray(record["ecdf_probs"], dtype=np.float32)
        if quantiles.shape != probs.shape or quantiles.shape != (int(record["n_quantiles"]),):
            raise ValueError(f"calibration record has {quantiles.size} quantiles and {probs.size} probabilities "
                             f"for n_quantiles = {record['n_quantiles']}")
        return cls(mu=float(record["mu"]), sigma=float(record["sigma"]), ecdf_quantiles=quantiles,
                   ecdf_probs=probs, n_pairs=int(record["n_pairs"]), n_quantiles=int(record["n_quantiles"]))


def compute_calibration(embeddings: np.ndarray, work_ids: np.ndarray, n_pairs: int = DEFAULT_N_PAIRS,
                        n_quantiles: int = DEFAULT_N_QUANTILES, seed: int = DEFAULT_SEED) -> Calibration:
    """Null distribution of 1 − cos between unit embeddings [N, D] of different works (``work_ids`` [N])."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"need embeddings [N, D], got shape {embeddings.shape}")
    require_unit_rows(embeddings, "calibration embeddings", _NORM_TOLERANCE)
    first, second = _null_pairs(work_ids, len(embeddings), n_pairs, n_quantiles, seed)
    dots = np.einsum("nd,nd->n", embeddings[first], embeddings[second], dtype=np.float64)
    return _from_null_distances(1.0 - np.clip(dots, -1.0, 1.0), n_quantiles)


def compute_track_calibration(tracks: Sequence[np.ndarray], work_ids: np.ndarray, n_pairs: int = DEFAULT_N_PAIRS,
                              n_quantiles: int = DEFAULT_N_QUANTILES, seed: int = DEFAULT_SEED) -> Calibration:
    """Null distribution of the *track* distance (min over segment pairs) between different works.

    Identification and evaluation score tracks by their nearest segment pair; a minimum over many pairs is
    smaller than a single pair's distance, so only a null of that same statistic gives honest p-values.
    """
    segments, counts = stack_tracks(tracks, "calibration")
    first, second = _null_pairs(work_ids, len(tracks), n_pairs, n_quantiles, seed)
    rows = padded_rows(counts)  # [T, S_max]
    pairs_per_block = max(1, _PAIR_CELLS_PER_BLOCK // (rows.shape[1] ** 2 * segments.shape[1]))
    nearest = np.concatenate([
        np.einsum("psd,pqd->psq", segments[rows[first[lo:lo + pairs_per_block]]],
                  segments[rows[second[lo:lo + pairs_per_block]]], dtype=np.float64).max(axis=(1, 2))
        for lo in range(0, first.size, pairs_per_block)])  # [pairs] best segment-pair cosine
    return _from_null_distances(1.0 - np.clip(nearest, -1.0, 1.0), n_quantiles)


def _from_null_distances(distances: np.ndarray, n_quantiles: int) -> Calibration:
    distances = np.sort(distances)
    sigma = float(distances.std(ddof=1))
    if not sigma > 0.0:
        raise ValueError(f"all {distances.size} cross-work distances are equal ({distances[0]:.6f}); "
                         "a z-score cannot be calibrated on such embeddings")
    probs = ecdf_probabilities(n_quantiles)
    anchors = np.rint(probs * (distances.size - 1)).astype(np.int64)
    return Calibration(mu=float(distances.mean()), sigma=sigma,
                       ecdf_quantiles=distances[anchors].astype(np.float32), ecdf_probs=probs.astype(np.float32),
                       n_pairs=int(distances.size), n_quantiles=n_quantiles)


def ecdf_probabilities(n_quantiles: int = DEFAULT_N_QUANTILES) -> np.ndarray:
    """Anchor probabilities dense in both tails: log-spaced from 1e-6 toward 0.5, 0.5, then mirrored (1 − p)."""
    half = (n_quantiles - 1) // 2
    lower = np.logspace(np.log10(_SMALLEST_PROBABILITY), np.log10(0.5), half, endpoint=False)
    return np.concatenate([lower, [0.5], 1.0 - lower[::-1]])


def cross_work_pairs(work_ids: np.ndarray, n_pairs: int, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) with different works: all unordered ones if there are ≤ n_pairs, else n_pairs drawn."""
    work_ids = np.asarray(work_ids)
    _, work_size = np.unique(work_ids, return_counts=True)
    n = work_ids.size
    n_unordered = (n * n - int((work_size.astype(np.int64) ** 2).sum())) // 2
    if n_unordered <= n_pairs:
        return _all_cross_work_pairs(work_ids)
    return _sampled_cross_work_pairs(work_ids, n_pairs, acceptance=2 * n_unordered / (n * n), seed=seed)


def _all_cross_work_pairs(work_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every unordered pair once, in O(N + pairs): with rows sorted by work, row p pairs with all later blocks."""
    order = np.argsort(work_ids, kind="stable")
    sorted_works = work_ids[order]
    block_end = np.searchsorted(sorted_works, sorted_works, side="right")  # [N] first row of the next work
    partners = work_ids.size - block_end  # [N] rows after p's work block
    first = np.repeat(np.arange(work_ids.size), partners)
    offset_in_run = np.arange(first.size) - np.repeat(np.cumsum(partners) - partners, partners)
    second = block_end[first] + offset_in_run
    return order[first], order[second]


def _sampled_cross_work_pairs(work_ids: np.ndarray, n_pairs: int, acceptance: float,
                              seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform ordered pairs with same-work pairs rejected; rounds are sized from the known acceptance rate."""
    if acceptance * _MAX_CANDIDATES_PER_ROUND * _MAX_ROUNDS < n_pairs:
        raise _too_few_pairs_error(0, n_pairs, acceptance)
    rng = np.random.default_rng(seed)
    n = work_ids.size
    kept_first, kept_second, found = [], [], 0
    for _ in range(_MAX_ROUNDS):
        need = n_pairs - found
        candidates = min(_MAX_CANDIDATES_PER_ROUND, max(1024, int(1.2 * need / acceptance) + 1))
        first, second = rng.integers(0, n, size=candidates), rng.integers(0, n, size=candidates)
        cross = work_ids[first] != work_ids[second]
        kept_first.append(first[cross][:need])
        kept_second.append(second[cross][:need])
        found += kept_first[-1].size
        if found == n_pairs:
            return np.concatenate(kept_first), np.concatenate(kept_second)
    raise _too_few_pairs_error(found, n_pairs, acceptance)


def _too_few_pairs_error(found: int, n_pairs: int, acceptance: float) -> ValueError:
    return ValueError(f"cannot sample {n_pairs} cross-work pairs in {_MAX_ROUNDS} rounds of at most "
                      f"{_MAX_CANDIDATES_PER_ROUND} candidates (found {found}): only {acceptance:.2e} of all "
                      "pairs join different works, one work dominates the references; lower n_pairs or add "
                      "references of other works")


def _null_pairs(work_ids: np.ndarray, n_items: int, n_pairs: int, n_quantiles: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    work_ids = np.asarray(work_ids)
    if work_ids.shape != (n_items,):
        raise ValueError(f"need one work id per embedding/track ({n_items}), got shape {work_ids.shape}")
    if not np.issubdtype(work_ids.dtype, np.integer):
        raise ValueError(f"work ids must be integers (the catalog's work_id), got dtype {work_ids.dtype}")
    if np.unique(work_ids).size < 2:
        raise ValueError("calibration needs embeddings of at least 2 different works")
    if n_pairs < 2:
        raise ValueError(f"n_pairs must be ≥ 2 (a standard deviation needs two distances), got {n_pairs}")
    if n_quantiles < 3 or n_quantiles % 2 == 0:
        raise ValueError(f"n_quantiles must be odd and ≥ 3 (lower tail, median, upper tail), got {n_quantiles}")
    first, second = cross_work_pairs(work_ids, n_pairs, seed)
    if first.size < 2:
        raise ValueError(f"only {first.size} cross-work pair exists; calibration needs at least 2")
    return first, second
