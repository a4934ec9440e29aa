"""Identify recordings: which stored performances (or works) does each query audio file cover?

A query goes through exactly the reference path: decoded to 16 kHz mono, the dataset's CQT settings and code
(``csi_model.cqt.compute_cqt``, batched over queries), every segment embedded by the promoted model with
``embed_tracks``, then ranked against the model's reference index (``csi_assets.reference_index``: a FAISS index
of every stored segment, re-ranked exactly): a performance is as near as its nearest segment pair, a work as near
as its nearest performance. The whole query is used, not its first 135 s, and many queries share one model load
and one index.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from csi_assets.model_loading import LoadedModel, ModelLoadError, dataset_cqt_settings, load_model
from csi_assets.reference_index import IndexUnavailable, ReferenceIndex, current_index
from csi_assets.store import Store
from csi_assets.store import embeddings as embedding_store
from csi_model.audio import AudioError, load_audio
from csi_model.calibration import Calibration
from csi_model.cqt import compute_cqt
from csi_model.embedding import embed_tracks

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
    p: float | None  # P(D ≤ distance | unrelated recordings); None without a calibration


@dataclass(frozen=True)
class QueryResult:
    query: str
    model: str
    matches: list[Match]

    def to_dict(self) -> dict[str, Any]:
        return {"query": self.query, "model": self.model, "matches": [asdict(m) for m in self.matches]}


class Identifier:
    """The promoted (or a given) model, the reference index and the calibration of one dataset, loaded once."""

    def __init__(self, store_path: str | os.PathLike[str], dataset_dir: str | os.PathLike[str],
                 model_id: str | None = None, device: str | None = None, model: LoadedModel | None = None) -> None:
        """``model``: an already loaded model to reuse (a service reloading its index after an ingested batch)."""
        store_path, dataset_dir = Path(store_path), Path(dataset_dir).resolve()
        if not store_path.is_file():
            raise IdentifyError(f"no store at {store_path}: materialize reference_embeddings first")
        store = Store(store_path)
        self.dataset = dataset_dir.name
        try:
            self.model: LoadedModel = model or load_model(store, self.dataset, model_id, device)
            self.references: ReferenceIndex = current_index(store, store_path, self.dataset, self.model.model_id,
                                                            logging.getLogger(__name__).warning)
        except (ModelLoadError, IndexUnavailable) as err:
            raise IdentifyError(str(err)) from err
        record = embedding_store.calibration(store, self.dataset, self.model.model_id)
        self.calibration = Calibration.from_dict(record) if record else None
        self.settings = dataset_cqt_settings(dataset_dir)

    def identify(self, queries: Sequence[str | os.PathLike[str]], top: int = 10, works: bool = False,
                 calibrated: bool = False, progress: Callable[[int], None] | None = None) -> list[QueryResult]:
        """Rank performances (or works) for every query file; ``progress(n)`` after each batch of n queries."""
        if calibrated and self.calibration is None:
            raise IdentifyError(f"no calibration stored for model {self.model.model_id}: materialize "
                                "reference_embeddings first")
        results: list[QueryResult] = []
        for first in range(0, len(queries), QUERIES_PER_BATCH):
            batch = [str(q) for q in queries[first:first + QUERIES_PER_BATCH]]
            tracks = self.embed_queries(batch)
            results += self._rank(batch, tracks, top, works)
            if progress:
                progress(len(batch))
        return results

    def embed_queries(self, paths: Sequence[str]) -> list[np.ndarray]:
        """Decode, CQT and embed every segment of each file -> per file [segments, embed_dim] unit rows."""
        signals = []
        for path in paths:
            try:
                signals.append(load_audio(path))
            except AudioError as err:
                raise IdentifyError(str(err)) from err
        features = compute_cqt(signals, self.settings, self.model.device)
        for path, feature in zip(paths, features):
            if len(feature) < self.model.min_raw_frames:
                raise IdentifyError(f"{path}: too short to identify ({len(feature) / self.settings.fps:.2f} s; "
                                    f"the model needs {self.model.min_raw_frames / self.settings.fps:.2f} s)")
        hp = self.model.hparams
        return embed_tracks(self.model.model, features, hp.chunk_frame[0], hp.mean_size, hp.batch_size,
                            self.model.device)

    def _rank(self, paths: Sequence[str], tracks: list[np.ndarray], top: int, works: bool) -> list[QueryResult]:
        found = self.references.search(tracks, top, works)
        results = []
        for path, hits in zip(paths, found):
            distances = np.array([h.distance for h in hits], dtype=np.float64)
            z = p = np.full(distances.shape, np.nan)
            if self.calibration is not None:
                z, p = self.calibration.z_score(distances), self.calibration.p_value(distances)
            matches = [Match(rank=r + 1, perf=hit.perf, work=hit.work, distance=hit.distance, z=_optional(z[r]),
                             p=_optional(p[r])) for r, hit in enumerate(hits)]
            results.append(QueryResult(path, self.model.model_id, matches))
        return results


def _optional(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
