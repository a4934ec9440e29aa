"""cqt_features reads a stored feature file whole only when its size or mtime differ from the marker the store
recorded when it last read it whole: a file changed after verification is still caught, an untouched one is not
read again, and a store from before the markers migrates and gets its files verified once."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import dagster as dg
import duckdb
import numpy as np

from csi_assets.assets import data
from csi_assets.features import feature_problems
from csi_assets.layouts import DatasetLayout
from csi_assets.store import Store, schema
from csi_assets.store import features as feature_store
from csi_assets.store.records import FeatureRecord
from tests.graph_fixtures import make_project, materialize, stored_features


def _corrupt_in_place(path: Path, keep_mtime: bool) -> None:
    """Put NaNs into the array without changing the file's size; optionally restore its mtime to the nanosecond."""
    before = path.stat()
    feature = np.load(path)
    feature[2, 3] = np.nan
    np.save(path, feature)
    assert path.stat().st_size == before.st_size
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    else:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))


def test_only_files_changed_since_verification_are_read_again(tmp_path: Path) -> None:
    project = make_project(tmp_path, works=2, perfs=2, seconds=3.0)
    instance = dg.DagsterInstance.ephemeral()
    materialize(project, [data.dataset_catalog, data.speed_variants, data.cqt_features], instance)
    settings = DatasetLayout.at(project.dataset_dir).cqt_settings()
    stored = stored_features(project)
    for row in stored.values():  # the in-step check read every new file whole and marked it
        info = Path(row.path).stat()
        assert (row.verified_size, row.verified_mtime_ns) == (info.st_size, info.st_mtime_ns)

    untouched_bad, touched_bad, truncated = sorted(stored)[:3]
    path = {v: Path(r.path) for v, r in stored.items()}
    # Same size and mtime: a scan trusting its marker cannot see this corruption, so if it is reported the file
    # was read again.
    _corrupt_in_place(path[untouched_bad], keep_mtime=True)
    _corrupt_in_place(path[touched_bad], keep_mtime=False)
    stamp = path[truncated].stat()
    path[truncated].write_bytes(path[truncated].read_bytes()[:-200])
    os.utime(path[truncated], ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # size alone gives it away

    result = materialize(project, [data.cqt_features], instance)
    [event] = result.get_asset_materialization_events()
    assert event.materialization.metadata["bad_files_recomputed"].value == 2
    logged = " ".join(e.message or "" for e in instance.all_logs(result.run_id) if e.level >= 30)
    assert str(path[touched_bad]) in logged and str(path[truncated]) in logged
    assert str(path[untouched_bad]) not in logged

    # The untouched file really is corrupt: without its marker the scan reads it and names it.
    after = stored_features(project)
    unmarked = {v: replace(r, verified_size=None, verified_mtime_ns=None) for v, r in after.items()}
    assert set(feature_problems(unmarked, settings.n_bins)) == {untouched_bad}
    assert feature_problems(after, settings.n_bins) == {}
    for variant in (touched_bad, truncated):  # recomputed, then verified by the in-step check
        info = Path(after[variant].path).stat()
        assert (after[variant].verified_size, after[variant].verified_mtime_ns) == (
            info.st_size, info.st_mtime_ns)


def test_rewriting_a_feature_clears_its_marker(tmp_path: Path) -> None:
    store = Store(tmp_path / "csi.duckdb")
    row = FeatureRecord(variant="v", path=str(tmp_path / "v.npy"), n_frames=3, n_bins=2, audio_hash="h", settings={})
    feature_store.record_features(store, "d", "s", [row])
    assert feature_store.record_verified(store, "d", "s", {"v": (row.path, 10, 20)}) == 1
    assert feature_store.record_verified(store, "d", "s", {"v": ("elsewhere.npy", 11, 21)}) == 0  # other path
    verified = feature_store.features(store, "d", "s")["v"]
    assert (verified.verified_size, verified.verified_mtime_ns) == (10, 20)
    feature_store.record_features(store, "d", "s", [verified])  # rewritten: even a record carrying a marker
    marked = feature_store.features(store, "d", "s")["v"]
    assert (marked.verified_size, marked.verified_mtime_ns) == (None, None)


def test_a_store_from_before_markers_migrates_and_verifies_its_files_once(tmp_path: Path) -> None:
    path = tmp_path / "csi.duckdb"
    con = duckdb.connect(str(path))
    assert schema.migrate(con, [m for m in schema.MIGRATIONS if m[0] <= 5]) == 5
    feature_file = tmp_path / "v.npy"
    np.save(feature_file, np.zeros((4, 3), dtype=np.float16))
    con.execute("INSERT INTO features (dataset, variant, settings_hash, path, n_frames, n_bins, audio_hash) "
                "VALUES ('d', 'v', 's', ?, 4, 3, 'h')", [str(feature_file)])
    con.close()

    store = Store(path)
    assert store.schema_version() == schema.MIGRATIONS[-1][0]  # migrated to the newest
    [row] = feature_store.features(store, "d", "s").values()
    assert (row.path, row.verified_size, row.verified_mtime_ns) == (str(feature_file), None, None)
    recorded: list[dict] = []
    assert feature_problems({"v": row}, 3, record_verified=recorded.append) == {}
    info = feature_file.stat()
    assert recorded == [{"v": (str(feature_file), info.st_size, info.st_mtime_ns)}]
    feature_store.record_verified(store, "d", "s", recorded[0])
    marked = feature_store.features(store, "d", "s")
    feature_file.write_bytes(b"")  # emptied after verification: the size differs, so it is read and caught
    assert "cannot read" in feature_problems(marked, 3)["v"]

