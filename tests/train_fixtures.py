"""Shared helpers for training tests: tiny learnable feature sets and a tiny training configuration.

Each synthetic work is a random spectral motif (a few loud bins per frame, repeating in time); a performance is
that motif at a random time offset with noise, in dB like the real CQT features. Works are therefore
separable from their content, which is what a working training loop must learn.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from csi_model.dataset import FeatureItem
from csi_model.hparams import TrainingHParams

TINY_BINS = 48


def tiny_hparams(**overrides: object) -> TrainingHParams:
    """A configuration that trains in seconds on CPU: d 32, 1 block, chunks of 24/20/16 pooled frames."""
    base = TrainingHParams(
        chunk_frame=(24, 20, 16),
        chunk_s=24 * 2 * 0.04,
        mean_size=2,
        m_per_class=4,
        batch_size=8,
        learning_rate=0.002,
        lr_decay=0.9,
        min_lr=0.0001,
        input_dim=TINY_BINS,
        embed_dim=32,
        seed=7,
        num_workers=0,
        device="cpu",
        early_stopping_patience=100,
        max_epochs=3,
        encoder=dataclasses.replace(TrainingHParams().encoder, output_dims=32, num_blocks=1, attention_dim=64),
    )
    return dataclasses.replace(base, **overrides)


def write_feature(path: Path, feat: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, feat.astype(np.float32))


def work_motifs(n_works: int, n_bins: int, rng: np.random.Generator, period: int = 12) -> np.ndarray:
    """``[W, period, F]`` dB motifs: each frame has three loud bins on a −60 dB floor."""
    motifs = np.full((n_works, period, n_bins), -60.0, dtype=np.float32)
    loud = rng.integers(0, n_bins, size=(n_works, period, 3))
    w, t = np.meshgrid(np.arange(n_works), np.arange(period), indexing="ij")
    for k in range(3):
        motifs[w, t, loud[..., k]] = -5.0
    return motifs


def synthetic_features(
    folder: Path,
    n_works: int = 6,
    perfs_per_work: int = 4,
    n_frames: tuple[int, int] = (120, 300),
    n_bins: int = TINY_BINS,
    seed: int = 0,
    first_work_id: int = 0,
    noise_db: float = 6.0,
) -> list[FeatureItem]:
    """Write ``n_works × perfs_per_work`` feature files under ``folder`` and return their items."""
    rng = np.random.default_rng(seed)
    motifs = work_motifs(n_works, n_bins, rng)
    period = motifs.shape[1]
    items = []
    for w in range(n_works):
        for p in range(perfs_per_work):
            length = int(rng.integers(n_frames[0], n_frames[1] + 1))
            phase = rng.integers(0, period)
            frames = (np.arange(length) // 2 + phase) % period  # each motif frame lasts two raw frames
            feat = motifs[w][frames] + rng.normal(0.0, noise_db, size=(length, n_bins))
            path = folder / f"w{w:03d}_p{p}.npy"
            write_feature(path, feat)
            items.append(FeatureItem(f"w{w}-p{p}", first_work_id + w, path, length))
    return items
