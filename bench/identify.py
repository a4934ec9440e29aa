"""Identification search benchmark: latency of one query and batch throughput vs the reference-set size.

Synthetic unit references at segment level (2 segments per performance, 5 performances per work); a query is
10 segment embeddings. Every figure is also printed as a ratio to the 10k case measured in the same process,
so runs on different machines compare. ``time_search`` is the reusable timer: wrap any query (e.g. the model's
forward pass plus the search) in a zero-argument callable.

The end-to-end part times what ``csi identify`` does per query -- decode, CQT (dataset settings), embedding of
every segment with a default-size CoverHunter, work search -- on a real synthetic recording, stage by stage, and
prints the whole as a ratio to the search alone.

    .venv/bin/python bench/identify.py [--sizes 10000 100000 1000000] [--repeats 30] [--threads N]
                                       [--e2e-seconds 180] [--e2e-refs 100000] [--e2e-batch 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from csi_model.audio import load_audio
from csi_model.cqt import CqtSettings, compute_cqt
from csi_model.embedding import embed_tracks
from csi_model.model import CoverHunter, ModelConfig
from csi_model.search import PerformanceIndex
from csi_model.synth import generate_covers

DIM = 128
SEGMENTS_PER_PERF = 2
PERFS_PER_WORK = 5
QUERY_SEGMENTS = 10
BATCH_QUERIES = 256
TOP_K = 10


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p95_ms: float
    mean_ms: float


def time_search(run_query: Callable[[], object], repeats: int = 30, warmup: int = 3) -> Latency:
    """Wall-clock latency percentiles of ``run_query()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run_query()
    elapsed = np.empty(repeats)
    for r in range(repeats):
        start = time.perf_counter()
        run_query()
        elapsed[r] = time.perf_counter() - start
    p50, p95 = np.percentile(elapsed, [50, 95]) * 1e3
    return Latency(p50_ms=float(p50), p95_ms=float(p95), mean_ms=float(elapsed.mean() * 1e3))


