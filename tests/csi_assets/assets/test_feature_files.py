"""Bad feature files (truncated, empty, NaN, one file recorded for two variants) are named by the feature check,
never crash it, and are computed again by the next cqt_features materialisation; sound files stored under an
older naming stay in use."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np

from csi_assets.assets import data
from csi_assets.layouts import DatasetLayout
from csi_assets.store import features as feature_store
from csi_assets.store.records import FeatureRecord
from tests.graph_fixtures import make_project, materialize, stored_features


def _check(project) -> dg.AssetCheckResult:
    """The feature check as cqt_features runs it, on the store's rows as they are now."""
    settings = DatasetLayout.at(project.dataset_dir).cqt_settings()
    return data.features_check(stored_features(project),
                               settings.n_bins)


def test_bad_feature_files_are_named_by_the_check_and_computed_again(tmp_path: Path) -> None:
    project = make_project(tmp_path, works=2, perfs=2, seconds=3.0)
    instance = dg.DagsterInstance.ephemeral()
    materialize(project, [data.dataset_catalog, data.speed_variants, data.cqt_features], instance)
    settings = DatasetLayout.at(project.dataset_dir).cqt_settings()
    stored = stored_features(project)
    truncated, empty, nan, shared_a, shared_b, legacy = sorted(stored)[:6]
    path = {v: Path(r.path) for v, r in stored.items()}
    path[truncated].write_bytes(path[truncated].read_bytes()[:300])
    path[empty].write_bytes(b"")
    broken = np.load(path[nan])
    broken[3, 5] = np.nan
    np.save(path[nan], broken)
    old_name = path[legacy].with_name(f"{legacy}.cqt.npy")  # a file named as before ids were hashed
    path[legacy].rename(old_name)

    def moved(variant: str, to: Path) -> FeatureRecord:
        return replace(stored[variant], path=str(to))

    feature_store.record_features(project.store, "dataset", settings.settings_hash(),
                                  [moved(shared_b, path[shared_a]), moved(legacy, old_name)])

    evaluation = _check(project)
    assert evaluation.passed is False and evaluation.metadata["bad"].value == 5
    listing = evaluation.metadata["examples"].value
    for variant in (truncated, empty, nan, shared_a, shared_b):
        assert f"`{variant}`" in listing
    assert str(path[truncated]) in listing and "NaN/inf" in listing and "one file recorded for 2 variants" in listing

    result = materialize(project, [data.cqt_features], instance)
    [event] = result.get_asset_materialization_events()
    assert event.materialization.metadata["computed_now"].value == 5
    assert event.materialization.metadata["bad_files_recomputed"].value == 5
    logged = " ".join(e.message or "" for e in instance.all_logs(result.run_id) if e.level >= 30)
    assert all(str(path[v]) in logged for v in (truncated, empty, nan))
    [evaluation] = result.get_asset_check_evaluations()
    assert evaluation.passed and _check(project).passed
    after = stored_features(project)
    assert len({r.path for r in after.values()}) == len(after)
    assert after[legacy].path == str(old_name)  # a sound file under the old name is kept, not recomputed
    for row in after.values():
        feature = np.load(row.path)
        assert feature.shape == (row.n_frames, 96) and np.isfinite(feature).all()
