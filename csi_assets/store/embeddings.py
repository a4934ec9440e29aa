"""Reference embeddings (one unit vector per segment of a performance and model) and what is derived from them
for serving: the null-distance calibration and the work centroids of each model.

Vectors are written per batch of tracks (a killed run keeps every batch it finished) and read back in one query
as a single ``[segments, dim]`` float32 matrix, so loading a million segments for search costs no Python per row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from csi_assets.store.connection import Store
from csi_assets.store.records import CalibrationRecord, CentroidRecord
from csi_assets.store.rows import fetch_records, select_fields, upsert
from csi_model.calibration import Calibration


@dataclass(frozen=True)
class StoredEmbeddings:
    """All segment vectors of one (dataset, model), in (perf, segment) order."""

    perfs: np.ndarray  # [P] perf ids (object), sorted
    work_ids: np.ndarray  # [P] int64 work id of each perf
    works: np.ndarray  # [P] work names (object)
    segment_perf: np.ndarray  # [S] int64 index into perfs
    start_frames: np.ndarray  # [S] int64 raw-frame offset of each segment
    vectors: np.ndarray  # [S, D] float32 unit rows

    def __len__(self) -> int:
        return len(self.vectors)


def embedded_perfs(store: Store, dataset: str, model_id: str) -> set[str]:
    """Performances that already have embeddings for ``model_id``."""
    with store.transaction() as con:
        rows = con.execute("SELECT DISTINCT perf FROM embeddings WHERE dataset = ? AND model_id = ?",
                           [dataset, model_id]).fetchall()
    return {r[0] for r in rows}


def write_embeddings(store: Store, dataset: str, model_id: str, perfs: Sequence[str],
                     start_frames: Sequence[np.ndarray], vectors: Sequence[np.ndarray],
                     audio_hashes: Sequence[str]) -> int:
    """Store the segments of each perf (``start_frames[i]`` [S_i], ``vectors[i]`` [S_i, D], embedded from the
    feature of audio ``audio_hashes[i]``), replacing any earlier rows of those perfs for this model (a perf whose
    segment count changed keeps no stale segment)."""
    with store.transaction() as con:
        return insert_embeddings(con, dataset, model_id, perfs, start_frames, vectors, audio_hashes)


def insert_embeddings(con: duckdb.DuckDBPyConnection, dataset: str, model_id: str, perfs: Sequence[str],
                      start_frames: Sequence[np.ndarray], vectors: Sequence[np.ndarray],
                      audio_hashes: Sequence[str]) -> int:
    """:func:`write_embeddings` inside a caller's transaction (a sharded stage's commit)."""
    counts = np.array([len(v) for v in vectors], dtype=np.int64)
    frame = pd.DataFrame({
        "dataset": dataset,
        "perf": np.repeat(np.asarray(perfs, dtype=object), counts),
        "model_id": model_id,
        "segment": np.concatenate([np.arange(n) for n in counts]).astype(np.int32),
        "start_frame": np.concatenate(start_frames).astype(np.int32),
        "vector": list(np.concatenate(vectors).astype(np.float32)),
        "audio_hash": np.repeat(np.asarray(audio_hashes, dtype=object), counts),
    })
    con.execute("DELETE FROM embeddings WHERE dataset = ? AND model_id = ? AND list_contains(?, perf)",
                [dataset, model_id, list(perfs)])
    con.register("_csi_embeddings", frame)
    con.execute(f"INSERT INTO embeddings ({', '.join(frame.columns)}) SELECT * FROM _csi_embeddings")
    con.unregister("_csi_embeddings")
    return len(frame)


def forget_uncatalogued(store: Store, dataset: str) -> int:
    """Delete the embeddings (of every model) of performances the catalog no longer holds; returns rows deleted."""
    with store.transaction() as con:
        (deleted,) = con.execute(
            "DELETE FROM embeddings WHERE dataset = ? AND perf NOT IN "
            "(SELECT perf FROM performances WHERE dataset = ?)", [dataset, dataset]).fetchone()
    return int(deleted)


def load_embeddings(store: Store, dataset: str, model_id: str,
                    perfs: Sequence[str] | None = None) -> StoredEmbeddings:
    """Every segment of ``model_id`` (or of just ``perfs``: an incremental index update reads only what is new)
    with its perf's work, as arrays (empty arrays when nothing is stored)."""
    only = "" if perfs is None else "AND list_contains(?, e.perf)"
    with store.transaction() as con:
        con.execute("SET enable_progress_bar = false")
        columns = con.execute(
            f"""SELECT e.perf, w.work_id, p.work, e.start_frame, e.vector
               FROM embeddings e
               JOIN performances p ON p.dataset = e.dataset AND p.perf = e.perf
               JOIN works w ON w.dataset = p.dataset AND w.work = p.work
               WHERE e.dataset = ? AND e.model_id = ? {only}
               ORDER BY e.perf, e.segment""", [dataset, model_id] + ([] if perfs is None else [list(perfs)])
        ).fetchnumpy()
    segment_perfs = np.asarray(columns["perf"], dtype=object)
    if segment_perfs.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return StoredEmbeddings(np.empty(0, dtype=object), empty, np.empty(0, dtype=object), empty, empty,
                                np.empty((0, 0), dtype=np.float32))
    first = np.flatnonzero(np.r_[True, segment_perfs[1:] != segment_perfs[:-1]])  # first segment of each perf
    vectors = np.concatenate(columns["vector"]).astype(np.float32, copy=False)
    return StoredEmbeddings(
        perfs=segment_perfs[first],
        work_ids=np.asarray(columns["work_id"], dtype=np.int64)[first],
        works=np.asarray(columns["work"], dtype=object)[first],
        segment_perf=np.repeat(np.arange(first.size), np.diff(np.r_[first, segment_perfs.size])),
        start_frames=np.asarray(columns["start_frame"], dtype=np.int64),
        vectors=vectors.reshape(segment_perfs.size, -1),
    )


