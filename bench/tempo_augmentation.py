"""Held-out test mAP: tempo augmentation in the feature domain against rendered audio variants.

Run: ``python bench/tempo_augmentation.py [--works 64 --perfs 5 --seconds 20 --epochs 30 --out DIR]``

One synthetic set (``csi synth``: every performance plays at its own tempo, 0.8-1.25x of its work's) is
materialised twice through the product's own assets (``dataset_catalog`` → ``speed_variants`` → ``cqt_features``
→ ``work_ids`` → ``data_splits`` → ``trained_model``), once per ``tempo_augmentation`` mode, with the same data
hparams otherwise (the demo's, ``aug_speed_mode`` from ``--factors``), hence the same split, and the same training
hparams (the demo's, ``max_epochs`` from ``--epochs``, early stopping on validation mAP). Each epoch visits every
training recording once per factor in both modes, so the step budget is the same. The best checkpoint's test mAP
comes with a work-stratified bootstrap 95 % interval. Results are written to ``DIR/results.json`` after each mode,
so a long run that is stopped still reports the modes it finished.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO_DATA = ROOT / "data" / "demo" / "hparams.yaml"
DEMO_TRAINING = ROOT / "training" / "demo" / "config" / "hparams.yaml"
MODES = ("features", "audio")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--works", type=int, default=64)
    p.add_argument("--perfs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--epochs", type=int, default=30, help="max_epochs of both runs (early stopping may end sooner)")
    p.add_argument("--factors", default="0.9,1.0,1.1", help="aug_speed_mode of both runs")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--out", type=Path, default=Path("/tmp/csi_tempo_bench"))
    return p.parse_args()


def synthesise(out: Path, args: argparse.Namespace) -> Path:
    from csi_model.synth import generate_covers

    audio = out / "audio"
    if not (audio / "dataset.txt").exists():
        generate_covers(audio, args.works, args.perfs, seed=args.seed, seconds=args.seconds)
    return audio


def make_project(out: Path, audio: Path, mode: str, args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """``out/<mode>/{dataset, training, csi.duckdb}``: the shared audio linked in, hparams written."""
    root = out / mode
    dataset, training = root / "dataset", root / "training"
    (training / "config").mkdir(parents=True, exist_ok=True)
    dataset.mkdir(parents=True, exist_ok=True)
    if not (dataset / "wav").exists():
        (dataset / "wav").symlink_to(audio / "wav", target_is_directory=True)
    (dataset / "dataset.txt").write_text((audio / "dataset.txt").read_text())
    data_hp = yaml.safe_load(DEMO_DATA.read_text())
    data_hp.update(aug_speed_mode=[float(k) for k in args.factors.split(",")], tempo_augmentation=mode,
                   device="cpu")
    (dataset / "hparams.yaml").write_text(yaml.safe_dump(data_hp))
    train_hp = yaml.safe_load(DEMO_TRAINING.read_text())
    for name in ("demo_val", "demo_test"):
        split = "val" if name == "demo_val" else "test"
        train_hp[name].update(query_path=str(dataset / f"{split}.txt"), ref_path=str(dataset / "full.txt"))
    train_hp.update(train_path=str(dataset / "train.txt"), val_path=str(dataset / "val.txt"),
                    max_epochs=args.epochs, device="cpu")
    (training / "config" / "hparams.yaml").write_text(yaml.safe_dump(train_hp))
    return dataset, training, root / "csi.duckdb"


def run_mode(out: Path, audio: Path, mode: str, args: argparse.Namespace) -> dict:
    import torch

    from csi_assets.catalog import catalog_dataset
    from csi_assets.dataset_splits import record_work_ids, split_dataset
    from csi_assets.features import compute_features
    from csi_assets.layouts import DatasetLayout, TrainingLayout
    from csi_assets.shards import staging_dir
    from csi_assets.store import Store
    from csi_assets.store import features as feature_store
    from csi_assets.store import models as model_store
    from csi_assets.sweeps import bootstrap_map
    from csi_assets.tempo_variants import record_variants
    from csi_assets.testsets import retrieval_test_sets
    from csi_assets.training_runs import run_training
    from csi_model.hparams import training_hparams_from_dict
    from csi_model.loading import model_from_checkpoint

    dataset, training_dir, store_path = make_project(out, audio, mode, args)
    layout, store = DatasetLayout.at(dataset), Store(store_path)
    log = logging.getLogger("bench.data")
    started = time.monotonic()
    catalog_dataset(store, layout, log)
    record_variants(store, layout, log)
    compute_features(store, layout, staging_dir(store.path), log)
    record_work_ids(store, layout)
    split_dataset(store, layout)
    data_seconds = time.monotonic() - started
    started = time.monotonic()
    run_training(store, layout, TrainingLayout.at(training_dir),
                 logging.getLogger("bench.train"))
    train_seconds = time.monotonic() - started

    row = model_store.promoted_model(store, dataset.name)
    hp = training_hparams_from_dict(row.hparams)
    model, _ = model_from_checkpoint(row.checkpoint, hp, num_classes=int(row.metrics["num_classes"]))
    table = feature_store.feature_table(store, dataset.name, layout.cqt_settings().settings_hash())
    test_sets, counts = retrieval_test_sets(hp, table, training_dir)
    test = next(ts for ts in test_sets if ts.name == "demo_test")
    interval = bootstrap_map(model, test, hp, torch.device("cpu"), args.bootstrap)
    metrics = row.metrics
    return {"mode": mode, "test_mAP": metrics["mAP"]["demo_test"], "ci95": [interval["ci_low"], interval["ci_high"]],
            "val_mAP": metrics["mAP"]["demo_val"], "best_epoch": metrics["best_epoch"], "epochs": metrics["epochs"],
            "test_queries": counts["demo_test"]["queries"], "refs": counts["demo_test"]["refs"],
            "test_split": sorted(it.perf for it in test.queries),
            "data_stage_s": round(data_seconds, 1), "training_s": round(train_seconds, 1)}


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    audio = synthesise(args.out, args)
    print(f"set: {args.works} works x {args.perfs} performances x ~{args.seconds:g} s, factors {args.factors}, "
          f"max {args.epochs} epochs; folder {args.out}", flush=True)
    for mode in args.modes.split(","):
        if mode not in results:
            results[mode] = run_mode(args.out, audio, mode, args)
            results_path.write_text(json.dumps(results, indent=1))
        r = results[mode]
        print(f"{mode:9s} test mAP {r['test_mAP']:.3f} (95% CI {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}), "
              f"val mAP {r['val_mAP']:.3f}, best epoch {r['best_epoch']} of {r['epochs']}, "
              f"{r['test_queries']} queries x {r['refs']} refs; data stage {r['data_stage_s']:.0f} s, "
              f"training {r['training_s']:.0f} s", flush=True)
    done = [results[m] for m in MODES if m in results]
    if len(done) == 2:
        if done[0]["test_split"] != done[1]["test_split"]:
            sys.exit("the two modes did not get the same test split")
        print(f"difference (features - audio): {done[0]['test_mAP'] - done[1]['test_mAP']:+.3f}")


if __name__ == "__main__":
    main()
