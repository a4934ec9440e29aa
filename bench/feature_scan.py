"""The cqt_features pre-scan of stored feature files: every file read whole (no verified markers, as on the first
run or with an older store) against the stat-only pass once markers are recorded (run: python bench/feature_scan.py
--files 2000). Files are float16 ``[4500, 84]``, about three minutes of CQT frames at 25 fps; they were just written,
so the whole-file reads come from the page cache and a cold disk makes them slower still."""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from csi_assets.features import feature_problems
from csi_assets.store.records import FeatureRecord

FRAMES, BINS = 4500, 84


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        stored = {}
        for i in range(args.files):
            path = Path(tmp) / f"{i}.npy"
            np.save(path, rng.uniform(-90, 0, size=(FRAMES, BINS)).astype(np.float16))
            stored[f"v{i}"] = FeatureRecord(f"v{i}", str(path), FRAMES, BINS, "bench", {})
        markers: dict[str, tuple[str, int, int]] = {}
        began = time.perf_counter()
        problems = feature_problems(stored, BINS, record_verified=markers.update)
        whole = time.perf_counter() - began
        assert not problems and len(markers) == args.files
        marked = {v: replace(row, verified_size=markers[v][1], verified_mtime_ns=markers[v][2])
                  for v, row in stored.items()}
        began = time.perf_counter()
        feature_problems(marked, BINS)
        quick = time.perf_counter() - began
    n = args.files
    print(f"{n} feature files: read whole {whole:.2f} s ({whole / n * 1e3:.2f} ms per file, "
          f"{whole / n * 1e6 / 60:.0f} min per million); with verified markers {quick:.3f} s "
          f"({quick / n * 1e6:.0f} us per file, {quick / n * 1e6 / 60:.1f} min per million)")


if __name__ == "__main__":
    main()
