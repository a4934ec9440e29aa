"""Identification search benchmark: latency of one query and batch throughput vs the reference-set size.

Synthetic unit references at segment level (2 segments per performance, 5 performances per work); a query is
10 segment embeddings. Every figure is also printed as a ratio to the 10k case measured in the same process,
so runs on different machines compare. ``time_search`` is the reusable timer: wrap any query (e.g. the model's
forward pass plus the search) in a zero-argument callable.

The index part (``--index-sizes``) compares the product's exact search with the FAISS reference index
(``csi_model.segment_index``) on *clustered* synthetic unit vectors (each work a random centre, each segment
centre + noise, cosine ≈ 0.5 within a work; a query is 10 new segments of a random work): per-query p50/p95 of
segment search and of the performance ranking with its exact re-rank, batched throughput, recall@10 of segment
hits against exact search on the same queries, build time and index size. Below ``--pq-from`` segments the index
is the product's IVF-Flat; from there (default 10M, where float32 vectors alone are 5 GB) it is IVF-PQ (64-byte
codes) whose top ``--refine`` hits are re-ranked with float16 copies of the vectors -- a compressed index the
product does not build yet. Ground truth is an exact inner-product scan in chunks.

The end-to-end part times what ``csi identify`` does per query -- decode, CQT (dataset settings), embedding of
every segment with a default-size CoverHunter, work search -- on a real synthetic recording, stage by stage, and
prints the whole as a ratio to the search alone.

    .venv/bin/python bench/identify.py [--sizes 10000 100000 1000000] [--repeats 30] [--threads N]
                                       [--e2e-seconds 180] [--e2e-refs 100000] [--e2e-batch 16]
                                       [--index-sizes 100000 1000000] [--nprobe 16 64] [--pq-from 10000000]
                                       [--skip-exact] [--skip-e2e]

Default run: about 15 minutes and 3 GB on 2 cores; add 10000000 to --index-sizes for the 10M case (measured:
about 12 minutes and 5.7 GB peak with --skip-exact --skip-e2e; vectors are generated and added in chunks).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from csi_model.audio import load_audio
from csi_model.cqt import CqtSettings, compute_cqt
from csi_model.embedding import Embedder
from csi_model.model import CoverHunter, ModelConfig
from csi_model.search import PerformanceIndex
from csi_model.segment_index import Groups, IndexConfig, build_index, search_groups
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


def build_compressed(n_segments: int, centres: np.ndarray, seed: int, nlist: int):
    """IVF-PQ (64 × 8-bit codes per vector) trained on a spread sample, filled chunk by chunk; plus float16
    copies of the vectors for the re-rank."""
    import faiss

    index = faiss.index_factory(DIM, f"IVF{nlist},PQ64", faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng([seed, 1 << 40])
    index.train(clustered(rng.integers(0, len(centres), 64 * nlist), centres, rng))
    shadow = np.empty((n_segments, DIM), dtype=np.float16)
    for start, chunk in reference_chunks(n_segments, centres, seed):
        index.add(chunk)
        shadow[start:start + len(chunk)] = chunk
    return index, shadow


def refined_search(index, shadow: np.ndarray, queries: np.ndarray, refine: int) -> np.ndarray:
    """Top-10 after re-ranking the index's top ``refine`` hits with the float16 vectors: [Q, 10] rows."""
    _, candidates = index.search(queries, refine)
    scores = np.einsum("qd,qkd->qk", queries, shadow[np.maximum(candidates, 0)].astype(np.float32))
    scores[candidates < 0] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :TOP_K]
    return np.take_along_axis(candidates, order, 1)


