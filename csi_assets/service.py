"""Identification over HTTP: the promoted model and its reference index loaded once, answering many clients.

``csi serve`` runs :func:`create_app` on uvicorn. Each request first compares two small pointer files (the
dataset's ``promoted.json`` and the served model's ``current.json``, see ``csi_assets.reference_index``) with
what is loaded -- one ``stat`` each. When an ingested batch or a newly promoted model has been published, that
request loads the new index (and model, if it changed) and swaps it in atomically; requests already running
finish on the old one, and requests arriving meanwhile keep being answered by the old one, so nothing is
dropped or answered from a half-loaded state. Identification (decode, CQT, forward pass, index search) runs in
worker threads, at most ``workers`` requests at once (default: one per core), so the event loop keeps accepting
connections and answering ``/health`` meanwhile; torch and FAISS get ``cores // workers`` threads each, so
concurrent requests do not oversubscribe the cores. The model, the CQT layer and the index are only read while
serving (the model stays in eval mode, the index is never changed in place: a reload reads a new one), so
concurrent requests give the answers they would give one at a time.

Errors are JSON ``{"error": message}``: 400 malformed request, 401 missing or wrong bearer token, 404 unknown
work, 411 no Content-Length, 413 upload larger than the limit, 422 unreadable, too short or too long audio and
invalid parameters, 503 no servable model or index, 500 any other fault.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import soundfile as sf
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from csi_assets.identify import Identifier, IdentifyError
from csi_assets.layouts import DatasetLayout
from csi_assets.reference_index import POINTER, model_dir, promoted_pointer, stamp
from csi_assets.store import Store, StoreError
from csi_assets.store import models as model_store
from csi_assets.store.records import ModelRecord

log = logging.getLogger(__name__)
UPLOAD_CHUNK = 1 << 20


@dataclass(frozen=True)
class ServiceConfig:
    store_path: Path
    dataset_dir: Path
    token: str | None = None  # bearer token required by every endpoint but /health and the docs
    max_upload_bytes: int = 50 << 20  # the whole multipart body
    max_seconds: float = 900.0  # per uploaded recording
    max_files: int = 16  # per request
    device: str | None = None
    workers: int = 0  # identifications running at once; 0 = one per core

    def worker_count(self) -> int:
        return self.workers or available_cores()

    @property
    def dataset(self) -> str:
        """The served dataset's name: its folder's, as named (``DatasetLayout.at``: a symlink is not followed)."""
        return DatasetLayout.at(self.dataset_dir).name


class ServiceError(Exception):
    """A request that cannot be answered: its HTTP status and the message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Loaded:
    """What one version of the service answers with; replaced as a whole, never changed."""

    identifier: Identifier
    model_row: ModelRecord | None
    stamps: tuple[Any, Any]
    loaded_at: float


