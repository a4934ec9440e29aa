"""Retrieval evaluation of a model on a test set: the one path training, reports and sweeps score models by.

Every track of a test set is embedded once by an :class:`~csi_model.embedding.Embedder` (all segments, tail
included), two tracks are as far apart as their nearest segment pair (the rule identification ranks by), and
the metrics (``csi_model.metrics``: mAP, MR1, HR@1, P@10 over the answerable queries) and their work-stratified
bootstrap intervals are computed from that distance matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csi_model.cqt import load_feature
from csi_model.dataset import FeatureItem
from csi_model.embedding import Embedder
from csi_model.metrics import (
    MetricInterval,
    PerQueryMetrics,
    RetrievalMetrics,
    answerable_queries,
    bootstrap_metrics,
    min_segment_distance,
    pair_mask,
    per_query_metrics,
    self_match_mask,
)

EmbeddingCache = dict[Path, np.ndarray]
"""Feature path -> segment embeddings of one model's current weights: test sets sharing tracks embed them once."""


@dataclass(frozen=True)
class RetrievalTestSet:
    """Queries ranked against references; ``refs=None`` means queries against themselves."""

    name: str
    queries: Sequence[FeatureItem]
    refs: Sequence[FeatureItem] | None = None
    exclude_pairs: Sequence[tuple[int, int]] = ()  # (query index, ref index): the same recording
    every_n_epoch: int = 1

    @property
    def ref_items(self) -> Sequence[FeatureItem]:
        return self.queries if self.refs is None else self.refs

    def tracks(self) -> list[FeatureItem]:
        """Every feature file of the test set once (queries first), in the order they are embedded."""
        return list({item.feat_path: item for item in [*self.queries, *self.ref_items]}.values())

    def labels(self) -> tuple[np.ndarray, np.ndarray]:
        """(query work ids [Q], reference work ids [R]) as int64."""
        return (np.array([it.work_id for it in self.queries], dtype=np.int64),
                np.array([it.work_id for it in self.ref_items], dtype=np.int64))

    def exclusion_mask(self) -> np.ndarray:
        """[Q, R] bool cells never ranked: the diagonal of a self test set, else the listed same-recording pairs."""
        if self.refs is None:
            return self_match_mask(len(self.queries))
        return pair_mask(self.exclude_pairs, len(self.queries), len(self.refs))

    def answerable(self) -> np.ndarray:
        """[Q] bool: queries with another performance of their work among the kept references."""
        return answerable_queries(*self.labels(), self.exclusion_mask())


@dataclass(frozen=True)
class Evaluation:
    """A test set ranked by one model: what reports save and plot, and what the metrics are computed from."""

    test_set: RetrievalTestSet
    query_vectors: list[np.ndarray]  # per query [segments, D] unit rows
    distances: np.ndarray  # [Q, R] min-segment cosine distances
    per_query: PerQueryMetrics

    @property
    def metrics(self) -> RetrievalMetrics:
        """mAP / MR1 / HR@1 / P@10 over the answerable queries."""
        return self.per_query.summary()

    def bootstrap(self, n_bootstrap: int) -> dict[str, MetricInterval]:
        """Work-stratified bootstrap interval of every metric (``csi_model.metrics.bootstrap_metrics``)."""
        return bootstrap_metrics(self.per_query, self.test_set.labels()[0], n_bootstrap)


def embed_items(embedder: Embedder, items: Sequence[FeatureItem], cache: EmbeddingCache | None = None,
                progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """Segment embeddings of every item (``[segments, D]`` each). Only feature files missing from ``cache`` go
    through the model, each once, a batch of tracks at a time; ``progress(n)`` after each batch of n tracks."""
    cache = {} if cache is None else cache
    missing = list({item.feat_path: item for item in items if item.feat_path not in cache}.values())
    for batch, vectors in embedder.batches(missing, lambda item: load_feature(item.feat_path)):
        cache.update(zip((item.feat_path for item in batch), vectors))
        if progress is not None:
            progress(len(batch))
    return [cache[item.feat_path] for item in items]


def evaluate(embedder: Embedder, test_set: RetrievalTestSet, cache: EmbeddingCache | None = None,
             progress: Callable[[int], None] | None = None) -> Evaluation:
    """Embed every track of ``test_set`` once (see :func:`embed_items`), rank its queries against its references
    and score the answerable queries. Raises ``NoAnswerableQueries`` when no query has a match to find."""
    cache = {} if cache is None else cache
    embed_items(embedder, test_set.tracks(), cache, progress)
    queries = [cache[item.feat_path] for item in test_set.queries]
    distances = min_segment_distance(queries, [cache[item.feat_path] for item in test_set.ref_items])  # [Q, R]
    per_query = per_query_metrics(distances, *test_set.labels(), test_set.exclusion_mask())
    return Evaluation(test_set, queries, distances, per_query)