def measure_index(n_segments: int, nprobes: list[int], pq_from: int, refine: int, repeats: int,
                  seed: int = 0) -> None:
    """One reference-set size: exact vs index latency, throughput, recall@10, build time and memory."""
    import faiss

    rng = np.random.default_rng([seed, n_segments])
    n_works = max(1, n_segments // (SEGMENTS_PER_PERF * PERFS_PER_WORK))
    centres = rng.standard_normal((n_works, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    query_works = rng.integers(0, n_works, QUERIES)
    queries = clustered(np.repeat(query_works, QUERY_SEGMENTS), centres, rng)  # [QUERIES·10, DIM]
    one = queries[:QUERY_SEGMENTS]
    start = time.perf_counter()
    truth = exact_top(queries, n_segments, centres, seed)
    print(f"\n{n_segments} segments ({n_works} works, noise {NOISE}; queries of {QUERY_SEGMENTS} segments; "
          f"ground truth by exact scan in {time.perf_counter() - start:.1f} s)", flush=True)
    nlist = IndexConfig().lists_for(n_segments)
    if n_segments >= pq_from:
        nlist = min(nlist, 4096)  # k-means over more lists would dominate the run on 2 cores
        build_start = time.perf_counter()
        index, shadow = build_compressed(n_segments, centres, seed, nlist)
        build_s = time.perf_counter() - build_start
        size_gb = index.sa_code_size() * n_segments / 2**30
        print(f"  IVF{nlist},PQ64 (compressed, + float16 re-rank of the top {refine}): built in {build_s:.0f} s; "
              f"codes {size_gb:.2f} GB + float16 vectors {shadow.nbytes / 2**30:.2f} GB; peak RSS "
              f"{peak_rss_gb():.1f} GB", flush=True)
        for nprobe in nprobes:
            index.nprobe = nprobe
            latency = time_search(lambda: refined_search(index, shadow, one, refine), repeats)
            batch = time_search(lambda: refined_search(index, shadow, queries, refine), 3, warmup=1)
            recall = recall_at_k(refined_search(index, shadow, queries, refine), truth)
            print(f"  nprobe {nprobe:>4}: query p50 {latency.p50_ms:.2f} ms, p95 {latency.p95_ms:.2f} ms; batch "
                  f"{QUERIES / (batch.mean_ms / 1e3):.0f} queries/s; recall@10 {recall:.4f}", flush=True)
        return
    vectors = np.concatenate([chunk for _, chunk in reference_chunks(n_segments, centres, seed)])
    exact = PerformanceIndex(vectors, np.arange(n_segments) // SEGMENTS_PER_PERF,
                             np.arange(n_segments // SEGMENTS_PER_PERF + 1) // PERFS_PER_WORK)
    latency = time_search(lambda: exact.index.search(one, TOP_K), max(3, repeats // 3))
    batch = time_search(lambda: exact.index.search(queries, TOP_K), 1, warmup=0)
    print(f"  product exact search (torch): query p50 {latency.p50_ms:.1f} ms, p95 {latency.p95_ms:.1f} ms; "
          f"batch {QUERIES / (batch.mean_ms / 1e3):.1f} queries/s", flush=True)
    del exact
    groups = Groups(first_id=np.arange(0, n_segments, SEGMENTS_PER_PERF), count=np.full(
        n_segments // SEGMENTS_PER_PERF, SEGMENTS_PER_PERF), perfs=np.arange(n_segments // SEGMENTS_PER_PERF),
        work_ids=np.arange(n_segments // SEGMENTS_PER_PERF) // PERFS_PER_WORK)
    for kind, config in (("flat", IndexConfig(exact_below=n_segments + 1)),
                         ("ivf", IndexConfig(exact_below=0))):
        build_start = time.perf_counter()
        index = build_index(vectors, np.arange(n_segments), config)
        build_s = time.perf_counter() - build_start
        size_gb = len(faiss.serialize_index(index)) / 2**30
        name = "IndexFlatIP (exact)" if kind == "flat" else f"IVF{nlist},Flat"
        print(f"  {name}: built in {build_s:.1f} s, {size_gb:.2f} GB; peak RSS {peak_rss_gb():.1f} GB", flush=True)
        for nprobe in (nprobes if kind == "ivf" else [0]):
            if kind == "ivf":
                index.nprobe = nprobe
            latency = time_search(lambda: index.search(one, TOP_K), repeats)
            batch = time_search(lambda: index.search(queries, TOP_K), 3, warmup=1)
            recall = recall_at_k(index.search(queries, TOP_K)[1], truth)
            ranked = time_search(lambda: search_groups(index, groups, [one], TOP_K, works=True), repeats)
            label = f"nprobe {nprobe:>4}" if kind == "ivf" else "exact     "
            print(f"  {label}: segment query p50 {latency.p50_ms:.2f} ms, p95 {latency.p95_ms:.2f} ms; batch "
                  f"{QUERIES / (batch.mean_ms / 1e3):.0f} queries/s; recall@10 {recall:.4f}; work ranking with "
                  f"exact re-rank p50 {ranked.p50_ms:.2f} ms, p95 {ranked.p95_ms:.2f} ms", flush=True)
        del index


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
    parser.add_argument("--nprobe", type=int, nargs="+", default=[16, 64], help="IVF lists searched per query")
    parser.add_argument("--pq-from", type=int, default=10_000_000, help="sizes from here use IVF-PQ")
    parser.add_argument("--refine", type=int, default=100, help="IVF-PQ hits re-ranked with float16 vectors")
    parser.add_argument("--noise", type=float, default=NOISE,
                        help="per-coordinate noise around a work centre (smaller: tighter works, easier for IVF)")
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
    for n_segments in args.index_sizes:
        measure_index(n_segments, args.nprobe, args.pq_from, args.refine, args.repeats)
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