class Engine:
    """The live :class:`Loaded`, reloaded when the published index or promoted model changes."""

    def __init__(self, config: ServiceConfig, threads: int) -> None:
        self.config = config
        self.threads = threads  # FAISS (OpenMP) threads per identification
        self.reloads = 0
        self.identifying = 0  # identifications in progress now
        self.most_identifying = 0  # the most ever in progress at once since start
        self._reload_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._loaded: Loaded | None = None
        self._error: str | None = None
        self.current()

    def current(self) -> Loaded:
        """The up-to-date state; if another request is already reloading, the previous one."""
        loaded = self._loaded
        if loaded is not None and loaded.stamps == self._stamps(loaded.identifier.model.model_id):
            return loaded
        if not self._reload_lock.acquire(blocking=loaded is None):
            return loaded  # type: ignore[return-value]
        try:
            if self._loaded is loaded:
                self._load(loaded)
        finally:
            self._reload_lock.release()
        if self._loaded is None:
            raise ServiceError(503, self._error or "no model loaded")
        return self._loaded

    def identify(self, paths: list[str], top: int, works: bool, calibrated: bool) -> tuple[list[Any], Loaded]:
        """Answer with the state current when the request starts, even if a reload swaps it meanwhile."""
        import faiss

        loaded = self.current()
        faiss.omp_set_num_threads(self.threads)  # OpenMP's setting is per thread: set it in the worker thread
        with self._counted():
            return loaded.identifier.identify(paths, top, works, calibrated), loaded

    @contextmanager
    def _counted(self) -> Iterator[None]:
        with self._count_lock:
            self.identifying += 1
            self.most_identifying = max(self.most_identifying, self.identifying)
        try:
            yield
        finally:
            with self._count_lock:
                self.identifying -= 1

    def _stamps(self, model_id: str) -> tuple[Any, Any]:
        store, dataset = self.config.store_path, self.config.dataset
        return stamp(promoted_pointer(store, dataset)), stamp(model_dir(store, dataset, model_id) / POINTER)

    def _load(self, previous: Loaded | None) -> None:
        """Load the published promoted model's index (reusing the loaded model when it is still that one); on
        failure keep serving ``previous`` and do not retry until the pointer files change again."""
        store = Store(self.config.store_path)
        dataset = self.config.dataset
        model_id = _published_model(self.config.store_path, dataset)
        if model_id is None:  # no index published yet: the promoted model's is built on load
            row = model_store.promoted_model(store, dataset)
            model_id = row.model_id if row else None
        try:
            if model_id is None:
                raise IdentifyError(f"no promoted model for dataset {dataset!r}: materialize trained_model first")
            same = previous is not None and previous.identifier.model.model_id == model_id
            identifier = Identifier(self.config.store_path, self.config.dataset_dir, model_id, self.config.device,
                                    model=previous.identifier.model if same else None)
        except (IdentifyError, StoreError) as err:  # a locked or outdated store too: keep the previous version
            self._error = f"cannot serve: {err}"
            log.error(self._error)
            if previous is not None:  # keep answering with what works; retry once something is published
                self._loaded = Loaded(previous.identifier, previous.model_row,
                                      self._stamps(previous.identifier.model.model_id), previous.loaded_at)
            return
        row = model_store.get_model(store, model_id)
        self._loaded = Loaded(identifier, row, self._stamps(model_id), time.time())
        self.reloads += previous is not None
        manifest = identifier.references.manifest
        log.info(f"serving model {model_id}: index v{manifest.version} ({manifest.kind}, {manifest.rows} "
                 f"segments of {manifest.performances} performances)")


