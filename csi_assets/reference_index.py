"""The reference index on disk: a FAISS index of one model's reference segments, beside the store, kept in step
with the stored embeddings without re-reading them all.

Layout, for store ``data/csi.duckdb``::

    data/csi.duckdb.index/<dataset>/<model_id>/current.json     which version is live (+ kind, rows, config)
    data/csi.duckdb.index/<dataset>/<model_id>/v000003.faiss     the FAISS index (ids: see below)
    data/csi.duckdb.index/<dataset>/<model_id>/v000003.npz       perf, work, id range, audio hash per performance
    data/csi.duckdb.index/<dataset>/promoted.json                the model the promoted index serves + version

A version's two files are written under new names and ``current.json`` is replaced last (atomic rename), so a
reader sees the old version or the new one, never a mix; the previous version is kept for readers that opened
the old pointer a moment ago. Each performance owns a contiguous range of int64 ids, assigned from a counter
that never goes back: adding a batch appends ranges, removing or re-embedding a performance drops its range, and
nothing else moves. A sync under a file lock diffs the index against the store's (performance, segment count,
audio hash) list and reads only the changed performances' vectors; a new model gets its own folder, built from
scratch. Reading the index is a file read: identification never loads every vector out of DuckDB.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from csi_assets.store import Store
from csi_assets.store import embeddings as embedding_store
from csi_assets.store import models as model_store
from csi_model import segment_index
from csi_model.atomic import atomic_path, write_text_atomic
from csi_model.segment_index import Groups, IndexConfig

POINTER, PROMOTED = "current.json", "promoted.json"
Segments = dict[str, tuple[int, str | None]]
"""perf → (segment count, audio hash it was embedded from), as ``embedding_store.catalogued_segments`` returns."""


class IndexUnavailable(RuntimeError):
    """No index for this model, or one that no longer matches the store's embeddings."""


@dataclass(frozen=True)
class Manifest:
    """What ``current.json`` says: the live version of one model's index."""

    dataset: str
    model_id: str
    version: int
    kind: str  # "flat" (exact) or "ivf"
    rows: int  # segments in the index
    performances: int
    next_id: int  # the next unused segment id
    config: dict[str, Any]  # the IndexConfig it was built with
    built_at: float  # unix time of this version

    @property
    def stem(self) -> str:
        return f"v{self.version:06d}"


@dataclass(frozen=True)
class Hit:
    perf: str  # with works: the work's nearest performance
    work: str
    distance: float


@dataclass(frozen=True)
class SyncReport:
    manifest: Manifest
    action: str  # "built", "updated" or "unchanged"
    added: int  # performances added (or re-added with new audio)
    removed: int  # performances removed
    seconds: float


def index_root(store_path: str | os.PathLike[str]) -> Path:
    path = Path(store_path).resolve()
    return path.with_name(path.name + ".index")


def model_dir(store_path: str | os.PathLike[str], dataset: str, model_id: str) -> Path:
    return index_root(store_path) / dataset / model_id


def promoted_pointer(store_path: str | os.PathLike[str], dataset: str) -> Path:
    return index_root(store_path) / dataset / PROMOTED


