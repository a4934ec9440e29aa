"""Data-stage benchmark: the product's data assets against a re-enactment of the reference tool's path.

Tracks are 44.1 kHz stereo WAVs (a random harmonic melody with a little noise), so decoding really resamples
and mixes down. Both sides process the same files in this process, and every figure is x real time per second
of *original* audio (what a user's collection is), so the ratio compares across machines:

- product: the application functions behind ``dataset_catalog`` → ``speed_variants`` → ``cqt_features`` run for real
  (DuckDB store, feature files) in process, each step timed; then the same stage on a copy of the files through
  ``dagster asset materialize`` (a fresh process: loading the code location, the run, its steps in process), so
  the time the orchestration adds outside the steps is reported;
- reference: per file, ``sox`` to 16 kHz mono, one ``sox tempo`` per factor (identity excluded), then per item a
  freshly built nnAudio CQT2010v2 kernel and its features saved as float32 ``.npy``.

    .venv/bin/python bench/features.py --tracks 24 --seconds 30 [--factors 0.8 0.9 1.0 1.1 1.2]
        [--tempo-augmentation features|audio] [--device cpu] [--skip-reference]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import soundfile as sf
import torch
import yaml

from csi_model.audio import SAMPLE_RATE, load_audio
from csi_model.cqt import CqtSettings, compute_cqt, cqt_layer
from csi_model.devices import pick_device

SOURCE_RATE = 44100
NOTE_SECONDS = 0.4
T = TypeVar("T")
DATA_STEPS = ("dataset_catalog", "speed_variants", "cqt_features")


def make_tracks(folder: Path, tracks: int, seconds: float, seed: int = 0) -> Path:
    """Write ``tracks`` stereo melodies and a ``dataset.txt`` listing them; return the catalog path."""
    rng = np.random.default_rng(seed)
    n_notes = int(np.ceil(seconds / NOTE_SECONDS))
    note_t = np.arange(int(NOTE_SECONDS * SOURCE_RATE)) / SOURCE_RATE
    partials = np.arange(1, 6)[:, None, None]
    lines = []
    for index in range(tracks):
        freqs = 110.0 * 2 ** (rng.integers(0, 36, n_notes) / 12)  # [notes]
        notes = (np.sin(2 * np.pi * partials * freqs[None, :, None] * note_t) / partials).sum(axis=0)  # [notes, t]
        melody = (notes * np.hanning(note_t.size) ** 0.3).reshape(-1)[: int(seconds * SOURCE_RATE)]
        melody = 0.4 * melody / np.abs(melody).max() + 0.01 * rng.standard_normal(melody.size)
        stereo = np.stack([melody, 0.8 * melody], axis=1).astype(np.float32)
        sf.write(folder / f"track{index:04d}.wav", stereo, SOURCE_RATE, subtype="PCM_16")
        record = {"perf": f"track{index:04d}", "wav": f"track{index:04d}.wav", "dur_s": seconds, "work": f"w{index}"}
        lines.append(json.dumps(record))
    catalog = folder / "dataset.txt"
    catalog.write_text("\n".join(lines) + "\n")
    return catalog


def timed(run: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def report(stage: str, audio_seconds: float, wall: float) -> None:
    print(f"{stage:<34} {wall:8.2f} s wall  {audio_seconds / wall:9.1f}x real time (per original)")


def product_stage(folder: Path, factors: Sequence[float], mode: str, device: str) -> tuple[float, dict[str, float]]:
    """Run the data stage's application functions; returns (wall seconds, seconds per step)."""
    import logging

    from csi_assets.catalog import catalog_dataset
    from csi_assets.features import compute_features
    from csi_assets.layouts import DatasetLayout
    from csi_assets.shards import staging_dir
    from csi_assets.store import Store
    from csi_assets.tempo_variants import record_variants

    (folder / "hparams.yaml").write_text(yaml.safe_dump({"aug_speed_mode": list(factors), "device": device,
                                                          "tempo_augmentation": mode}))
    dataset, store, log = DatasetLayout.at(folder), Store(folder / "csi.duckdb"), logging.getLogger("bench.features")
    runs = {"dataset_catalog": lambda: catalog_dataset(store, dataset, log),
            "speed_variants": lambda: record_variants(store, dataset, log),
            "cqt_features": lambda: compute_features(store, dataset, staging_dir(store.path), log)}
    steps = {step: timed(runs[step])[1] for step in DATA_STEPS}
    return sum(steps.values()), steps


