"""Training throughput and peak memory on CPU, against the data loader alone (run: python bench/train.py).

For the default model config (see docs/reference_tool.md) and the demo config (training/demo), on synthetic dB features:
- loader only: the three chunk-length loaders zipped, as one training epoch consumes them (pooling + SpecAug);
- training: ``csi_model.training.train`` for one epoch, timed per optimizer step by its progress callback
  (the first step, which pays one-off allocation costs, is left out); once as is and once with tempo augmentation
  in the feature domain (factors in [0.9, 1.1], one copy per epoch so both runs take the same steps): its cost
  per step is the ratio of the two;
- the reference's way of reading a chunk (whole-file ``np.load`` + a Python loop over pooled frames) against
  ours (memory map + reshape-mean), per item.
Each config runs in its own process so ``ru_maxrss`` is that config's peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from csi_model.augment import SpecAugment, TempoRange
from csi_model.dataset import ChunkDataset, FeatureItem, collate_chunks
from csi_model.hparams import TrainingHParams, load_training_hparams
from csi_model.sampler import MPerClassBatchSampler
from csi_model.training import StepEnded, train

DEMO_HPARAMS = Path(__file__).resolve().parents[1] / "training" / "demo" / "config" / "hparams.yaml"


def config(name: str) -> TrainingHParams:
    if name == "default":
        hp = TrainingHParams(spec_augmentation=load_training_hparams(DEMO_HPARAMS).spec_augmentation)
    else:
        hp = load_training_hparams(DEMO_HPARAMS)
    return dataclasses.replace(hp, device="cpu", num_workers=0, max_epochs=1, test_sets={})


def write_features(folder: Path, hp: TrainingHParams, n_works: int, perfs: int) -> list[FeatureItem]:
    rng = np.random.default_rng(0)
    frames = int(hp.eval_chunk_raw_frames * 1.3)
    items = []
    for w in range(n_works):
        for p in range(perfs):
            path = folder / f"{w}_{p}.npy"
            np.save(path, rng.uniform(-90, 0, size=(frames, hp.input_dim)).astype(np.float32))
            items.append(FeatureItem(f"{w}-{p}", w, path, frames))
    return items


def loader_only(hp: TrainingHParams, items: list[FeatureItem]) -> tuple[int, float]:
    augment = SpecAugment(hp.spec_augmentation) if hp.spec_augmentation else None
    loaders = []
    for i, chunk in enumerate(hp.chunk_frame):
        ds = ChunkDataset(items, chunk * hp.mean_size, hp.mean_size, hp.mode, augment, seed=i)
        sampler = MPerClassBatchSampler([it.work_id for it in items], hp.m_per_class, hp.batch_size,
                                        np.random.default_rng(i))
        loaders.append(torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_chunks))
    began = time.perf_counter()
    samples = sum(len(batch[2]) for step in zip(*loaders) for batch in step)
    return samples, time.perf_counter() - began


def training_run(hp: TrainingHParams, items: list[FeatureItem], model_dir: Path,
                 tempo: TempoRange | None = None) -> tuple[int, float]:
    stamps: list[float] = []
    train(hp, items, model_dir, progress=lambda event: stamps.append(time.perf_counter())
          if isinstance(event, StepEnded) else None, tempo=tempo)
    steps = len(stamps) - 1
    return steps * hp.batch_size, stamps[-1] - stamps[0]


def reference_style_chunk(path: Path, start: int, chunk: int, mean_size: int) -> np.ndarray:
    """What the reference does per item: load the whole file, slice, pool frame by frame."""
    feat = np.load(path)[start : start + chunk]
    return np.array([feat[i * mean_size : (i + 1) * mean_size].mean(axis=0)
                     for i in range(len(feat) // mean_size)], dtype=np.float32)


def chunk_read_ratio(hp: TrainingHParams, items: list[FeatureItem]) -> tuple[float, float]:
    chunk = hp.eval_chunk_raw_frames
    ours = ChunkDataset(items, chunk, hp.mean_size, "defined")
    began = time.perf_counter()
    for i in range(len(items)):
        ours[i]
    ours_s = (time.perf_counter() - began) / len(items)
    began = time.perf_counter()
    for it in items:
        reference_style_chunk(it.feat_path, 0, chunk, hp.mean_size)
    return ours_s, (time.perf_counter() - began) / len(items)


def measure(name: str) -> dict[str, float]:
    hp = config(name)
    with tempfile.TemporaryDirectory() as tmp:
        items = write_features(Path(tmp), hp, n_works=2 * hp.batch_size // hp.m_per_class, perfs=hp.m_per_class)
        load_n, load_s = loader_only(hp, items)
        ours_item_s, ref_item_s = chunk_read_ratio(hp, items)
        train_n, train_s = training_run(hp, items, Path(tmp) / "model")
        tempo_n, tempo_s = training_run(hp, items, Path(tmp) / "tempo", TempoRange(0.9, 1.1, 1))
    return {
        "train_tempo_samples_per_s": tempo_n / tempo_s,
        "loader_samples_per_s": load_n / load_s,
        "train_samples_per_s": train_n / train_s,
        "train_steps": train_n // hp.batch_size,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "chunk_ms_ours": ours_item_s * 1e3,
        "chunk_ms_reference_style": ref_item_s * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=("default", "demo"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one)))
        return
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; load average {load} "
          f"({os.cpu_count()} cores): figures scale with what else runs")
    for name in ("demo", "default"):
        threads = ["--threads", str(args.threads)] if args.threads else []
        out = subprocess.run([sys.executable, __file__, "--one", name, *threads], check=True, capture_output=True,
                             text=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"\n{name} config:")
        print(f"  data loader only : {r['loader_samples_per_s']:10.1f} samples/s")
        print(f"  training         : {r['train_samples_per_s']:10.1f} samples/s over {r['train_steps']} steps "
              f"(ratio to loader-only: {r['train_samples_per_s'] / r['loader_samples_per_s']:.3f})")
        print(f"  with feature tempo: {r['train_tempo_samples_per_s']:9.1f} samples/s "
              f"(ratio to without: {r['train_tempo_samples_per_s'] / r['train_samples_per_s']:.3f})")
        print(f"  peak RSS         : {r['peak_rss_mb']:10.0f} MB")
        print(f"  one chunk read   : {r['chunk_ms_ours']:.2f} ms ours vs {r['chunk_ms_reference_style']:.2f} ms "
              f"reference-style ({r['chunk_ms_reference_style'] / r['chunk_ms_ours']:.1f}x)")


if __name__ == "__main__":
    main()