def unit_vectors(rows: int, rng: np.random.Generator) -> np.ndarray:
    vectors = rng.standard_normal((rows, DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def synthetic_index(n_segments: int, rng: np.random.Generator) -> PerformanceIndex:
    n_perfs = n_segments // SEGMENTS_PER_PERF
    segment_perf = np.repeat(np.arange(n_perfs), SEGMENTS_PER_PERF)
    perf_work = np.arange(n_perfs) // PERFS_PER_WORK
    return PerformanceIndex(unit_vectors(n_segments, rng), segment_perf, perf_work)


def measure(n_segments: int, repeats: int, rng: np.random.Generator) -> dict[str, float]:
    index = synthetic_index(n_segments, rng)
    query = unit_vectors(QUERY_SEGMENTS, rng)
    batch = [unit_vectors(QUERY_SEGMENTS, rng) for _ in range(BATCH_QUERIES)]
    segments = time_search(lambda: index.index.search(query, TOP_K), repeats)
    works = time_search(lambda: index.search_works([query], TOP_K), repeats)
    batch_runs = max(1, min(3, repeats // 10))
    batch_latency = time_search(lambda: index.search_works(batch, TOP_K), batch_runs, warmup=0)
    return {"segments_p50_ms": segments.p50_ms, "segments_p95_ms": segments.p95_ms,
            "works_p50_ms": works.p50_ms, "works_p95_ms": works.p95_ms,
            "batch_queries_per_s": BATCH_QUERIES / (batch_latency.mean_ms / 1e3)}


def measure_end_to_end(seconds: float, n_segments: int, batch: int, repeats: int,
                       rng: np.random.Generator) -> dict[str, float]:
    """Per-stage latency of one query of ``seconds`` s and the throughput of ``batch`` queries per call."""
    device = torch.device("cpu")
    model = CoverHunter(ModelConfig(num_classes=1, with_centres=False)).eval()  # default size, weights untrained
    settings = CqtSettings()
    index = synthetic_index(n_segments, rng)
    with tempfile.TemporaryDirectory() as folder:
        generate_covers(Path(folder), works=1, perfs=1, seconds=seconds)
        wav = next((Path(folder) / "wav").iterdir())
        signal = load_audio(wav)
        feature = compute_cqt([signal], settings, device)[0]
        segments = embed_tracks(model, [feature], 1125, 3, 32, device)[0]
        stages = {
            "decode": time_search(lambda: load_audio(wav), repeats, warmup=1),
            "cqt": time_search(lambda: compute_cqt([signal], settings, device), repeats, warmup=1),
            "embed": time_search(lambda: embed_tracks(model, [feature], 1125, 3, 32, device), repeats, warmup=1),
            "search": time_search(lambda: index.search_works([segments], TOP_K), repeats, warmup=1),
        }

        def whole(paths: list[Path]) -> object:
            features = compute_cqt([load_audio(p) for p in paths], settings, device)
            return index.search_works(embed_tracks(model, features, 1125, 3, 32, device), TOP_K)

        one = time_search(lambda: whole([wav]), repeats, warmup=1)
        many = time_search(lambda: whole([wav] * batch), max(1, repeats // 3), warmup=0)
    figures = {f"{name}_p50_ms": latency.p50_ms for name, latency in stages.items()}
    return {**figures, "query_p50_ms": one.p50_ms, "query_p95_ms": one.p95_ms, "segments": float(len(segments)),
            "batch_queries_per_s": batch / (many.mean_ms / 1e3)}


def print_end_to_end(seconds: float, n_segments: int, batch: int, repeats: int, rng: np.random.Generator) -> None:
    figures = measure_end_to_end(seconds, n_segments, batch, repeats, rng)
    stages = ", ".join(f"{name} {figures[f'{name}_p50_ms']:.1f}" for name in ("decode", "cqt", "embed", "search"))
    print(f"end to end, one {seconds:.0f} s query ({figures['segments']:.0f} segments) against {n_segments} "
          f"reference segments, default-size model on cpu:")
    print(f"  p50 {figures['query_p50_ms']:.1f} ms, p95 {figures['query_p95_ms']:.1f} ms; stages p50 ms: {stages}; "
          f"{figures['query_p50_ms'] / figures['search_p50_ms']:.1f}× the search alone")
    print(f"  batches of {batch} queries: {figures['batch_queries_per_s']:.2f} queries/s "
          f"({figures['batch_queries_per_s'] * figures['query_p50_ms'] / 1e3:.2f}× one at a time)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="reference segment counts; the first is the baseline of the ratios")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads (1 is steadier on a machine shared with other jobs)")
    parser.add_argument("--e2e-seconds", type=float, default=180.0, help="query length of the end-to-end part")
    parser.add_argument("--e2e-refs", type=int, default=100_000, help="reference segments of the end-to-end part")
    parser.add_argument("--e2e-batch", type=int, default=16, help="queries per call for the batch throughput")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; dim {DIM}, query = {QUERY_SEGMENTS} "
          f"segments, top {TOP_K}, batch {BATCH_QUERIES} queries")
    print(f"{'refs':>9} | {'seg p50 ms':>10} {'seg p95 ms':>10} | {'work p50 ms':>11} {'work p95 ms':>11} | "
          f"{'batch q/s':>9} | ratios vs {args.sizes[0]} (seg p50, work p50, q/s)")
    baseline = None
    for n_segments in args.sizes:
        figures = measure(n_segments, args.repeats, rng)
        baseline = baseline or figures
        print(f"{n_segments:>9} | {figures['segments_p50_ms']:>10.2f} {figures['segments_p95_ms']:>10.2f} | "
              f"{figures['works_p50_ms']:>11.2f} {figures['works_p95_ms']:>11.2f} | "
              f"{figures['batch_queries_per_s']:>9.1f} | "
              f"{figures['segments_p50_ms'] / baseline['segments_p50_ms']:.1f}×, "
              f"{figures['works_p50_ms'] / baseline['works_p50_ms']:.1f}×, "
              f"{figures['batch_queries_per_s'] / baseline['batch_queries_per_s']:.3f}×", flush=True)
    print_end_to_end(args.e2e_seconds, args.e2e_refs, args.e2e_batch, max(3, args.repeats // 6), rng)


if __name__ == "__main__":
    main()
