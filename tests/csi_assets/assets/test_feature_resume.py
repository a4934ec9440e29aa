"""Killing feature extraction mid-way and running it again finishes the job: no corrupt or duplicated rows, no
half-written arrays."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from csi_assets.assets import data
from csi_assets.layouts import DatasetLayout
from csi_assets.store import features as feature_store
from tests.graph_fixtures import make_project, materialize, stored_features
from tests.paths import REPO

_RUN = """
import sys
from pathlib import Path
from csi_assets.assets import data
from tests.graph_fixtures import Project, materialize
materialize(Project(*(Path(arg) for arg in sys.argv[1:])), [data.cqt_features])
"""


def test_killed_extraction_resumes_cleanly(tmp_path: Path) -> None:
    project = make_project(tmp_path, works=5, perfs=3, seconds=6.0)
    materialize(project, [data.dataset_catalog, data.speed_variants])
    settings = DatasetLayout.at(project.dataset_dir).cqt_settings()
    folder = project.dataset_dir / "cqt_feat" / settings.settings_hash()
    total = len(feature_store.variants(project.store, "dataset"))

    paths = (project.root, project.dataset_dir, project.training_dir, project.store_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUN, *map(str, paths)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not list(folder.glob("*.cqt.npy")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "extraction finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(folder.glob("*.cqt.npy")))
    assert 0 < done_at_kill < total

    left = list(folder.glob(".*tmp*"))  # the write the kill interrupted, if it was mid-file
    hour_ago = time.time() - 2 * 3600
    for temporary in left:
        os.utime(temporary, (hour_ago, hour_ago))  # abandoned long ago: the re-run removes it
    live = folder / ".w999_p9.cqt.abcd.tmp.npy"  # a write in progress elsewhere (ingestion): left alone
    live.write_bytes(b"partial")
    result = materialize(project, [data.cqt_features])
    assert result.success
    stored = stored_features(project)
    assert len(stored) == total
    assert list(folder.glob(".*tmp*")) == [live]
    assert sorted(p.name for p in folder.glob("*.cqt.npy")) == sorted(Path(r.path).name for r in stored.values())
    for row in stored.values():
        feature = np.load(row.path)
        assert feature.shape == (row.n_frames, 96) and np.isfinite(feature).all()
