"""reference_embeddings on a real synthetic project with a tiny registered model: every original performance
embedded segment by segment, incremental re-runs, removals, calibration, centroids and the coverage check."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from csi_assets.assets import serving
from csi_assets.model_loading import load_model
from csi_assets.references import perf_tracks, reference_rows
from csi_assets.store import embeddings as embedding_store
from csi_model.metrics import min_segment_distance
from tests.serving_fixtures import materialize_data, materialized_metadata, project_with_model

SERVING = [serving.reference_embeddings, serving.reference_embeddings_cover_catalog]


def _materialize(project) -> dict:
    return materialized_metadata(project, SERVING, "reference_embeddings")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    project, model_id, hp = project_with_model(tmp_path_factory.mktemp("serving"))
    first = _materialize(project)
    return project, model_id, first


def test_every_original_performance_is_embedded_segment_by_segment(served) -> None:
    project, model_id, first = served
    assert first["computed_now"] == 15 and first["reused"] == 0 and first["model_id"] == model_id
    model = load_model(project.store, "dataset")
    references = reference_rows(project.store, project.resources["dataset"].layout(project.dataset))
    assert len(references) == 15 and all(r.speed == 1.0 for r in references)
    stored = embedding_store.load_embeddings(project.store, "dataset", model_id)
    assert sorted(stored.perfs) == sorted(r.perf for r in references)
    for row in references:
        rows = np.flatnonzero(stored.perfs[stored.segment_perf] == row.perf)
        expected = model.embedder.segment_starts(row.n_frames)
        assert len(expected) > 1  # the tiny window cuts each 6 s track into several segments
        assert np.array_equal(stored.start_frames[rows], expected)
    assert np.allclose(np.linalg.norm(stored.vectors, axis=1), 1.0, atol=1e-5)
    assert first["segments"] == len(stored) == first["segments_computed_now"]


def test_calibration_and_centroids_are_stored(served) -> None:
    project, model_id, first = served
    calibration = embedding_store.calibration(project.store, "dataset", model_id).calibration
    assert calibration.mu == pytest.approx(first["calibration_mu"], abs=1e-6)
    assert calibration.n_pairs == 90  # 15 perfs of 5 works: all 15·14/2 − 5·3 cross-work pairs
    stored = embedding_store.load_embeddings(project.store, "dataset", model_id)
    tracks = perf_tracks(stored)
    distances = min_segment_distance(tracks, tracks)  # the statistic identification reports
    cross_work = np.triu(stored.work_ids[:, None] != stored.work_ids[None, :], k=1)
    assert calibration.mu == pytest.approx(distances[cross_work].mean(), abs=1e-5)
    centroids = embedding_store.centroids(project.store, "dataset", model_id)
    assert [c.work_id for c in centroids] == list(range(5))
    assert all(c.n_members == 3 and len(c.centroid) == 32 for c in centroids)


def test_rerun_computes_nothing_new_perf_only_it_removed_perf_loses_rows(served) -> None:
    project, model_id, _ = served
    again = _materialize(project)
    assert again["computed_now"] == 0 and again["reused"] == 15

    # A perf stored with another segment count (its feature changed length) is embedded again.
    stale = embedding_store.load_embeddings(project.store, "dataset", model_id)
    expected = embedding_store.embedded_segments(project.store, "dataset", model_id)[stale.perfs[0]]
    embedding_store.write_embeddings(project.store, "dataset", model_id, [stale.perfs[0]], [np.zeros(1)],
                                     [stale.vectors[:1]], [expected[1]])
    assert _materialize(project)["computed_now"] == 1
    assert embedding_store.embedded_segments(project.store, "dataset", model_id)[stale.perfs[0]] == expected

    catalog = project.dataset_dir / "dataset.txt"
    lines = catalog.read_text().splitlines()
    added = dict(json.loads(lines[0]), perf="extra_take")
    gone = json.loads(lines[-1])["perf"]
    catalog.write_text("\n".join(lines[:-1] + [json.dumps(added)]) + "\n")
    materialize_data(project)
    changed = _materialize(project)
    assert changed["computed_now"] == 1 and changed["reused"] == 14 and changed["removed_segment_rows"] > 0
    perfs = embedding_store.embedded_perfs(project.store, "dataset", model_id)
    assert "extra_take" in perfs and gone not in perfs and len(perfs) == 15


def test_recording_replaced_by_other_audio_of_the_same_length_is_embedded_again(tmp_path) -> None:
    project, model_id, _ = project_with_model(tmp_path, works=2, perfs=2, seconds=4.0)
    _materialize(project)
    before = embedding_store.load_embeddings(project.store, "dataset", model_id)
    perf = str(before.perfs[0])
    wav = project.dataset_dir / "wav" / f"{perf}.wav"
    audio, rate = sf.read(wav, dtype="float32")
    sf.write(wav, audio[::-1].copy(), rate, subtype="PCM_16")  # other audio, same length
    materialize_data(project)
    again = _materialize(project)
    assert again["computed_now"] == 1 and again["reused"] == 3
    after = embedding_store.load_embeddings(project.store, "dataset", model_id)
    rows_before = before.vectors[before.segment_perf == 0]
    rows_after = after.vectors[after.segment_perf == 0]
    assert rows_before.shape == rows_after.shape and not np.allclose(rows_before, rows_after)
