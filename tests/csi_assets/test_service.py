"""``csi serve`` started for real on a free loopback port and called over HTTP: the same matches as the CLI,
documented JSON errors (bad audio, oversized upload, too long audio, missing or wrong token, unknown work, bad
parameters), and a batch ingested while the server runs is found without a restart."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from csi_assets.assets import ingestion, serving
from csi_assets.cli import main as csi
from csi_assets.ingestion import batch_id_of
from csi_assets.store import ingest as ingest_store
from csi_model.synth import generate_covers
from tests.graph_fixtures import materialize
from tests.paths import REPO
from tests.serving_fixtures import project_with_model, random_model, register_model

CSI = "import sys; from csi_assets.cli import main; sys.exit(main(sys.argv[1:]))"  # `csi` of this checkout
TOKEN = "s3cret"
MAX_UPLOAD_MB, MAX_SECONDS = 1, 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(process: subprocess.Popen, url: str) -> None:
    """Poll /health until the server answers; fail with its output if the process exits first."""
    while True:
        if process.poll() is not None:
            raise AssertionError(f"csi serve exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            if requests.get(f"{url}/health", timeout=30).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    project, model_id, hp = project_with_model(tmp_path_factory.mktemp("service"), works=4, perfs=2, seconds=4.0)
    assert materialize(project, [serving.reference_embeddings, serving.reference_index]).success
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    process = subprocess.Popen(
        [sys.executable, "-c", CSI, "serve", "--port", str(port), "--token", TOKEN,
         "--dataset-dir", str(project.dataset_dir), "--store", str(project.store_path),
         "--max-upload-mb", str(MAX_UPLOAD_MB), "--max-seconds", str(MAX_SECONDS), "--workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(process, url)
        yield project, model_id, url, hp
    finally:
        process.terminate()
        process.wait(timeout=60)


def _post(url: str, files: list[Path], token: str | None = TOKEN, **params) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    handles = [("audio", (f.name, f.read_bytes(), "audio/wav")) for f in files]
    return requests.post(f"{url}/identify", files=handles, params=params, headers=headers, timeout=300)


def test_identify_over_http_gives_the_same_json_as_the_cli(server, capsys) -> None:
    project, model_id, url, _ = server
    wavs = [project.dataset_dir / "wav" / name for name in ("w000_p0.wav", "w003_p1.wav")]
    for works in (False, True):
        response = _post(url, wavs, top=3, works=str(works).lower())
        assert response.status_code == 200, response.text
        args = ["identify", *map(str, wavs), "--top", "3", "--json", "--dataset-dir", str(project.dataset_dir),
                "--store", str(project.store_path)] + (["--works"] if works else [])
        assert csi(args) == 0
        expected = json.loads(capsys.readouterr().out)
        got = response.json()
        assert [q["query"] for q in got] == [w.name for w in wavs]
        assert [q["model"] for q in got] == [model_id] * 2
        assert [q["matches"] for q in got] == [q["matches"] for q in expected]
    assert got[0]["matches"][0]["work"] == "work_000"  # a stored recording finds its own work


def test_models_works_and_health(server) -> None:
    project, model_id, url, _ = server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    models = requests.get(f"{url}/models", headers=auth, timeout=60).json()
    assert models["model_id"] == model_id and models["references"]["performances"] == 8
    assert models["index"]["kind"] == "flat" and models["calibrated"]
    work = requests.get(f"{url}/works/work_002", headers=auth, timeout=60).json()
    assert [p["perf"] for p in work["performances"]] == ["w002_p0", "w002_p1"]
    missing = requests.get(f"{url}/works/no_such_work", headers=auth, timeout=60)
    assert missing.status_code == 404 and "no_such_work" in missing.json()["error"]
    health = requests.get(f"{url}/health", timeout=60).json()  # no token needed
    assert health["status"] == "ok" and health["model"] == model_id
    assert requests.get(f"{url}/openapi.json", timeout=60).json()["paths"]["/identify"]["post"]


def test_bad_requests_get_their_documented_status_and_message(server, tmp_path) -> None:
    project, _, url, _ = server
    wav = project.dataset_dir / "wav" / "w000_p0.wav"
    cases = []
    missing = _post(url, [wav], token=None)
    cases.append((missing, 401, "missing bearer token"))
    cases.append((_post(url, [wav], token="wrong"), 401, "wrong bearer token"))
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEnot really audio")
    cases.append((_post(url, [wav, broken]), 422, "broken.wav: not readable audio"))
    big = tmp_path / "big.wav"
    sf.write(big, np.zeros(MAX_UPLOAD_MB * (1 << 20) // 2 + 1000, dtype=np.float32), 16000, subtype="PCM_16")
    cases.append((_post(url, [big]), 413, "larger than the limit"))
    long = tmp_path / "long.wav"
    sf.write(long, np.zeros(16000 * (MAX_SECONDS + 1), dtype=np.float32), 16000, subtype="PCM_16")
    cases.append((_post(url, [long]), 422, "long.wav: 21.0 s is longer than the limit of 20 s"))
    short = tmp_path / "short.wav"
    sf.write(short, 0.1 * np.random.default_rng(0).standard_normal(800).astype(np.float32), 16000)
    cases.append((_post(url, [short]), 422, "short.wav: too short to identify"))
    cases.append((_post(url, [wav], top=0), 422, "invalid request"))
    no_field = requests.post(f"{url}/identify", files=[("other", ("x.wav", b"x"))],
                             headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    cases.append((no_field, 400, "no file in the multipart field 'audio'"))
    for response, status, message in cases:
        assert response.status_code == status, (status, response.text)
        assert message in response.json()["error"], (message, response.text)
        assert "csi-serve-" not in response.json()["error"]  # no server-side temporary path
    assert missing.headers["www-authenticate"] == "Bearer"


def test_concurrent_identifications_overlap_and_give_the_sequential_answers(server) -> None:
    """Several clients at once: the server counts identifications in progress (its own event, not a duration),
    /health answers while they run, and every answer equals the one given to the same request alone."""
    project, _, url, _ = server
    wav = project.dataset_dir / "wav"
    requests_ = [[wav / f"w00{w}_p{p}.wav" for p in (0, 1)] * 2 for w in range(4)]  # 4 files per request
    alone = [_answer(_post(url, files, top=3)) for files in requests_]
    seen_by_health: list[int] = []
    for _ in range(5):  # until the server has had two in progress at once and /health saw one running
        done = threading.Event()

        def watch(done: threading.Event = done) -> None:
            while not done.is_set():
                seen_by_health.append(requests.get(f"{url}/health", timeout=60).json()["identifying"])

        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(len(requests_)) as pool:
            together = [_answer(r) for r in pool.map(lambda files: _post(url, files, top=3), requests_)]
        done.set()
        watcher.join()
        assert together == alone
        health = requests.get(f"{url}/health", timeout=60).json()
        if health["most_identifying"] >= 2 and max(seen_by_health) >= 1:
            break
    assert health["workers"] == 2 and health["identifying"] == 0
    assert health["most_identifying"] == 2  # two at once, never more than the workers
    assert max(seen_by_health) >= 1


def test_an_identification_in_a_worker_thread_uses_the_faiss_threads_it_was_given(server) -> None:
    """OpenMP's thread count is per thread: the count shared out at start-up must also hold in the worker threads
    that identify, or every concurrent search spreads over all cores."""
    import faiss

    from csi_assets.service import Engine, ServiceConfig

    project, _, _, _ = server
    engine = Engine(ServiceConfig(project.store_path, project.dataset_dir), threads=1)
    seen: list[int] = []

    def identify() -> None:
        faiss.omp_set_num_threads(2)  # what a fresh worker thread of a 2-core machine starts with
        engine.identify([str(project.dataset_dir / "wav" / "w000_p0.wav")], 3, False, False)
        seen.append(faiss.omp_get_max_threads())

    worker = threading.Thread(target=identify)
    worker.start()
    worker.join()
    assert seen == [1]


def _answer(response: requests.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return response.json()


def test_a_batch_ingested_while_serving_is_found_without_restart(server, tmp_path) -> None:
    project, model_id, url, _ = server
    before = requests.get(f"{url}/health", timeout=60).json()
    batch = project.dataset_dir / "incoming" / "live"
    generate_covers(tmp_path / "covers", works=1, perfs=2, seed=99, seconds=4.0)
    batch.mkdir(parents=True)
    (batch / "wav").mkdir()
    lines = []
    for line in (tmp_path / "covers" / "dataset.txt").read_text().splitlines():
        record = json.loads(line)
        (tmp_path / "covers" / record["wav"]).rename(batch / "wav" / f"live_{Path(record['wav']).name}")
        lines.append(json.dumps(dict(record, perf=f"live_{record['perf']}", work="live_work",
                                     wav=f"wav/live_{Path(record['wav']).name}")))
    (batch / "dataset.txt").write_text("\n".join(lines) + "\n")
    batch_id = batch_id_of(batch)
    ingest_store.record_batch(project.store, batch_id, project.dataset, str(batch / "dataset.txt"),
                              ingest_store.RECEIVED)
    assert materialize(project, [ingestion.ingested_batch], batch=batch_id).success

    query = batch / "wav" / "live_w000_p1.wav"
    response = _post(url, [query], top=2)
    assert response.status_code == 200, response.text
    top = response.json()[0]["matches"][0]
    assert top["perf"] == "live_w000_p1" and top["work"] == "live_work" and top["distance"] < 1e-4
    after = requests.get(f"{url}/health", timeout=60).json()
    assert after["reloads"] == before["reloads"] + 1 and after["performances"] == before["performances"] + 2
    assert after["index_version"] == before["index_version"] + 1 and after["model"] == model_id


def test_a_newly_promoted_model_is_served_once_its_index_is_built(server) -> None:
    """Last in the module: it changes the served model."""
    project, old_id, url, hp = server
    new_id = register_model(project, random_model(hp, seed=5), hp, epoch=3)
    wav = project.dataset_dir / "wav" / "w001_p0.wav"
    assert _post(url, [wav]).json()[0]["model"] == old_id  # promoted, but its index is not built yet
    assert materialize(project, [serving.reference_embeddings, serving.reference_index]).success
    response = _post(url, [wav], top=1)
    assert response.status_code == 200 and response.json()[0]["model"] == new_id
    assert response.json()[0]["matches"][0]["perf"] == "w001_p0"
    models = requests.get(f"{url}/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60).json()
    assert models["model_id"] == new_id and models["epoch"] == 3


def test_registering_the_serve_command_imports_no_heavy_library() -> None:
    code = ("import argparse, sys; import csi_assets.cli.serve as serve; "
            "serve.register(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'torch', 'faiss', 'dagster', 'duckdb') "
            "if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "[]"