def embedded_segments(store: Store, dataset: str, model_id: str) -> dict[str, tuple[int, str | None]]:
    """For each perf embedded by ``model_id``: (segment count, hash of the audio its feature came from)."""
    with store.transaction() as con:
        rows = con.execute("SELECT perf, count(*), any_value(audio_hash) FROM embeddings "
                           "WHERE dataset = ? AND model_id = ? GROUP BY perf", [dataset, model_id]).fetchall()
    return {perf: (int(n), audio_hash) for perf, n, audio_hash in rows}


def catalogued_segments(store: Store, dataset: str, model_id: str) -> dict[str, tuple[int, str | None]]:
    """As :func:`embedded_segments`, for the performances the catalog still holds: what search may serve."""
    with store.transaction() as con:
        rows = con.execute("SELECT e.perf, count(*), any_value(e.audio_hash) FROM embeddings e "
                           "JOIN performances p ON p.dataset = e.dataset AND p.perf = e.perf "
                           "WHERE e.dataset = ? AND e.model_id = ? GROUP BY e.perf", [dataset, model_id]).fetchall()
    return {perf: (int(n), audio_hash) for perf, n, audio_hash in rows}


def save_calibration(store: Store, dataset: str, model_id: str, calibration: Calibration) -> None:
    """Store (replacing) the calibration of a model, stamped with the current time."""
    with store.transaction() as con:
        upsert(con, "calibrations", ("dataset", "model_id"),
               [{"dataset": dataset, "model_id": model_id, "record": json.dumps(calibration.to_dict())}])
        con.execute("UPDATE calibrations SET created_at = current_timestamp WHERE dataset = ? AND model_id = ?",
                    [dataset, model_id])


def calibration(store: Store, dataset: str, model_id: str) -> CalibrationRecord | None:
    """The stored calibration of a model, or None when it has none."""
    with store.transaction() as con:
        rows = fetch_records(con, "SELECT model_id, record AS calibration, created_at FROM calibrations "
                                  "WHERE dataset = ? AND model_id = ?", [dataset, model_id], CalibrationRecord)
    return rows[0] if rows else None


def replace_centroids(store: Store, dataset: str, model_id: str, work_ids: np.ndarray, centroids: np.ndarray,
                      radii: np.ndarray, coherence: np.ndarray, n_members: np.ndarray) -> int:
    """Make the model's centroids exactly these works (a work without references any more loses its row)."""
    frame = pd.DataFrame({
        "dataset": dataset, "model_id": model_id, "work_id": np.asarray(work_ids, dtype=np.int32),
        "centroid": list(np.asarray(centroids, dtype=np.float32)), "radius": np.asarray(radii, dtype=np.float64),
        "coherence": np.asarray(coherence, dtype=np.float64), "n_members": np.asarray(n_members, dtype=np.int32),
    })
    with store.transaction() as con:
        con.execute("DELETE FROM centroids WHERE dataset = ? AND model_id = ?", [dataset, model_id])
        con.register("_csi_centroids", frame)
        con.execute(f"INSERT INTO centroids ({', '.join(frame.columns)}) SELECT * FROM _csi_centroids")
        con.unregister("_csi_centroids")
    return len(frame)


def centroids(store: Store, dataset: str, model_id: str) -> list[CentroidRecord]:
    """The work centroids of a model, by work id."""
    with store.transaction() as con:
        return fetch_records(con, f"SELECT {select_fields(CentroidRecord)} FROM centroids "
                                  "WHERE dataset = ? AND model_id = ? ORDER BY work_id", [dataset, model_id],
                             CentroidRecord)
