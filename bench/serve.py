"""Load test of ``csi serve`` on loopback: N concurrent clients post recordings for T seconds (or until a fixed
request count), reporting p50/p95 latency, throughput and errors.

Without ``--url`` it builds a small synthetic project in a temporary folder (synthetic covers, data assets, a
tiny untrained model promoted, reference embeddings and index), starts ``csi serve`` on a free loopback port and
stops it afterwards; each request uploads one synthetic recording of ``--seconds`` s. With ``--url`` it loads an
already running server (e.g. ``make serve``) with ``--audio`` files.

    .venv/bin/python bench/serve.py [--clients 4] [--duration 30] [--requests 200] [--seconds 30] [--workers 0]
                                    [--url http://127.0.0.1:8000 --audio a.wav b.wav] [--token T]

The demo server runs ``--workers`` identifications at once (0: one per core); the report ends with what its
``/health`` says: workers, threads per worker, and the most identifications it had in progress at once.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]


def load(url: str, files: list[Path], clients: int, duration: float, max_requests: int,
         token: str | None) -> dict[str, float]:
    """Run ``clients`` threads posting ``files`` round-robin until ``duration`` s or ``max_requests`` in all."""
    payloads = [(f.name, f.read_bytes()) for f in files]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    errors: list[str] = []
    issued = iter(range(max_requests))
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def client() -> None:
        session = requests.Session()
        while time.monotonic() < deadline:
            with lock:
                n = next(issued, None)
            if n is None:
                return
            name, data = payloads[n % len(payloads)]
            start = time.perf_counter()
            try:
                response = session.post(f"{url}/identify", files=[("audio", (name, data))], headers=headers,
                                        params={"top": 10, "works": "true"}, timeout=300)
                ok = response.status_code == 200
                detail = f"{response.status_code} {response.text[:100]}"
            except requests.RequestException as err:
                ok, detail = False, str(err)
            with lock:
                (latencies if ok else errors).append(time.perf_counter() - start if ok else detail)

    begin = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - begin
    p50, p95 = (np.percentile(latencies, [50, 95]) * 1e3) if latencies else (float("nan"),) * 2
    return {"requests": len(latencies) + len(errors), "ok": len(latencies), "errors": len(errors),
            "p50_ms": float(p50), "p95_ms": float(p95), "per_s": len(latencies) / wall, "wall_s": wall,
            "first_error": errors[0] if errors else ""}


def in_process_ms(project, query: Path, repeats: int = 10) -> tuple[float, float]:
    """p50 of the same identification without HTTP (``Identifier.identify``), and of its embedding alone
    (decode + CQT + forward pass): the baseline the HTTP latency is compared with."""
    from csi_assets.identify import Identifier

    identifier = Identifier(project.store_path, project.dataset_dir)
    whole, embed = [], []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        identifier.embed_queries([str(query)])
        middle = time.perf_counter()
        identifier.identify([query], top=10, works=True)
        whole.append(time.perf_counter() - middle)
        embed.append(middle - start)
    return float(np.median(whole[1:]) * 1e3), float(np.median(embed[1:]) * 1e3)


def demo_server(folder: Path, seconds: float, workers: int) -> tuple[subprocess.Popen, str, list[Path], object]:
    """A tiny synthetic project served on a free port; returns the process, its URL, query files, project."""
    import logging

    sys.path.insert(0, str(ROOT))
    from csi_assets.layouts import DatasetLayout
    from csi_assets.reference_index import sync_index
    from csi_assets.references import embed_references
    from csi_assets.shards import staging_dir
    from csi_model.synth import generate_covers
    from tests.serving_fixtures import project_with_model

    project, _, _ = project_with_model(folder, works=6, perfs=3, seconds=seconds)
    store, dataset, log = project.store, DatasetLayout.at(project.dataset_dir), logging.getLogger("bench.serve")
    run = embed_references(store, dataset, staging_dir(store.path), log)
    sync_index(store, store.path, dataset.name, run.model_id, log=log.info)
    generate_covers(folder / "queries", works=6, perfs=4, seed=0, seconds=seconds)
    queries = sorted((folder / "queries" / "wav").glob("*_p3.wav"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; from csi_assets.cli import main; sys.exit(main(sys.argv[1:]))",
         "serve", "--port", str(port), "--dataset-dir", str(project.dataset_dir), "--store",
         str(project.store_path), "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"csi serve exited with status {process.returncode}")
        try:
            requests.get(f"{url}/health", timeout=30).raise_for_status()
            return process, url, queries, project
        except requests.ConnectionError:
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (upper bound)")
    parser.add_argument("--requests", type=int, default=200, help="requests in all (upper bound)")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the synthetic recordings")
    parser.add_argument("--url", default=None, help="an already running server (default: start a demo one)")
    parser.add_argument("--audio", type=Path, nargs="*", default=[], help="query files for --url")
    parser.add_argument("--token", default=None)
    parser.add_argument("--workers", type=int, default=0,
                        help="identifications the demo server runs at once (0: one per core)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="csi-bench-serve-") as folder:
        process = project = None
        if args.url:
            url, files = args.url.rstrip("/"), args.audio
            if not files:
                parser.error("--url needs --audio files to send")
        else:
            process, url, files, project = demo_server(Path(folder), args.seconds, args.workers)
        try:
            single = load(url, files[:1], 1, args.duration, 10, args.token)
            print(f"one client, 10 requests of one {args.seconds:.0f} s recording: p50 {single['p50_ms']:.0f} ms, "
                  f"p95 {single['p95_ms']:.0f} ms, errors {single['errors']}")
            if project is not None:
                whole, embed = in_process_ms(project, files[0])
                print(f"the same without HTTP, in this process: identify p50 {whole:.0f} ms, of which decode + CQT + "
                      f"forward pass {embed:.0f} ms; HTTP adds {single['p50_ms'] - whole:.0f} ms at p50")
            figures = load(url, files, args.clients, args.duration, args.requests, args.token)
            print(f"{args.clients} clients, {figures['requests']} requests in {figures['wall_s']:.1f} s: "
                  f"p50 {figures['p50_ms']:.0f} ms, p95 {figures['p95_ms']:.0f} ms, {figures['per_s']:.2f} "
                  f"requests/s, {figures['errors']} errors {figures['first_error']}")
            health = requests.get(f"{url}/health", timeout=60).json()
            print(f"server: {health.get('workers')} workers × {health.get('threads_per_worker')} threads, at most "
                  f"{health.get('most_identifying')} identifications in progress at once")
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=60)


if __name__ == "__main__":
    main()
