"""Identification search benchmark: latency of one query and batch throughput vs the reference-set size.

Synthetic unit references at segment level (2 segments per performance, 5 performances per work); a query is
10 segment embeddings. Every figure is also printed as a ratio to the 10k case measured in the same process,
so runs on different machines compare. ``time_search`` is the reusable timer: wrap any query (e.g. the model's
forward pass plus the search) in a zero-argument callable.

    .venv/bin/python bench/identify.py [--sizes 10000 100000 1000000] [--repeats 30] [--threads N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from csi_model.search import PerformanceIndex

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="reference segment counts; the first is the baseline of the ratios")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads (1 is steadier on a machine shared with other jobs)")
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


if __name__ == "__main__":
    main()
