"""Delta-ingestion benchmark: does ingesting k new performances cost the same whatever the reference set's size?

Builds two stores in the same process -- one with 1k, one with 10k reference performances (catalog rows, work
ids, variants, feature rows and segment embeddings of a registered model, written through the store API) --
then ingests the same kind of delta batch (10 new synthetic recordings, real audio, real CQT, real embedding
with the promoted model) into each, several times, and prints the median wall time per batch and the ratio
10k / 1k (target <= 1.5).

    .venv/bin/python bench/ingest.py [--sizes 1000 10000] [--batch 10] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from csi_assets.ingestion import ingest_batch
from csi_assets.layouts import DatasetLayout
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import embeddings as embedding_store
from csi_assets.store import features as feature_store
from csi_assets.store import ingest as ingest_store
from csi_assets.store import models as model_store
from csi_assets.store import splits as split_store
from csi_assets.store.records import FeatureRecord, VariantRecord
from csi_assets.training_runs import trained_contract
from csi_model.audio import load_audio
from csi_model.checkpoint import model_fingerprint, save_checkpoint
from csi_model.cqt import compute_cqt, save_feature
from csi_model.hparams import to_dict, training_hparams_from_dict
from csi_model.model import CoverHunter, ModelConfig
from csi_model.synth import generate_covers

DATA_HPARAMS = {"fmin": 32, "n_bins": 96, "bins_per_octave": 12, "aug_speed_mode": [1.0], "device": "cpu"}
MODEL_HPARAMS = {"chunk_frame": [60, 48, 36], "chunk_s": 7.2, "mean_size": 3, "batch_size": 8, "m_per_class": 4,
                 "input_dim": 96, "embed_dim": 64,
                 "encoder": {"output_dims": 64, "num_blocks": 2, "attention_dim": 128},
                 "device": "cpu"}
SEGMENTS_PER_PERF = 3


class _Quiet:
    def info(self, msg: str) -> None: ...

    def warning(self, msg: str) -> None: ...


def build_store(root: Path, n_refs: int, audio: Path) -> tuple[Store, DatasetLayout]:
    """A dataset folder + store holding ``n_refs`` reference performances embedded by a promoted tiny model."""
    dataset_dir = root / "dataset"
    dataset_dir.mkdir(parents=True)
    (dataset_dir / "hparams.yaml").write_text(yaml.safe_dump(DATA_HPARAMS))
    dataset = DatasetLayout.at(dataset_dir)
    store = Store(root / "csi.duckdb")
    settings = dataset.cqt_settings()
    feature = compute_cqt([load_audio(audio)], settings, torch.device("cpu"))[0]
    feat_path = dataset.features_dir / settings.settings_hash() / "shared.cqt.npy"
    save_feature(feat_path, feature)
    perfs = [f"ref_{i:06d}" for i in range(n_refs)]
    rows = [{"perf": p, "wav": str(audio), "dur_s": 8.0, "work": f"work_{i // 5:05d}", "version": None,
             "line_no": i + 1, "audio_hash": f"h{i}", "audio_size": 0, "audio_mtime_ns": 0}
            for i, p in enumerate(perfs)]
    catalog_store.replace_catalog(store, dataset.name, str(dataset.catalog_path), rows, [], [])
    split_store.add_work_ids(store, dataset.name, {f"work_{w:05d}": w for w in range((n_refs + 4) // 5)})
    feature_store.replace_variants(store, dataset.name, perfs, [
        VariantRecord(variant=p, perf=p, speed=1.0, wav=str(audio), dur_s=8.0, source_hash=f"h{i}")
        for i, p in enumerate(perfs)])
    feature_store.record_features(store, dataset.name, settings.settings_hash(), [
        FeatureRecord(variant=p, path=str(feat_path), n_frames=len(feature), n_bins=96, audio_hash=f"h{i}",
                      settings={}) for i, p in enumerate(perfs)])
    model_id = register_tiny_model(store, dataset, root / "training")
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n_refs, SEGMENTS_PER_PERF, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
    starts = [np.arange(SEGMENTS_PER_PERF) * 180 for _ in perfs]
    for first in range(0, n_refs, 2000):
        embedding_store.write_embeddings(store, dataset.name, model_id, perfs[first:first + 2000],
                                         starts[first:first + 2000], list(vectors[first:first + 2000]),
                                         [f"h{i}" for i in range(first, min(first + 2000, n_refs))])
    return store, dataset


def register_tiny_model(store: Store, dataset: DatasetLayout, training_dir: Path) -> str:
    hp = training_hparams_from_dict(MODEL_HPARAMS)
    torch.manual_seed(0)
    model = CoverHunter(ModelConfig.from_hparams(hp, num_classes=8))
    pair = save_checkpoint(training_dir / "checkpoints", 0, model, torch.optim.AdamW(model.parameters()),
                           steps=0, early_stopping={})
    fingerprint = model_fingerprint(model.state_dict())
    model_id = model_store.model_id_for("bench", fingerprint)
    model_store.register_model(store, model_id=model_id, dataset=dataset.name, training_dir=str(training_dir),
                               checkpoint=str(pair.generator), epoch=0, fingerprint=fingerprint,
                               hparams=to_dict(hp), metrics={}, promote=True,
                               input_contract=trained_contract(dataset.hparams()))
    return model_id


def make_batch(folder: Path, source: Path, tag: str, size: int) -> Path:
    """A delta catalog of ``size`` new performances (new perf ids and works) pointing at real synthetic audio."""
    wavs = sorted((source / "wav").glob("*.wav"))
    catalog = folder / f"{tag}.txt"
    catalog.write_text("".join(json.dumps({"perf": f"{tag}_{i}", "wav": str(wavs[i % len(wavs)]), "dur_s": 8.0,
                                           "work": f"{tag}_work_{i // 2}"}) + "\n" for i in range(size)))
    return catalog


def time_ingest(store: Store, dataset: DatasetLayout, batches: list[Path]) -> list[float]:
    seconds = []
    for catalog in batches:
        batch_id = catalog.stem
        ingest_store.record_batch(store, batch_id, dataset.name, str(catalog), ingest_store.RECEIVED)
        start = time.perf_counter()
        counts = ingest_batch(store, dataset, batch_id, catalog, _Quiet())
        seconds.append(time.perf_counter() - start)
        assert counts["performances"] == counts["embedded"], counts
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        audio_dir = root / "audio"
        generate_covers(audio_dir, works=5, perfs=2, seed=3, seconds=8.0)
        reference_audio = sorted((audio_dir / "wav").glob("*.wav"))[0]
        medians = {}
        for size in args.sizes:
            t0 = time.perf_counter()
            store, dataset = build_store(root / f"store_{size}", size, reference_audio)
            setup = time.perf_counter() - t0
            batches = [make_batch(root, audio_dir, f"s{size}_r{r}", args.batch) for r in range(args.repeats)]
            time_ingest(store, dataset, [make_batch(root, audio_dir, f"s{size}_warm", args.batch)])
            seconds = time_ingest(store, dataset, batches)
            medians[size] = statistics.median(seconds)
            print(f"{size:>7} references (store built in {setup:.1f} s): ingest {args.batch} performances "
                  f"median {medians[size]:.2f} s  (runs: {', '.join(f'{s:.2f}' for s in seconds)})")
        base = args.sizes[0]
        for size in args.sizes[1:]:
            print(f"ratio {size} / {base} references: {medians[size] / medians[base]:.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
