"""Training-time evaluation embeds each track once per epoch, however many test sets share it."""

from __future__ import annotations

import dataclasses

import torch

from csi_model.model import CoverHunter, ModelConfig
from csi_model.embedding import Embedder
from csi_model.evaluation import RetrievalTestSet, evaluate
from tests.train_fixtures import synthetic_features, tiny_hparams


def test_test_sets_sharing_references_embed_each_track_once_with_the_same_scores(tmp_path) -> None:
    items = synthetic_features(tmp_path, n_works=3, perfs_per_work=3, n_frames=(120, 160))
    hp = tiny_hparams()
    model = CoverHunter(ModelConfig.from_hparams(hp, 3)).eval()
    sets = [RetrievalTestSet("val", items[:3], items), RetrievalTestSet("test", items[3:6], items)]
    tracks_seen: list[int] = []
    model._encoder.register_forward_pre_hook(lambda _module, args: tracks_seen.append(args[0].shape[0]))
    embedder = Embedder.for_hparams(model, hp, torch.device("cpu"))
    alone = [evaluate(embedder, ts).metrics for ts in sets]
    forward_alone = sum(tracks_seen)
    tracks_seen.clear()
    shared: dict = {}
    together = [evaluate(embedder, ts, shared).metrics for ts in sets]
    assert [dataclasses.asdict(m) for m in together] == [dataclasses.asdict(m) for m in alone]
    assert set(shared) == {it.feat_path for it in items}
    assert 2 * sum(tracks_seen) == forward_alone  # the second set's queries and references are all known
