"""Data-stage benchmark: decode -> tempo variants -> CQT -> feature files, on generated tracks.

Tracks are 44.1 kHz stereo WAVs (a random harmonic melody with a little noise), so decoding really resamples
and mixes down. Every stage is reported as audio seconds processed per wall second (x real time); for the tempo
stage that counts the seconds *rendered*. The CQT classes are compared on the same decoded signals in the same
process, each as a ratio to the chosen class, so the figures compare across machines.

    .venv/bin/python bench/features.py --tracks 20 --seconds 30 [--factors 0.8 0.9 1.0 1.1 1.2]
        [--tempo-quality high|fast] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import soundfile as sf
import torch

from csi_model.audio import SAMPLE_RATE, load_audio
from csi_model.catalog import parse_catalog, verify_audio
from csi_model.cqt import CqtSettings, compute_cqt, cqt_layer, save_feature
from csi_model.devices import pick_device
from csi_model.tempo import HIGH_QUALITY, plan_variants, render_variant

SOURCE_RATE = 44100
NOTE_SECONDS = 0.4
T = TypeVar("T")


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
    print(f"{stage:<28} {audio_seconds:9.1f} s audio  {wall:8.2f} s wall  {audio_seconds / wall:9.1f}x real time")


def run_stage(
    folder: Path, factors: Sequence[float], high_quality: bool, settings: CqtSettings, device: torch.device
) -> list[np.ndarray]:
    parsed = parse_catalog(folder / "dataset.txt")
    verified, wall = timed(lambda: verify_audio(parsed.rows))
    assert not verified.rejected, verified.rejected
    original_seconds = sum(row.dur_s for row in verified.rows)
    report("decode + verify originals", original_seconds, wall)

    plan = plan_variants(verified.rows, factors, folder / "sp_wav")
    rendered_seconds = sum(v.dur_s for v in plan if not v.is_original)
    _, tempo_wall = timed(lambda: [render_variant(v, high_quality) for v in plan])
    report(f"tempo variants (hq={high_quality})", rendered_seconds, tempo_wall)

    signals, load_wall = timed(lambda: [load_audio(v.wav) for v in plan])
    item_seconds = sum(len(s) for s in signals) / SAMPLE_RATE
    report("decode all items", item_seconds, load_wall)
    features, cqt_wall = timed(lambda: compute_cqt(signals, settings, device))
    report(f"CQT ({settings.cqt_class}, batched)", item_seconds, cqt_wall)
    paths = [folder / "cqt_feat" / f"{variant.perf}.cqt.npy" for variant in plan]
    _, write_wall = timed(lambda: [save_feature(path, feature) for path, feature in zip(paths, features)])
    report("write .npy (float16)", item_seconds, write_wall)
    total = wall + tempo_wall + load_wall + cqt_wall + write_wall
    report("TOTAL (features produced)", item_seconds, total)
    return signals


def compare_classes(signals: list[np.ndarray], chosen: CqtSettings, device: torch.device) -> None:
    seconds = sum(len(s) for s in signals) / SAMPLE_RATE
    throughput = {}
    for cqt_class in ("CQT1992v2", "CQT2010v2"):
        settings = dataclasses.replace(chosen, cqt_class=cqt_class)
        cqt_layer(settings, device)  # kernel construction is once per process: not part of throughput
        _, wall = timed(lambda: compute_cqt(signals, settings, device))
        throughput[cqt_class] = seconds / wall
    for cqt_class, rate in throughput.items():
        ratio = rate / throughput[chosen.cqt_class]
        print(f"CQT class {cqt_class:<10} {rate:9.1f}x real time   ratio vs {chosen.cqt_class}: {ratio:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracks", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--factors", type=float, nargs="+", default=[0.8, 0.9, 1.0, 1.1, 1.2])
    parser.add_argument("--tempo-quality", choices=["high", "fast"], default="high" if HIGH_QUALITY else "fast")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    args = parser.parse_args()
    device = pick_device(args.device)
    settings = CqtSettings()
    print(f"{args.tracks} tracks x {args.seconds:g} s, factors {args.factors}, device {device}, settings {settings}")
    with tempfile.TemporaryDirectory(prefix="csi-bench-features-") as tmp:
        folder = Path(tmp)
        make_tracks(folder, args.tracks, args.seconds)
        signals = run_stage(folder, args.factors, args.tempo_quality == "high", settings, device)
    compare_classes(signals, settings, device)


if __name__ == "__main__":
    main()
