"""Identification search benchmark: latency of one query and batch throughput vs the reference-set size.

Synthetic unit references at segment level (2 segments per performance, 5 performances per work); a query is
10 segment embeddings. Every figure is also printed as a ratio to the 10k case measured in the same process,
so runs on different machines compare. ``time_search`` is the reusable timer: wrap any query (e.g. the model's
forward pass plus the search) in a zero-argument callable.

The index part (``--index-sizes``) compares the product's exact search with the FAISS reference index
(``csi_model.segment_index``) on *clustered* synthetic unit vectors (each work a random centre, each segment
centre + noise, cosine ≈ 0.5 within a work; a query is 10 new segments of a random work): per-query p50/p95 of
segment search (one call for the query's 10 segments) and of the work ranking with its exact re-rank, batched
throughput, recall@10 of segment hits against exact search on the same queries, build time and index size, for
each of ``--kinds``: ``flat`` (IndexFlatIP), ``ivf`` (IVF-Flat) and ``ivf_refine`` (the product's default above
``exact_below``: IVF over SQ8 codes whose ``refine_factor``·k candidates are re-ranked by the stored vectors).
From ``--chunked-from`` segments (default 5M; float32 vectors are 5 GB at 10M) the vectors are generated and
added in chunks. Ground truth is an exact inner-product scan in chunks.

The end-to-end part times what ``csi identify`` does per query -- decode, CQT (dataset settings), embedding of
every segment with a default-size CoverHunter, work search -- on a real synthetic recording, stage by stage, and
prints the whole as a ratio to the search alone.

    .venv/bin/python bench/identify.py [--sizes 10000 100000 1000000] [--repeats 30] [--threads N]
                                       [--e2e-seconds 180] [--e2e-refs 100000] [--e2e-batch 16]
                                       [--index-sizes 100000 1000000] [--nprobe 64 128 256]
                                       [--kinds exact flat ivf ivf_refine] [--nlist 0] [--codes SQ8]
                                       [--store float32] [--refine-factor 4] [--chunked-from 5000000]
                                       [--skip-exact] [--skip-e2e]

Default run: about 15 minutes and 3 GB on 2 cores; add 10000000 to --index-sizes for the 10M case (measured with
--kinds ivf_refine --nlist 1024 --nprobe 64 128 256 --queries 100 --batch-runs 0 --skip-exact --skip-e2e: about
25 minutes on a busy machine and 12 GB peak; vectors are generated and added in chunks).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from csi_model.audio import load_audio
from csi_model.cqt import CqtSettings, compute_cqt
from csi_model.embedding import Embedder
from csi_model.model import CoverHunter, ModelConfig
from csi_model.search import PerformanceIndex
from csi_model.segment_index import (
    FLAT,
    IVF,
    IVF_REFINE,
    TRAIN_ROWS_PER_LIST,
    Groups,
    IndexConfig,
    RefinedIndex,
    add_vectors,
    build_index,
    empty_index,
    search_groups,
)
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
        embedder = Embedder(model, 1125, 3, 32, device)
        segments = embedder.embed([feature])[0]
        stages = {
            "decode": time_search(lambda: load_audio(wav), repeats, warmup=1),
            "cqt": time_search(lambda: compute_cqt([signal], settings, device), repeats, warmup=1),
            "embed": time_search(lambda: embedder.embed([feature]), repeats, warmup=1),
            "search": time_search(lambda: index.search_works([segments], TOP_K), repeats, warmup=1),
        }

        def whole(paths: list[Path]) -> object:
            features = compute_cqt([load_audio(p) for p in paths], settings, device)
            return index.search_works(embedder.embed(features), TOP_K)

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


NOISE = 0.09  # per-coordinate noise around a work centre: cosine ≈ 1 / (1 + 128·0.09²) ≈ 0.5 within a work
CHUNK = 1 << 20
QUERIES = 200


def clustered(works: np.ndarray, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit segments of the given works: centre + noise, normalised; [len(works), DIM] float32."""
    vectors = centres[works] + NOISE * rng.standard_normal((len(works), DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def reference_chunks(n_segments: int, centres: np.ndarray, seed: int):
    """(first row, [rows, DIM]) chunks of the reference set, the same on every call (regenerated, not kept)."""
    per_work = SEGMENTS_PER_PERF * PERFS_PER_WORK
    for start in range(0, n_segments, CHUNK):
        rows = np.arange(start, min(start + CHUNK, n_segments))
        yield start, clustered(rows // per_work, centres, np.random.default_rng([seed, start]))


def exact_top(queries: np.ndarray, n_segments: int, centres: np.ndarray, seed: int, k: int = TOP_K) -> np.ndarray:
    """Exact top-k reference rows of each query row by inner product, scanning the chunks: [Q, k]."""
    import faiss

    best_d = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 0), dtype=np.int64)
    for start, chunk in reference_chunks(n_segments, centres, seed):
        flat = faiss.IndexFlatIP(DIM)
        flat.add(chunk)
        d, i = flat.search(queries, k)
        best_d, best_i = np.c_[best_d, d], np.c_[best_i, i + start]
        order = np.argsort(-best_d, axis=1, kind="stable")[:, :k]
        best_d, best_i = np.take_along_axis(best_d, order, 1), np.take_along_axis(best_i, order, 1)
    return best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def chunked_index(n_segments: int, centres: np.ndarray, seed: int, config: IndexConfig):
    """The product's index for ``n_segments`` rows, trained on a spread sample and filled chunk by chunk (the
    vectors are never all in memory at once besides the index's own copy)."""
    rng = np.random.default_rng([seed, 1 << 40])
    nlist = config.lists_for(n_segments)
    index = empty_index(clustered(rng.integers(0, len(centres), TRAIN_ROWS_PER_LIST * nlist), centres, rng),
                        n_segments, config)
    for start, chunk in reference_chunks(n_segments, centres, seed):
        add_vectors(index, chunk, start + np.arange(len(chunk)))
    return index


def index_size_gb(index) -> float:
    """Bytes of the index as written (streamed to /dev/null, not held in memory)."""
    import faiss

    if isinstance(index, RefinedIndex):
        return (index_size_gb(index.ivf) + index_size_gb(index.store))
    counter = [0]
    faiss.write_index(index, faiss.PyCallbackIOWriter(lambda b: counter.__setitem__(0, counter[0] + len(b))
                                                      or len(b)))
    return counter[0] / 2**30


def measure_index(n_segments: int, nprobes: list[int], kinds: list[str], config: IndexConfig, chunked_from: int,
                  repeats: int, n_queries: int = QUERIES, batch_runs: int = 3, seed: int = 0) -> None:
    """One reference-set size: exact vs index latency, throughput, recall@10, build time and memory."""
    rng = np.random.default_rng([seed, n_segments])
    n_works = max(1, n_segments // (SEGMENTS_PER_PERF * PERFS_PER_WORK))
    centres = rng.standard_normal((n_works, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    query_works = rng.integers(0, n_works, n_queries)
    queries = clustered(np.repeat(query_works, QUERY_SEGMENTS), centres, rng)  # [queries·10, DIM]
    one = queries[:QUERY_SEGMENTS]
    start = time.perf_counter()
    truth = exact_top(queries, n_segments, centres, seed)
    print(f"\n{n_segments} segments ({n_works} works, noise {NOISE}; queries of {QUERY_SEGMENTS} segments; "
          f"ground truth by exact scan in {time.perf_counter() - start:.1f} s)", flush=True)
    n_perfs = n_segments // SEGMENTS_PER_PERF
    groups = Groups(first_id=np.arange(0, n_segments, SEGMENTS_PER_PERF), count=np.full(n_perfs, SEGMENTS_PER_PERF),
                    perfs=np.arange(n_perfs), work_ids=np.arange(n_perfs) // PERFS_PER_WORK)
    vectors = None
    if n_segments < chunked_from:
        vectors = np.concatenate([chunk for _, chunk in reference_chunks(n_segments, centres, seed)])
        if "exact" in kinds:
            exact = PerformanceIndex(vectors, np.arange(n_segments) // SEGMENTS_PER_PERF,
                                     np.arange(n_perfs + 1) // PERFS_PER_WORK)
            latency = time_search(lambda: exact.index.search(one, TOP_K), max(3, repeats // 3))
            batch = time_search(lambda: exact.index.search(queries, TOP_K), 1, warmup=0)
            print(f"  product exact search (torch): query p50 {latency.p50_ms:.1f} ms, p95 {latency.p95_ms:.1f} ms; "
                  f"batch {n_queries / (batch.mean_ms / 1e3):.1f} queries/s", flush=True)
            del exact
    for kind in (k for k in kinds if k != "exact"):
        kind_config = replace(config, exact_below=n_segments + 1 if kind == FLAT else 0,
                              approximate=kind if kind != FLAT else config.approximate)
        build_start = time.perf_counter()
        index = build_index(vectors, np.arange(n_segments), kind_config) if vectors is not None else \
            chunked_index(n_segments, centres, seed, kind_config)
        build_s = time.perf_counter() - build_start
        nlist = kind_config.lists_for(n_segments)
        name = {FLAT: "IndexFlatIP (exact)", IVF: f"IVF{nlist},Flat",
                IVF_REFINE: f"IVF{nlist},{config.codes} + {config.store} re-rank of {config.refine_factor}·k"}[kind]
        print(f"  {name}: built in {build_s:.1f} s, {index_size_gb(index):.2f} GB; peak RSS {peak_rss_gb():.1f} GB",
              flush=True)
        for nprobe in (nprobes if kind != FLAT else [0]):
            if kind != FLAT:
                index.nprobe = nprobe
            latency = time_search(lambda index=index: index.search(one, TOP_K), repeats)
            start = time.perf_counter()
            recall = recall_at_k(index.search(queries, TOP_K)[1], truth)
            batch_s = (time_search(lambda index=index: index.search(queries, TOP_K), batch_runs, warmup=0).mean_ms
                       / 1e3 if batch_runs else time.perf_counter() - start)
            ranked = time_search(lambda index=index: search_groups(index, groups, [one], TOP_K, works=True,
                                                                   candidates=config.candidates), repeats)
            label = f"nprobe {nprobe:>4}" if kind != FLAT else "exact     "
            print(f"  {label}: segment query p50 {latency.p50_ms:.2f} ms, p95 {latency.p95_ms:.2f} ms; batch "
                  f"{len(queries) / QUERY_SEGMENTS / batch_s:.0f} queries/s; recall@10 {recall:.4f}; work ranking with "
                  f"exact re-rank p50 {ranked.p50_ms:.2f} ms, p95 {ranked.p95_ms:.2f} ms", flush=True)
        index = None  # freed before the next kind is built


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
    parser.add_argument("--index-sizes", type=int, nargs="*", default=[100_000, 1_000_000],
                        help="reference segment counts of the exact-vs-index part (add 10000000 for 10M)")
    parser.add_argument("--nprobe", type=int, nargs="+", default=[64, 128, 256],
                        help="IVF lists searched per query")
    parser.add_argument("--kinds", nargs="+", default=["exact", FLAT, IVF, IVF_REFINE],
                        choices=["exact", FLAT, IVF, IVF_REFINE],
                        help="searches compared (exact = the product's torch scan)")
    parser.add_argument("--nlist", type=int, default=0, help="IVF lists (0: the product's 4·√rows)")
    parser.add_argument("--codes", default=IndexConfig.codes, help="ivf_refine: FAISS encoding in the lists")
    parser.add_argument("--store", default=IndexConfig.store, help="ivf_refine: float32 or float16 re-rank vectors")
    parser.add_argument("--refine-factor", type=int, default=IndexConfig.refine_factor,
                        help="ivf_refine: candidates per hit")
    parser.add_argument("--chunked-from", type=int, default=5_000_000,
                        help="sizes from here are generated and added in chunks (and skip the torch exact scan)")
    parser.add_argument("--noise", type=float, default=NOISE,
                        help="per-coordinate noise around a work centre (smaller: tighter works, easier for IVF)")
    parser.add_argument("--queries", type=int, default=QUERIES, help="queries of the recall and batch figures")
    parser.add_argument("--batch-runs", type=int, default=3,
                        help="timed batch searches per setting (0: time the recall search instead)")
    parser.add_argument("--skip-exact", action="store_true", help="skip the exact-search size table")
    parser.add_argument("--skip-e2e", action="store_true", help="skip the end-to-end part")
    args = parser.parse_args()
    globals()["NOISE"] = args.noise  # the generator's module-wide setting
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    print(f"torch {torch.__version__}, faiss {faiss.__version__}, {torch.get_num_threads()} threads; dim {DIM}, "
          f"query = {QUERY_SEGMENTS} segments, top {TOP_K}, batch {BATCH_QUERIES} queries")
    config = IndexConfig(nlist=args.nlist or None, codes=args.codes, store=args.store,
                         refine_factor=args.refine_factor)
    for n_segments in args.index_sizes:
        measure_index(n_segments, args.nprobe, args.kinds, config, args.chunked_from, args.repeats, args.queries,
                      args.batch_runs)
    if args.skip_exact:
        if not args.skip_e2e:
            print_end_to_end(args.e2e_seconds, args.e2e_refs, args.e2e_batch, max(3, args.repeats // 6), rng)
        return
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
    if not args.skip_e2e:
        print_end_to_end(args.e2e_seconds, args.e2e_refs, args.e2e_batch, max(3, args.repeats // 6), rng)


if __name__ == "__main__":
    main()
