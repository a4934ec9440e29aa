"""The data half of the graph, materialised for real on synthetic covers: catalog → variants → features →
work ids → splits, with bad lines, caching, stable ids and leak-free exports."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import yaml

from csi_assets import features
from csi_assets.assets import data
from csi_assets.layouts import DatasetLayout
from csi_assets.store import catalog as catalog_store
from csi_assets.store import features as feature_store
from csi_assets.store import splits as split_store
from csi_assets.store.records import FeatureRecord
from csi_model.catalog import parse_catalog
from csi_model.cqt import load_feature
from tests.graph_fixtures import DATA_HPARAMS, make_project, materialize, stored_features

DATA_ASSETS = [data.dataset_catalog, data.speed_variants, data.cqt_features, data.work_ids, data.data_splits]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("data"))
    catalog = project.dataset_dir / "dataset.txt"
    lines = catalog.read_text().splitlines()
    (project.dataset_dir / "wav" / "corrupt.wav").write_bytes(b"RIFF....not audio")
    lines += [
        "{not json",
        json.dumps({"perf": "ghost", "wav": "wav/missing.wav", "dur_s": 3.0, "work": "work_x"}),
        json.dumps({"perf": "broken", "wav": "wav/corrupt.wav", "dur_s": 3.0, "work": "work_x"}),
        lines[0],  # duplicate perf id
    ]
    catalog.write_text("\n".join(lines) + "\n")
    instance = dg.DagsterInstance.ephemeral()
    result = materialize(project, DATA_ASSETS, instance)
    assert result.success
    return project, instance, result


def test_catalog_keeps_good_lines_and_names_every_bad_one(built) -> None:
    project, _, result = built
    perfs = catalog_store.performances(project.store, "dataset")
    assert len(perfs) == 15
    rejected = catalog_store.rejected(project.store, "dataset")
    assert len(rejected) == 4
    reasons = " ".join(r.reason for r in rejected)
    assert "dataset.txt:16" in reasons and "dataset.txt:19" in reasons
    assert "missing.wav" in reasons and "corrupt.wav" in reasons
    checks = {e.asset_check_key.name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["catalog_lines_all_usable"] is False  # a warning: the good lines went through
    assert checks["features_are_finite"] and checks["splits_are_leak_free"]


def test_variants_features_and_exports(built) -> None:
    project, _, _ = built
    variants = feature_store.variants(project.store, "dataset")
    assert len(variants) == 15 * 3
    assert {v.variant for v in variants if v.speed == 0.9} == {f"sp_0.9-{p}" for p in
                                                                    {v.perf for v in variants}}
    settings_hash = DatasetLayout.at(project.dataset_dir).cqt_settings().settings_hash()
    table = feature_store.feature_table(project.store, "dataset", settings_hash)
    assert len(table) == 45
    slow = next(r for r in table if r.speed == 0.9)
    same = next(r for r in table if r.perf == slow.perf and r.speed == 1.0)
    ratio = slow.n_frames / same.n_frames
    assert ratio == pytest.approx(1 / 0.9, rel=0.02)
    feature = load_feature(slow.feat)
    assert feature.dtype == np.float16 and feature.shape == (slow.n_frames, 96)
    full = parse_catalog(project.dataset_dir / "full.txt", tempo_copies=True)
    assert len(full.rows) == 45 and not full.rejected
    record = json.loads((project.dataset_dir / "full.txt").read_text().splitlines()[0])
    assert {"perf", "wav", "dur_s", "work", "feat", "feat_len", "work_id"} <= set(record)
    id_map = (project.dataset_dir / "work_id.map").read_text().split("\n")
    assert id_map[0].split(" ", 1)[0] == "0"


def test_splits_are_leak_free_and_unseen_works_held_out(built) -> None:
    project, _, _ = built
    split_of = split_store.splits(project.store, "dataset")
    unseen = split_store.unseen_works(project.store, "dataset")
    assert unseen and set(unseen.values()) == {"test"}
    ids = split_store.work_ids(project.store, "dataset")
    for perf in catalog_store.performances(project.store, "dataset"):
        if ids[perf.work] in unseen:
            assert split_of[perf.perf] == "test"
    train = {r.perf for r in parse_catalog(project.dataset_dir / "train.txt", tempo_copies=True).rows}
    test = {r.perf for r in parse_catalog(project.dataset_dir / "test.txt", tempo_copies=True).rows}
    originals = lambda ids: {p.split("-", 1)[1] if p.startswith("sp_") else p for p in ids}  # noqa: E731
    assert not originals(train) & originals(test)
    test_only = [int(x) for x in (project.dataset_dir / "test-only-work-ids.txt").read_text().split()]
    assert set(test_only) == set(unseen)


def test_rerun_recomputes_nothing_and_keeps_ids(built) -> None:
    project, instance, _ = built
    features_before = {p: Path(p).stat().st_mtime_ns for p in (r.path for r in stored_features(project).values())}
    ids_before = split_store.work_ids(project.store, "dataset")
    splits_before = split_store.splits(project.store, "dataset")
    result = materialize(project, DATA_ASSETS, instance)
    meta = {m.asset_key.to_user_string(): m.metadata for m in result.get_asset_materialization_events() and
            [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]}
    assert meta["dataset_catalog"]["added"].value == 0 and meta["dataset_catalog"]["changed"].value == 0
    assert meta["speed_variants"]["rendered_now"].value == 0
    assert meta["cqt_features"]["computed_now"].value == 0
    after = {p: Path(p).stat().st_mtime_ns for p in features_before}
    assert after == features_before
    assert split_store.work_ids(project.store, "dataset") == ids_before
    assert split_store.splits(project.store, "dataset") == splits_before


def test_new_work_gets_a_new_id_and_old_ids_stay(tmp_path) -> None:
    project = make_project(tmp_path, works=3, perfs=2, seconds=3.0)
    materialize(project, [data.dataset_catalog, data.work_ids])
    before = split_store.work_ids(project.store, "dataset")
    catalog = project.dataset_dir / "dataset.txt"
    first = json.loads(catalog.read_text().splitlines()[0])
    extra = dict(first, perf="newcomer", work="aaa_new_work")  # sorts before every existing work
    catalog.write_text(catalog.read_text() + json.dumps(extra) + "\n")
    materialize(project, [data.dataset_catalog, data.work_ids])
    after = split_store.work_ids(project.store, "dataset")
    assert {w: after[w] for w in before} == before
    assert after["aaa_new_work"] == max(before.values()) + 1


def _materialised_metadata(result: dg.ExecuteInJobResult) -> dict:
    return {e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization
            .metadata for e in result.get_asset_materialization_events()}


def test_feature_tempo_mode_renders_nothing_and_retires_stored_variants_without_mixing(tmp_path) -> None:
    """Switching a dataset processed with audio variants to feature-domain tempo: the variants leave the store's
    tables and exports (training cannot pick them up), their audio stays on disk, and switching back re-renders
    nothing."""
    project = make_project(tmp_path, works=4, perfs=3, seconds=4.0)  # tempo_augmentation: audio
    materialize(project, DATA_ASSETS)
    rendered = sorted(project.dataset_dir.joinpath("sp_wav").glob("*.wav"))
    assert len(rendered) == 4 * 3 * 2
    hparams = project.dataset_dir / "hparams.yaml"
    hparams.write_text(yaml.safe_dump(dict(DATA_HPARAMS, tempo_augmentation="features")))
    meta = _materialised_metadata(materialize(project, DATA_ASSETS))
    assert meta["speed_variants"]["tempo_augmentation"].value == "features"
    assert meta["speed_variants"]["rendered_now"].value == 0
    settings_hash = DatasetLayout.at(project.dataset_dir).cqt_settings().settings_hash()
    table = feature_store.feature_table(project.store, "dataset", settings_hash)
    assert len(table) == 12 and all(r.speed == 1.0 for r in table)
    assert not [r for r in parse_catalog(project.dataset_dir / "full.txt").rows if r.perf.startswith("sp_")]
    assert sorted(project.dataset_dir.joinpath("sp_wav").glob("*.wav")) == rendered
    hparams.write_text(yaml.safe_dump(DATA_HPARAMS))
    meta = _materialised_metadata(materialize(project, DATA_ASSETS))
    assert meta["speed_variants"]["rendered_now"].value == 0 and meta["speed_variants"]["variants"].value == 36


def test_feature_tempo_mode_on_a_fresh_dataset_computes_one_feature_per_recording(tmp_path) -> None:
    project = make_project(tmp_path, works=3, perfs=2, seconds=3.0,
                           data_hparams=dict(DATA_HPARAMS, tempo_augmentation="features"))
    meta = _materialised_metadata(materialize(project, DATA_ASSETS))
    assert meta["cqt_features"]["computed_now"].value == 6
    assert not list(project.dataset_dir.glob("sp_wav/*"))


def test_features_check_accepts_float16_and_float32_files_and_names_non_finite_ones(tmp_path) -> None:
    rows = {}
    for name, dtype, value in [("half", np.float16, -20.0), ("single", np.float32, -20.0), ("nan", np.float32, np.nan)]:
        path = tmp_path / f"{name}.npy"
        np.save(path, np.full((7, 96), value, dtype=dtype))
        rows[name] = FeatureRecord(name, str(path), n_frames=7, n_bins=96, audio_hash="h", settings={})
    good = {k: rows[k] for k in ("half", "single")}
    assert data.features_check(good, 96).passed
    result = data.features_check(rows, 96)
    assert not result.passed and result.metadata["bad"].value == 1 and "`nan`" in result.metadata["examples"].value
    assert not data.features_check({"half": rows["half"]}, 84).passed  # wrong bin count


def test_parallel_decoding_keeps_file_order_and_names_unreadable_files(tmp_path) -> None:
    from csi_model.audio import SAMPLE_RATE, write_wav

    wavs = []
    for i in range(2 * features.CQT_FILES_PER_BATCH + 3):
        path = tmp_path / f"{i}.wav"
        if i == 5:
            path.write_bytes(b"RIFF not audio")
        else:
            write_wav(path, np.full(SAMPLE_RATE // 10 + i, 0.01 * (i + 1), dtype=np.float32), SAMPLE_RATE)
        wavs.append(str(path))
    batches = list(features._decoded_batches(wavs))
    assert [len(b) for b in batches] == [features.CQT_FILES_PER_BATCH, features.CQT_FILES_PER_BATCH, 3]
    flat = [item for batch in batches for item in batch]
    assert flat[5][0] is None and "5.wav" in flat[5][1]
    assert [len(signal) for i, (signal, _) in enumerate(flat) if i != 5] == \
        [SAMPLE_RATE // 10 + i for i in range(len(wavs)) if i != 5]
