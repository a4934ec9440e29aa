"""reference_index on a real project: built from the stored embeddings, the same top-10 as the exact search (flat
and IVF), updated in place when performances come and go, rebuilt for a newly promoted model, and rebuilt by
identification itself (with a warning naming the asset) when it is missing or out of date."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from csi_assets.assets import serving
from csi_assets.identify import Identifier
from csi_assets.reference_index import PROMOTED, ReferenceIndex, index_root, model_dir
from csi_assets.references import perf_tracks
from csi_assets.store import embeddings as embedding_store
from csi_model.search import PerformanceIndex
from tests.serving_fixtures import (
    materialize_data,
    materialized_metadata,
    project_with_model,
    random_model,
    register_model,
)

ASSETS = [serving.reference_embeddings, serving.reference_index, serving.reference_index_matches_store]


def _materialize(project, **index_config) -> dict:
    run_config = {"ops": {"reference_index": {"config": index_config}}} if index_config else None
    return materialized_metadata(project, ASSETS, "reference_index", run_config)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    project, model_id, hp = project_with_model(tmp_path_factory.mktemp("index"), works=5, perfs=3)
    return project, model_id, hp, _materialize(project)


def _exact_top(project, model_id, top: int, works: bool) -> tuple[list[list[str]], list[np.ndarray]]:
    """Rankings of every stored performance as a query, by the exact search over all stored segments."""
    stored = embedding_store.load_embeddings(project.store, "dataset", model_id)
    exact = PerformanceIndex(stored.vectors, stored.segment_perf, stored.work_ids)
    tracks = perf_tracks(stored)
    found = exact.search_works(tracks, top) if works else exact.search_perfs(tracks, top)
    names = dict(zip(stored.work_ids.tolist(), stored.works.tolist()))
    labels = [[names[w] for w in row] if works else list(stored.perfs[row]) for row in found.indices]
    return labels, tracks, found.distances


@pytest.mark.parametrize("works", [False, True])
def test_flat_index_gives_the_exact_top_10(served, works: bool) -> None:
    project, model_id, _, first = served
    assert first["index_kind"] == "flat" and first["exact"] and first["action"] in ("built", "unchanged")
    assert first["rows"] == sum(n for n, _ in embedding_store.catalogued_segments(
        project.store, "dataset", model_id).values())
    labels, tracks, distances = _exact_top(project, model_id, 10, works)
    index = ReferenceIndex.read(project.store_path, "dataset", model_id)
    for hits, expected, exact_d in zip(index.search(tracks, 10, works), labels, distances):
        assert [h.work if works else h.perf for h in hits] == expected
        assert np.allclose([h.distance for h in hits], exact_d, atol=1e-5)


def test_ivf_index_probing_all_lists_gives_the_exact_top_10(tmp_path) -> None:
    project, model_id, _ = project_with_model(tmp_path, works=4, perfs=3)
    metadata = _materialize(project, exact_below=1, nlist=4, nprobe=4)
    assert metadata["index_kind"] == "ivf_refine" and not metadata["exact"]  # the default approximate kind
    assert {k: metadata["config"][k] for k in ("approximate", "codes", "store", "refine_factor")} == {
        "approximate": "ivf_refine", "codes": "SQ8", "store": "float32", "refine_factor": 4}
    labels, tracks, _ = _exact_top(project, model_id, 10, False)
    index = ReferenceIndex.read(project.store_path, "dataset", model_id)
    assert [[h.perf for h in hits] for hits in index.search(tracks, 10, False)] == labels
    assert _materialize(project, exact_below=1, nlist=4, nprobe=4)["action"] == "unchanged"
    ivf_flat = _materialize(project, exact_below=1, nlist=4, nprobe=4, approximate="ivf")  # another config rebuilds
    assert ivf_flat["index_kind"] == "ivf" and ivf_flat["action"] == "built"
    index = ReferenceIndex.read(project.store_path, "dataset", model_id)
    assert [[h.perf for h in hits] for hits in index.search(tracks, 10, False)] == labels
    assert _materialize(project)["index_kind"] == "flat"


def test_catalog_changes_update_the_index_in_place_and_promotion_rebuilds(tmp_path) -> None:
    project, model_id, hp = project_with_model(tmp_path, works=3, perfs=2)
    first = _materialize(project)
    catalog = project.dataset_dir / "dataset.txt"
    lines = catalog.read_text().splitlines()
    gone = json.loads(lines[-1])["perf"]
    catalog.write_text("\n".join(lines[:-1] + [json.dumps(dict(json.loads(lines[0]), perf="extra"))]) + "\n")
    materialize_data(project)
    second = _materialize(project)
    assert second["action"] == "updated" and second["version"] == first["version"] + 1
    assert second["performances_added"] == 1 and second["performances_removed"] == 1
    index = ReferenceIndex.read(project.store_path, "dataset", model_id)
    perfs = set(index.segments())
    assert "extra" in perfs and gone not in perfs
    [hits] = index.search([perf_tracks(embedding_store.load_embeddings(
        project.store, "dataset", model_id, ["extra"]))[0]], 1, False)
    assert hits[0].perf in ("extra", json.loads(lines[0])["perf"]) and hits[0].distance < 1e-5

    new_id = register_model(project, random_model(hp, seed=1), hp, epoch=1)
    third = _materialize(project)
    assert third["model_id"] == new_id and third["action"] == "built" and third["version"] == 1
    pointer = json.loads((index_root(project.store_path) / "dataset" / PROMOTED).read_text())
    assert pointer == {"model_id": new_id, "version": 1}
    assert (model_dir(project.store_path, "dataset", model_id) / "current.json").is_file()  # old one kept


def test_identification_rebuilds_a_missing_index_and_says_which_asset_keeps_it(served, caplog) -> None:
    project, model_id, _, _ = served
    folder = model_dir(project.store_path, "dataset", model_id)
    (folder / "current.json").rename(folder / "moved.json")
    try:
        with caplog.at_level(logging.WARNING):
            identifier = Identifier(project.store_path, project.dataset_dir)
        assert "missing" in caplog.text and "reference_index" in caplog.text
        wav = project.dataset_dir / "wav" / "w001_p1.wav"
        assert identifier.identify([wav], top=1)[0].matches[0].perf == "w001_p1"
    finally:
        (folder / "moved.json").unlink()