def orchestrated_stage(folder: Path) -> float:
    """Wall seconds of the same stage through the Dagster CLI, in a fresh process, on the dataset in ``folder``
    (its partition registered beforehand, untimed)."""
    home = folder / "dagster_home"
    home.mkdir()
    run_config = folder / "run.yaml"
    run_config.write_text(yaml.safe_dump({"execution": {"config": {"in_process": {}}}}))
    env = dict(os.environ, CSI_DATASET_DIR=str(folder), CSI_STORE_PATH=str(folder / "csi.duckdb"),
               DAGSTER_HOME=str(home))
    # The dataset is a partition (the folder's name): register it with the instance first, as `make demo` does.
    registered = subprocess.run([sys.executable, "-m", "csi_assets.partitions"], env=env, capture_output=True,
                                text=True)
    if registered.returncode != 0:
        raise RuntimeError(f"registering the dataset partition failed:\n{registered.stderr[-3000:]}")
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "csi_assets.definitions",
               "--select", ",".join(DATA_STEPS), "--partition", registered.stdout.strip(), "-c", str(run_config)]
    done, wall = timed(lambda: subprocess.run(command, env=env, capture_output=True, text=True))
    if done.returncode != 0:
        raise RuntimeError(f"dagster asset materialize failed:\n{done.stderr[-3000:]}")
    return wall


def reference_stage(folder: Path, factors: Sequence[float], settings: CqtSettings, device: torch.device) -> float:
    """The reference's path per file: sox to 16 kHz mono, sox tempo per factor, a new CQT2010v2 kernel per item."""
    out = folder / "reference"
    out.mkdir()
    reference_settings = dataclasses.replace(settings, cqt_class="CQT2010v2")
    started = time.perf_counter()
    for wav in sorted(folder.glob("track*.wav")):
        mono = out / wav.name
        subprocess.run(["sox", str(wav), "-r", str(SAMPLE_RATE), "-c", "1", str(mono)], check=True)
        items = [mono]
        for factor in factors:
            if abs(factor - 1.0) >= 0.01:
                items.append(out / f"sp_{factor}-{wav.name}")
                subprocess.run(["sox", str(mono), str(items[-1]), "tempo", str(factor)], check=True)
        for item in items:
            cqt_layer.cache_clear()  # the reference builds its CQT kernel for every file
            [feature] = compute_cqt([load_audio(item)], reference_settings, device)
            np.save(item.with_suffix(".npy"), feature.astype(np.float32))
    return time.perf_counter() - started


def compare_classes(signals: list[np.ndarray], chosen: CqtSettings, device: torch.device) -> None:
    seconds = sum(len(s) for s in signals) / SAMPLE_RATE
    throughput = {}
    for cqt_class in ("CQT1992v2", "CQT2010v2"):
        settings = dataclasses.replace(chosen, cqt_class=cqt_class)
        cqt_layer(settings, device)  # kernel construction is once per process: not part of throughput
        _, wall = timed(lambda settings=settings: compute_cqt(signals, settings, device))
        throughput[cqt_class] = seconds / wall
    for cqt_class, rate in throughput.items():
        ratio = rate / throughput[chosen.cqt_class]
        print(f"CQT class {cqt_class:<10} {rate:9.1f}x real time   ratio vs {chosen.cqt_class}: {ratio:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--factors", type=float, nargs="+", default=[0.8, 0.9, 1.0, 1.1, 1.2])
    parser.add_argument("--tempo-augmentation", choices=["features", "audio"], default="features")
    parser.add_argument("--device", default="cpu", help="cuda, mps, cpu or auto (default cpu)")
    parser.add_argument("--skip-reference", action="store_true", help="only the product (no sox needed)")
    args = parser.parse_args()
    device = pick_device(args.device)
    settings = CqtSettings()
    seconds = args.tracks * args.seconds
    print(f"{args.tracks} originals x {args.seconds:g} s = {seconds:g} s, factors {args.factors}, "
          f"tempo_augmentation {args.tempo_augmentation}, device {device}")
    with tempfile.TemporaryDirectory(prefix="csi-bench-features-") as tmp:
        folder = Path(tmp)
        make_tracks(folder, args.tracks, args.seconds)
        copy = folder / "orchestrated"
        copy.mkdir()
        for path in [*folder.glob("track*.wav"), folder / "dataset.txt"]:
            shutil.copy(path, copy / path.name)
        wall, steps = product_stage(folder, args.factors, args.tempo_augmentation, args.device)
        for step in DATA_STEPS:
            report(f"  step {step}", seconds, steps[step])
        report("product data stage", seconds, wall)
        shutil.copy(folder / "hparams.yaml", copy / "hparams.yaml")
        orchestrated = orchestrated_stage(copy)
        report("  the same through dagster (CLI)", seconds, orchestrated)
        outside = orchestrated - wall
        print(f"{'  outside steps (orchestration)':<34} {outside:8.2f} s wall  "
              f"({100 * outside / orchestrated:.0f} % of the orchestrated stage)")
        if args.skip_reference or shutil.which("sox") is None:
            print("reference path skipped" + ("" if args.skip_reference else ": no sox binary on PATH"))
            return
        reference_wall = reference_stage(folder, args.factors, settings, device)
        report("reference path (sox + CQT2010v2)", seconds, reference_wall)
        print(f"throughput ratio product / reference: {reference_wall / wall:.2f}x")
        signals = [load_audio(p) for p in sorted(folder.glob("track*.wav"))]
    compare_classes(signals, settings, device)


if __name__ == "__main__":
    main()
