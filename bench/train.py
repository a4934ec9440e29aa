"""Training throughput and peak memory on CPU: the product's training step against the reference tool's, re-enacted
in the same process (run: python bench/train.py).

For the default model config (see docs/reference_tool.md) and the demo config (training/demo), on synthetic dB
features, one epoch each (the three chunk-length loaders zipped), timed per optimizer step (the first step, which
pays one-off allocation costs, is left out):
- product: ``csi_model.training.train`` (batched chunk cutting and SpecAugment, masked model), fp32 and bf16, and
  with ``--compile`` also under ``torch.compile`` (timed on a second epoch: the first pays the compilation);
- reference: ``bench/reference_step.py`` (per-item whole-file loads and pooling loops, the reference's network as
  ``bench/reference_model.py`` re-enacts it, the reference's loss formulas), fp32 only, as the reference trains;
- loader only: the product's loaders without the model.
The sides alternate for ``--rounds`` rounds in one process and the best round of each counts, so load changes
on a shared machine hit both. Peak RSS comes from one extra process per (config, side), so each figure is that
side's own. Both sides compute the same loss terms, printed per config: focal always, batch-hard triplet when its
weight is > 0.01, centre when its weight is > 0.
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

from csi_model.augment import SpecAugment
from csi_model.dataset import ChunkDataset, EpochBatches, FeatureItem, collate_chunks
from csi_model.hparams import TrainingHParams, load_training_hparams
from csi_model.losses import LossWeights
from csi_model.sampler import MPerClassBatchSampler
from csi_model.training import StepEnded, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_step import ReferenceTrainer, reference_style_chunk  # noqa: E402

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


def loss_terms(hp: TrainingHParams) -> str:
    """The loss terms both sides compute for ``hp`` (same rule on both: see ``LossWeights``)."""
    weights = LossWeights.from_hparams(hp)
    return " + ".join(["focal", *(["batch-hard triplet"] if weights.uses_triplet else []),
                       *(["centre"] if weights.uses_center else [])])


def loader_only(hp: TrainingHParams, items: list[FeatureItem]) -> tuple[int, float]:
    augment = SpecAugment(hp.spec_augmentation).batch if hp.spec_augmentation else None
    loaders = []
    for i, chunk in enumerate(hp.chunk_frame):
        ds = ChunkDataset(items, chunk * hp.mean_size, hp.mean_size, hp.mode, augment, seed=i)
        sampler = EpochBatches(MPerClassBatchSampler([it.work_id for it in items], hp.m_per_class, hp.batch_size,
                                                     np.random.default_rng(i)))
        loaders.append(torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_chunks))
    began = time.perf_counter()
    samples = sum(len(batch[2]) for step in zip(*loaders) for batch in step)
    return samples, time.perf_counter() - began


SIDES = ("reference", "product", "product-bf16")
COMPILED = "product-compile"  # opt-in (--compile): timed on its second epoch, after compiling in the first


def product_run(hp: TrainingHParams, items: list[FeatureItem], model_dir: Path) -> tuple[int, float]:
    """(samples, seconds) over the steps of the run's last epoch but its first step."""
    stamps: dict[int, list[float]] = {}
    train(hp, items, model_dir, progress=lambda event: stamps.setdefault(event.epoch, []).append(time.perf_counter())
          if isinstance(event, StepEnded) else None)
    last = stamps[max(stamps)]
    return (len(last) - 1) * hp.batch_size, last[-1] - last[0]


def reference_run(hp: TrainingHParams, items: list[FeatureItem]) -> tuple[int, float]:
    stamps = [time.perf_counter() for _ in ReferenceTrainer(hp, items, max(it.work_id for it in items) + 1).epoch()]
    return (len(stamps) - 1) * hp.batch_size, stamps[-1] - stamps[0]


def side_run(side: str, hp: TrainingHParams, items: list[FeatureItem], folder: Path) -> tuple[int, float]:
    """(samples timed, seconds) of one epoch of ``side``."""
    if side == "reference":
        return reference_run(hp, items)
    variant = {"product": {}, "product-bf16": {"precision": "bf16"}, COMPILED: {"compile": True, "max_epochs": 2}}
    return product_run(dataclasses.replace(hp, **variant[side]), items, folder / f"{side}-{time.time_ns()}")


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


def measure(name: str, sides: list[str], rounds: int) -> dict[str, float]:
    hp = config(name)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        items = write_features(Path(tmp), hp, n_works=2 * hp.batch_size // hp.m_per_class, perfs=hp.m_per_class)
        if len(sides) > 1:
            load_n, load_s = loader_only(hp, items)
            out["loader_samples_per_s"] = load_n / load_s
            out["chunk_ms_ours"], out["chunk_ms_reference_style"] = (x * 1e3 for x in chunk_read_ratio(hp, items))
        for _ in range(rounds):
            for side in sides:
                n, seconds = side_run(side, hp, items, Path(tmp))
                out[side] = max(out.get(side, 0.0), n / seconds)
                out["steps"] = n // hp.batch_size + 1
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _child(args: list[str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=("default", "demo"), help=argparse.SUPPRESS)
    parser.add_argument("--sides", default=",".join(SIDES), help=argparse.SUPPRESS)
    parser.add_argument("--configs", default="demo,default", help="configs to run (default: demo,default)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per side (best counts)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--compile", action="store_true", help="also time the product with torch.compile")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args.sides.split(","), args.rounds)))
        return
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; load average {load} "
          f"({os.cpu_count()} cores): figures scale with what else runs")
    threads = ["--threads", str(args.threads)] if args.threads else []
    sides = [*SIDES, COMPILED] if args.compile else list(SIDES)
    for name in args.configs.split(","):
        r = _child(["--one", name, "--sides", ",".join(sides), "--rounds", str(args.rounds), *threads])
        memory = {side: _child(["--one", name, "--sides", side, "--rounds", "1", *threads])["peak_rss_mb"]
                  for side in sides}
        print(f"\n{name} config ({r['steps']} steps per epoch, best of {args.rounds} alternating rounds); "
              f"losses on both sides: {loss_terms(config(name))}")
        for side in sides:
            print(f"  {side:<15}: {r[side]:8.1f} samples/s ({r[side] / r['reference']:.2f}x reference), "
                  f"peak RSS {memory[side]:5.0f} MB")
        print(f"  product/reference: fp32 {r['product'] / r['reference']:.2f}x, "
              f"bf16 {r['product-bf16'] / r['reference']:.2f}x (the reference trains in fp32 only)")
        print(f"  loader only    : {r['loader_samples_per_s']:8.1f} samples/s")
        print(f"  one chunk read : {r['chunk_ms_ours']:.2f} ms ours vs {r['chunk_ms_reference_style']:.2f} ms "
              f"reference-style ({r['chunk_ms_reference_style'] / r['chunk_ms_ours']:.1f}x)")


if __name__ == "__main__":
    main()
