"""The one evaluation path (``csi_model.evaluation``) gives the numbers the three former evaluators gave.

The expected values below were computed by the code before it was folded into one module: training's
``evaluate_test_set`` (metrics), the sweep's ``bootstrap_map`` (mAP interval, 50 iterations) and the report's
``evaluate_test_set`` (metrics and every interval, 50 iterations), on this fixed tiny case. Embedding sums are
those of the former ``embed_tracks``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from csi_model.embedding import Embedder
from csi_model.evaluation import RetrievalTestSet, embed_items, evaluate
from csi_model.model import CoverHunter, ModelConfig
from tests.train_fixtures import synthetic_features, tiny_hparams

FROZEN_METRICS = {
    "t": {"mean_ap": 0.6412698412698412, "mr1": 1.0, "hit_rate": 1.0, "precision_at_10": 0.3, "n_queries": 6,
          "n_unanswerable": 0, "n_scored": 6},
    "x": {"mean_ap": 0.44791666666666663, "mr1": 3.75, "hit_rate": 0.25, "precision_at_10": 0.15000000000000002,
          "n_queries": 5, "n_unanswerable": 1, "n_scored": 4},
    "s": {"mean_ap": 0.5369047619047619, "mr1": 3.0, "hit_rate": 0.5555555555555556,
          "precision_at_10": 0.19999999999999998, "n_queries": 9, "n_unanswerable": 0, "n_scored": 9},
}
FROZEN_SEGMENTS = [2, 2, 3, 1, 2, 1, 2, 2, 3]
FROZEN_SUMS = [1.7672292441129684, 3.1677590917097405, 4.672033135779202, 1.3220416332478635, 3.5010946575785056,
               1.37111387681216, 2.742459387231065, 2.461530567263253, 4.146678113611415]
FROZEN_SWEEP_MAP_INTERVAL = (0.5562169312169312, 0.7263227513227513, 0.06429395665209871)  # test set "t"
FROZEN_REPORT_INTERVALS = {  # test set "x": (ci_low, ci_high, std)
    "mean_ap": (0.29583333333333334, 0.6, 0.11496419387363993),
    "mr1": (3.0, 4.5, 0.5669467095138409),
    "hit_rate": (0.0, 0.5, 0.1889822365046136),
    "precision_at_10": (0.1, 0.2, 0.03779644730092273),
}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    hp = tiny_hparams()
    items = synthetic_features(tmp_path_factory.mktemp("eval"), n_works=3, perfs_per_work=3, n_frames=(40, 130),
                               seed=3)
    torch.manual_seed(0)
    embedder = Embedder.for_hparams(CoverHunter(ModelConfig.from_hparams(hp, 3)), hp, "cpu")
    sets = {"t": RetrievalTestSet("t", items[:6], items),
            "x": RetrievalTestSet("x", items[:5], items[2:], exclude_pairs=((2, 0), (3, 1), (4, 2))),
            "s": RetrievalTestSet("s", items)}
    return embedder, items, sets


def test_embeddings_equal_the_former_embed_tracks(case) -> None:
    embedder, items, _ = case
    vectors = embed_items(embedder, items)
    assert [len(v) for v in vectors] == FROZEN_SEGMENTS
    np.testing.assert_allclose([v.astype(np.float64).sum() for v in vectors], FROZEN_SUMS, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["t", "x", "s"])
def test_metrics_equal_the_former_evaluators(case, name: str) -> None:
    embedder, _, sets = case
    assert evaluate(embedder, sets[name]).metrics.to_dict() == pytest.approx(FROZEN_METRICS[name], abs=1e-12)


def test_bootstrap_intervals_equal_the_former_sweep_and_report(case) -> None:
    embedder, _, sets = case
    sweep = evaluate(embedder, sets["t"]).bootstrap(50)["mean_ap"]
    assert (sweep.ci_low, sweep.ci_high, sweep.std) == pytest.approx(FROZEN_SWEEP_MAP_INTERVAL, abs=1e-12)
    report = evaluate(embedder, sets["x"]).bootstrap(50)
    assert report.keys() == FROZEN_REPORT_INTERVALS.keys()
    for name, interval in report.items():
        assert (interval.ci_low, interval.ci_high, interval.std) == pytest.approx(FROZEN_REPORT_INTERVALS[name],
                                                                                  abs=1e-12), name


def test_shared_cache_embeds_each_track_once_and_changes_nothing(case) -> None:
    embedder, items, sets = case
    alone = [evaluate(embedder, sets[n]).metrics for n in ("t", "x")]
    cache: dict = {}
    embedded: list[int] = []
    together = [evaluate(embedder, sets[n], cache, embedded.append).metrics for n in ("t", "x")]
    assert [dataclasses.asdict(m) for m in together] == [dataclasses.asdict(m) for m in alone]
    assert sum(embedded) == len(items) and set(cache) == {it.feat_path for it in items}