def _published_model(store_path: Path, dataset: str) -> str | None:
    """The model whose index was last published as the promoted one (None before the first build)."""
    try:
        return json.loads(promoted_pointer(store_path, dataset).read_text(encoding="utf-8"))["model_id"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def share_cores(workers: int) -> int:
    """Give torch and FAISS ``cores // workers`` threads each (at least 1), so ``workers`` identifications at
    once use the cores without oversubscribing them; returns the thread count. torch's setting holds for every
    thread; FAISS's (OpenMP's) only for the calling one, so :meth:`Engine.identify` sets it again in its own."""
    import faiss
    import torch

    threads = max(1, available_cores() // workers)
    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    return threads


def create_app(config: ServiceConfig) -> FastAPI:
    """The ASGI app; loads the model and index now, so a bad configuration fails at start-up, not per request."""
    import anyio

    workers = config.worker_count()
    threads = share_cores(workers)
    engine = Engine(config, threads)
    limiter = anyio.CapacityLimiter(workers)  # identifications at once; /health etc. use the default pool
    app = FastAPI(title="Cover-song identification", version="1",
                  description="Identify recordings against the reference performances of one dataset "
                              f"({config.dataset}) with its promoted CoverHunter model.")
    app.state.engine = engine
    _add_error_handlers(app)

    @app.middleware("http")
    async def bearer_token(request: Request, call_next: Any) -> Any:
        open_paths = ("/health", "/docs", "/openapi.json", "/docs/oauth2-redirect")
        if config.token and request.url.path not in open_paths:
            header = request.headers.get("authorization", "")
            if not header.lower().startswith("bearer "):
                return _error(401, "missing bearer token: send 'Authorization: Bearer <token>'",
                              {"WWW-Authenticate": "Bearer"})
            if not hmac.compare_digest(header[7:].strip().encode(), config.token.encode()):
                return _error(401, "wrong bearer token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return await call_next(request)

    @app.get("/health", summary="Liveness and what is loaded")
    def health() -> dict[str, Any]:
        loaded = engine.current()
        manifest = loaded.identifier.references.manifest
        return {"status": "ok", "model": manifest.model_id, "index_version": manifest.version,
                "index_kind": manifest.kind, "segments": manifest.rows, "performances": manifest.performances,
                "loaded_at": loaded.loaded_at, "reloads": engine.reloads, "workers": workers,
                "threads_per_worker": threads, "identifying": engine.identifying,
                "most_identifying": engine.most_identifying}

    @app.get("/models", summary="The promoted model, its metrics and the reference set")
    def models() -> dict[str, Any]:
        loaded = engine.current()
        row, manifest = loaded.model_row, loaded.identifier.references.manifest
        return {"model_id": manifest.model_id, "dataset": manifest.dataset, "epoch": row and row.epoch,
                "created_at": str(row and row.created_at), "metrics": row.metrics if row else {},
                "references": {"performances": manifest.performances, "segments": manifest.rows},
                "index": {"kind": manifest.kind, "version": manifest.version, "config": manifest.config},
                "calibrated": loaded.identifier.calibration is not None}

    @app.get("/works/{work}", summary="The indexed performances of a work")
    def work(work: str) -> dict[str, Any]:
        references = engine.current().identifier.references
        performances = references.work_performances(work)
        if not performances:
            raise ServiceError(404, f"no work {work!r} among the references")
        return {"work": work, "work_id": references.work_id(work), "performances": performances}

    @app.post("/identify", summary="Identify uploaded recordings (multipart field 'audio', one or more files)",
              openapi_extra=_UPLOAD_SCHEMA)
    async def identify(request: Request, top: int = Query(10, ge=1, le=1000, description="matches per query"),
                       works: bool = Query(False, description="rank works instead of performances"),
                       calibrated: bool = Query(False, description="require a calibration (z, p)")) -> Any:
        uploads = await _read_uploads(request, config)
        with tempfile.TemporaryDirectory(prefix="csi-serve-") as folder:
            paths = [await _save(upload, Path(folder) / f"{n}{Path(upload.filename or '').suffix}")
                     for n, upload in enumerate(uploads)]
            names = [upload.filename or f"upload_{n}" for n, upload in enumerate(uploads)]
            for path, name in zip(paths, names):
                _check_audio(path, name, config.max_seconds)
            try:
                results, _ = await anyio.to_thread.run_sync(
                    functools.partial(engine.identify, [str(p) for p in paths], top, works, calibrated),
                    limiter=limiter)
            except IdentifyError as err:
                message = str(err)
                for path, name in zip(paths, names):
                    message = message.replace(str(path), name)
                raise ServiceError(422, message) from err
        return [dict(r.to_dict(), query=name) for r, name in zip(results, names)]

    return app


_UPLOAD_SCHEMA = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["audio"],
    "properties": {"audio": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "audio files (WAV, FLAC, OGG, MP3; any rate and channel count)"}}}}}}}


async def _read_uploads(request: Request, config: ServiceConfig) -> list[UploadFile]:
    """The files of the ``audio`` field, after refusing a body over the limit before reading it."""
    length = request.headers.get("content-length")
    if length is None:
        raise ServiceError(411, "a Content-Length header is required")
    if not length.isdigit() or int(length) > config.max_upload_bytes:
        raise ServiceError(413, f"upload of {length} bytes is larger than the limit of {config.max_upload_bytes} "
                                "bytes")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ServiceError(400, "send the recordings as multipart/form-data in the field 'audio'")
    try:
        form = await request.form(max_files=config.max_files)
    except HTTPException as err:
        raise ServiceError(400, f"malformed multipart body: {err.detail}") from err
    uploads = [u for u in form.getlist("audio") if isinstance(u, UploadFile)]
    if not uploads:
        raise ServiceError(400, "no file in the multipart field 'audio'")
    return uploads


async def _save(upload: UploadFile, path: Path) -> Path:
    with path.open("wb") as out:
        while chunk := await upload.read(UPLOAD_CHUNK):
            out.write(chunk)
    return path


def _check_audio(path: Path, name: str, max_seconds: float) -> None:
    """Refuse what libsndfile cannot read and recordings longer than the limit, naming the upload."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ServiceError(422, f"{name}: not readable audio ({str(err).replace(str(path), name)})") from err
    if info.duration > max_seconds:
        raise ServiceError(422, f"{name}: {info.duration:.1f} s is longer than the limit of {max_seconds:.0f} s")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, err: ServiceError) -> JSONResponse:
        return _error(err.status, err.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return _error(422, f"invalid request: {details}")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def fault(_: Request, err: Exception) -> JSONResponse:
        log.exception("request failed")
        return _error(500, f"internal error: {type(err).__name__}: {err}")