def stamp(path: Path) -> tuple[int, int] | None:
    """A cheap change marker of a pointer file (inode, mtime): every write replaces the file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns


class ReferenceIndex:
    """One version of a model's index, loaded: FAISS index + who owns which id range."""

    def __init__(self, folder: Path, manifest: Manifest, index: Any, groups: Groups, works: np.ndarray,
                 audio_hashes: np.ndarray) -> None:
        self.folder, self.manifest, self.index, self.groups = folder, manifest, index, groups
        self.works = works  # [P] work names
        self.audio_hashes = audio_hashes  # [P] ("" when unknown)

    @classmethod
    def read(cls, store_path: str | os.PathLike[str], dataset: str, model_id: str) -> ReferenceIndex | None:
        """The live version of the model's index, or None when none was built."""
        folder = model_dir(store_path, dataset, model_id)
        try:
            manifest = Manifest(**json.loads((folder / POINTER).read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        meta = np.load(folder / f"{manifest.stem}.npz", allow_pickle=False)
        groups = Groups(first_id=meta["first_id"], count=meta["count"], perfs=meta["perfs"],
                        work_ids=meta["work_ids"])
        index = segment_index.read_index(folder / f"{manifest.stem}.faiss", manifest.config.get("nprobe"))
        if index.ntotal != manifest.rows:
            raise IndexUnavailable(f"{folder}: index holds {index.ntotal} rows, its manifest says {manifest.rows}")
        return cls(folder, manifest, index, groups, meta["works"], meta["audio_hashes"])

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def segments(self) -> Segments:
        """perf → (segment count, audio hash): compares with ``embedding_store.catalogued_segments``."""
        return {str(p): (int(n), str(h) or None) for p, n, h in
                zip(self.groups.perfs, self.groups.count, self.audio_hashes)}

    def differences(self, stored: Segments) -> tuple[list[str], list[str]]:
        """(performances to drop, performances to (re-)add) to make the index hold exactly ``stored``."""
        mine = self.segments()
        drop = sorted(p for p, value in mine.items() if stored.get(p) != value)
        add = sorted(p for p, value in stored.items() if mine.get(p) != value)
        return drop, add

    def search(self, tracks: list[np.ndarray], top: int, works: bool) -> list[list[Hit]]:
        """Nearest ``top`` performances (or works) of each query track [S_i, D] (see ``csi_model.segment_index``)."""
        found = segment_index.search_groups(self.index, self.groups, tracks, top, works,
                                            int(self.manifest.config.get("candidates", 64)))
        return [[Hit(str(self.groups.perfs[h.perf]), str(self.works[h.perf]), h.distance) for h in hits]
                for hits in found]

    def work_performances(self, work: str) -> list[dict[str, Any]]:
        """The indexed performances of ``work`` (empty when the work is unknown)."""
        rows = np.flatnonzero(self.works == work)
        return [{"perf": str(self.groups.perfs[r]), "segments": int(self.groups.count[r])} for r in rows]

    def work_id(self, work: str) -> int | None:
        rows = np.flatnonzero(self.works == work)
        return int(self.groups.work_ids[rows[0]]) if rows.size else None


def current_index(store: Store, store_path: str | os.PathLike[str], dataset: str, model_id: str,
                  log: Callable[[str], None] = lambda _: None) -> ReferenceIndex:
    """The model's index, checked against the store's segment list (no vectors read); a missing or out-of-date
    index is brought up to date first, and ``log`` says so and which asset keeps it current."""
    index = ReferenceIndex.read(store_path, dataset, model_id)
    stored = embedding_store.catalogued_segments(store, dataset, model_id)
    if not stored:
        raise IndexUnavailable(f"no reference embeddings of model {model_id} for dataset {dataset!r}: "
                               "materialize reference_embeddings first")
    drop, add = index.differences(stored) if index else ([], list(stored))
    if index is None or drop or add:
        state = "missing" if index is None else f"out of date ({len(add)} performances to add, {len(drop)} to drop)"
        log(f"the reference index of model {model_id} is {state}: updating it now under {index_root(store_path)} "
            "(materialize the reference_index asset to keep it current)")
        sync_index(store, store_path, dataset, model_id, log=log)
        index = ReferenceIndex.read(store_path, dataset, model_id)
    return index


def sync_index(store: Store, store_path: str | os.PathLike[str], dataset: str, model_id: str,
               config: IndexConfig | None = None, log: Callable[[str], None] = lambda _: None) -> SyncReport:
    """Make the model's index hold exactly its catalogued stored embeddings; rebuild when there is none, when
    ``config`` differs from the one it was built with, or when the size crosses ``exact_below``; else update it
    in place (remove dropped/changed performances, add new ones, reading only their vectors)."""
    start = time.monotonic()
    folder = model_dir(store_path, dataset, model_id)
    with _locked(folder):
        current = ReferenceIndex.read(store_path, dataset, model_id)
        stored = embedding_store.catalogued_segments(store, dataset, model_id)
        if not stored:
            raise IndexUnavailable(f"no reference embeddings of model {model_id} for dataset {dataset!r}: "
                                   "materialize reference_embeddings first")
        config = config or (IndexConfig(**current.manifest.config) if current else IndexConfig())
        rows = sum(n for n, _ in stored.values())
        if current is None or config.to_dict() != current.manifest.config or current.manifest.kind != \
                config.kind_for(rows):
            manifest = _build(store, stored, folder, dataset, model_id, config, current, log)
            report = SyncReport(manifest, "built", manifest.performances, 0, 0.0)
        else:
            drop, add = current.differences(stored)
            if not drop and not add:
                report = SyncReport(current.manifest, "unchanged", 0, 0, 0.0)
            else:
                manifest = _update(store, stored, current, drop, add, log)
                report = SyncReport(manifest, "updated", len(add), len(drop), 0.0)
        _point_promoted(store, store_path, dataset, report.manifest)
    return replace(report, seconds=time.monotonic() - start)


def _build(store: Store, stored: Segments, folder: Path, dataset: str, model_id: str, config: IndexConfig,
           current: ReferenceIndex | None, log: Callable[[str], None]) -> Manifest:
    refs = embedding_store.load_embeddings(store, dataset, model_id)
    log(f"building the {config.kind_for(len(refs))} reference index of {model_id}: {len(refs)} segments of "
        f"{len(refs.perfs)} performances")
    index = segment_index.build_index(refs.vectors, np.arange(len(refs), dtype=np.int64), config)
    counts = np.bincount(refs.segment_perf, minlength=len(refs.perfs)).astype(np.int64)
    groups = Groups(first_id=np.cumsum(counts) - counts, count=counts, perfs=refs.perfs.astype(str),
                    work_ids=refs.work_ids)
    hashes = _audio_hashes(stored, groups.perfs)
    manifest = Manifest(dataset, model_id, (current.manifest.version + 1) if current else 1,
                        segment_index.index_kind(index), len(refs), len(counts), len(refs), config.to_dict(),
                        time.time())
    _write(folder, manifest, index, groups, refs.works.astype(str), hashes)
    return manifest


def _update(store: Store, stored: Segments, current: ReferenceIndex, drop: list[str], add: list[str],
            log: Callable[[str], None]) -> Manifest:
    old = current.groups
    keep = ~np.isin(old.perfs, drop)
    removed = segment_index.remove_ids(current.index, old.ids_of(np.flatnonzero(~keep)))
    new = embedding_store.load_embeddings(store, current.manifest.dataset, current.manifest.model_id, add)
    counts = np.bincount(new.segment_perf, minlength=len(new.perfs)).astype(np.int64)
    first = current.manifest.next_id + np.cumsum(counts) - counts
    segment_index.add_vectors(current.index, new.vectors, current.manifest.next_id + np.arange(len(new)))
    log(f"reference index of {current.manifest.model_id}: {removed} segments removed, {len(new)} added")
    groups = Groups(first_id=np.r_[old.first_id[keep], first], count=np.r_[old.count[keep], counts],
                    perfs=np.r_[old.perfs[keep], new.perfs.astype(str)],
                    work_ids=np.r_[old.work_ids[keep], new.work_ids])
    works = np.r_[current.works[keep], new.works.astype(str)]
    hashes = np.r_[current.audio_hashes[keep],
                   _audio_hashes(stored, new.perfs)]
    m = current.manifest
    manifest = Manifest(m.dataset, m.model_id, m.version + 1, m.kind, int(current.index.ntotal), len(groups.perfs),
                        m.next_id + len(new), m.config, time.time())
    _write(current.folder, manifest, current.index, groups, works, hashes)
    return manifest


def _audio_hashes(stored: Segments, perfs: np.ndarray) -> np.ndarray:
    return np.array([stored[str(p)][1] or "" for p in perfs], dtype=str)


def _write(folder: Path, manifest: Manifest, index: Any, groups: Groups, works: np.ndarray,
           hashes: np.ndarray) -> None:
    """Both files of a version under new names, then the pointer; versions older than the previous go."""
    with atomic_path(folder / f"{manifest.stem}.faiss") as tmp:
        segment_index.write_index(index, tmp)
    with atomic_path(folder / f"{manifest.stem}.npz") as tmp:
        np.savez(tmp, first_id=groups.first_id, count=groups.count, perfs=groups.perfs, work_ids=groups.work_ids,
                 works=works, audio_hashes=hashes)
    write_text_atomic(folder / POINTER, json.dumps(asdict(manifest), indent=1))
    for old in folder.glob("v*.*"):
        if old.stem < f"v{manifest.version - 1:06d}":
            old.unlink(missing_ok=True)


def _point_promoted(store: Store, store_path: str | os.PathLike[str], dataset: str, manifest: Manifest) -> None:
    """Record the promoted model's live version in ``promoted.json`` (a running service watches that file)."""
    promoted = model_store.promoted_model(store, dataset)
    if promoted is None or promoted.model_id != manifest.model_id:
        return
    pointer = promoted_pointer(store_path, dataset)
    record = {"model_id": manifest.model_id, "version": manifest.version}
    try:
        if json.loads(pointer.read_text(encoding="utf-8")) == record:
            return
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    write_text_atomic(pointer, json.dumps(record))


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One writer per model index at a time (an ingestion run and the reference_index asset may overlap)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
