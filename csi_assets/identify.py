"""Identify recordings: which stored performances (or works) does each query audio file cover?

A query goes through exactly the reference path: decoded to 16 kHz mono, the dataset's CQT settings and code
(``csi_model.cqt.compute_cqt``, batched over queries), every segment embedded by the promoted model with
the model's ``Embedder``, then ranked against the model's reference index (``csi_assets.reference_index``: a FAISS index
of every stored segment, re-ranked exactly): a performance is as near as its nearest segment pair, a work as near
as its nearest performance. The whole query is used, not its first 135 s, and many queries share one model load
and one index.

With a calibration, each match gets a z-score and two p-values: ``p_pair`` (one unrelated pair this close) and
``p`` (a search of all N reference performances finding an unrelated one this close, the number to judge a match
by); ``p_floored`` marks values raised to the floor a finite null sample supports. See docs/statistics.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from csi_assets.layouts import DatasetLayout
from csi_assets.model_loading import LoadedModel, ModelLoadError, dataset_cqt_settings, load_model
from csi_assets.reference_index import IndexUnavailable, ReferenceIndex, current_index
from csi_assets.store import Store
from csi_assets.store import embeddings as embedding_store
from csi_model.audio import AudioError, load_audio
from csi_model.calibration import Calibration
from csi_model.cqt import compute_cqt

QUERIES_PER_BATCH = 16
"""Queries decoded, transformed and embedded together: amortises each call, bounds memory for long lists."""


class IdentifyError(RuntimeError):
    """A condition the user must fix (no store, no model, no references, unreadable audio); names what and where."""


@dataclass(frozen=True)
class Match:
    rank: int
    perf: str  # with works=True: the work's best-matching performance
    work: str
    distance: float  # 1 − cosine similarity of the nearest segment pair
    z: float | None  # (distance − mu) / sigma of the null distribution; None without a calibration
    p: float | None  # per search: P(nearest of the N references searched is this close | all unrelated)
    p_pair: float | None  # per pair: P(D ≤ distance | one unrelated pair), never below 1/(n_pairs + 1)
    p_floored: bool | None  # True: the null sample has no pair this close, p and p_pair are upper bounds


@dataclass(frozen=True)
class QueryResult:
    query: str
    model: str
    matches: list[Match]
    n_compared: int  # reference performances the query was compared with (the N of the per-search p)
    p_pair_floor: float | None  # 1/(n_pairs + 1) of the calibration; None without one

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "model": self.model, "n_compared": self.n_compared,
                "p_pair_floor": self.p_pair_floor, "matches": [asdict(m) for m in self.matches]}


class Identifier:
    """The promoted (or a given) model, the reference index and the calibration of one dataset, loaded once."""

    def __init__(self, store_path: str | os.PathLike[str], dataset_dir: str | os.PathLike[str],
                 model_id: str | None = None, device: str | None = None, lock_timeout_s: float = 120.0,
                 model: LoadedModel | None = None) -> None:
        """Opens the store read-only (raises ``StoreLockedError`` if a writer holds it beyond ``lock_timeout_s``).
        ``model``: an already loaded model to reuse (a service reloading its index after an ingested batch)."""
        store_path, dataset = Path(store_path), DatasetLayout.at(dataset_dir)
        if not store_path.is_file():
            raise IdentifyError(f"no store at {store_path}: materialize reference_embeddings first")
        store = Store(store_path, lock_timeout_s, read_only=True)
        self.dataset = dataset.name
        try:
            self.model: LoadedModel = model or load_model(store, self.dataset, model_id, device)
            self.settings = dataset_cqt_settings(dataset.root, self.model)  # checked against the model's input
            self.references: ReferenceIndex = current_index(store, store_path, self.dataset, self.model.model_id,
                                                            logging.getLogger(__name__).warning)
        except (ModelLoadError, IndexUnavailable) as err:
            raise IdentifyError(str(err)) from err
        record = embedding_store.calibration(store, self.dataset, self.model.model_id)
        self.calibration: Calibration | None = record.calibration if record else None

    def identify(self, queries: Sequence[str | os.PathLike[str]], top: int = 10, works: bool = False,
                 calibrated: bool = False, progress: Callable[[int], None] | None = None,
                 failed: Callable[[str, str], None] | None = None) -> list[QueryResult]:
        """Rank performances (or works) for every query file; ``progress(n)`` after each batch of n queries.

        A file that cannot be decoded or is too short raises :class:`IdentifyError`, or with ``failed`` is
        reported as ``failed(path, message)`` and left out of the results, so the other queries are answered."""
        if calibrated and self.calibration is None:
            raise IdentifyError(f"no calibration stored for model {self.model.model_id}: materialize "
                                "reference_embeddings first")
        results: list[QueryResult] = []
        for first in range(0, len(queries), QUERIES_PER_BATCH):
            batch = [str(q) for q in queries[first:first + QUERIES_PER_BATCH]]
            embedded, tracks = self.embed_queries(batch, failed)
            if embedded:
                results += self._rank(embedded, tracks, top, works)
            if progress:
                progress(len(batch))
        return results

    def embed_queries(self, paths: Sequence[str], failed: Callable[[str, str], None] | None = None
                      ) -> tuple[list[str], list[np.ndarray]]:
        """Decode, CQT and embed every segment of each file -> (the files embedded, per file [segments, embed_dim]
        unit rows); a file that fails goes to ``failed`` (see :meth:`identify`)."""
        def fail(path: str, message: str) -> None:
            if failed is None:
                raise IdentifyError(message)
            failed(path, message)

        kept, signals = [], []
        for path in paths:
            try:
                signals.append(load_audio(path))
                kept.append(path)
            except AudioError as err:
                fail(path, str(err))
        features = compute_cqt(signals, self.settings, self.model.device) if signals else []
        embedder = self.model.embedder
        kept, features = embedder.drop_too_short(kept, features, self.settings.fps, "identify", fail)
        return kept, embedder.embed(features) if features else []

    def _rank(self, paths: Sequence[str], tracks: list[np.ndarray], top: int, works: bool) -> list[QueryResult]:
        found = self.references.search(tracks, top, works)
        n_compared = len(self.references.groups.perfs)  # works mode too: a work is as near as its nearest perf
        results = []
        for path, hits in zip(paths, found):
            distances = np.array([[h.distance for h in hits]], dtype=np.float64)  # [1, top]
            scores = self._scores(distances, n_compared)
            matches = [Match(rank=r + 1, perf=hit.perf, work=hit.work, distance=hit.distance,
                             **{k: v[0][r] for k, v in scores.items()}) for r, hit in enumerate(hits)]
            results.append(QueryResult(path, self.model.model_id, matches, n_compared,
                                       None if self.calibration is None else self.calibration.p_floor))
        return results

    def _scores(self, distances: np.ndarray, n_compared: int) -> dict[str, list[list[Any]]]:
        """z, p (per search), p_pair and p_floored of every [query, rank] distance; None without a calibration."""
        cal = self.calibration
        if cal is None:
            return {key: [[None] * distances.shape[1]] * distances.shape[0] for key in ("z", "p", "p_pair",
                                                                                         "p_floored")}
        return {"z": cal.z_score(distances).tolist(), "p": cal.search_p_value(distances, n_compared).tolist(),
                "p_pair": cal.p_value(distances).tolist(), "p_floored": cal.at_floor(distances).tolist()}
