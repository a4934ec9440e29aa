"""Tempo variants and their CQT features: paths, frame counts, settings and source-audio hashes."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pandas as pd

from csi_assets.store.connection import Store
from csi_assets.store.records import FeatureRecord, FeatureTableRecord, VariantRecord, as_columns
from csi_assets.store.rows import fetch_records, select_fields, upsert


def replace_variants(store: Store, dataset: str, perfs: Sequence[str], rows: Sequence[VariantRecord]) -> int:
    """Make the variants of ``perfs`` exactly ``rows``: a variant that disappears (its factor was dropped) loses its
    features too. Variants of other performances (ingested batches) are left alone."""
    keep = [r.variant for r in rows]
    scope = "dataset = ? AND list_contains(?, perf) AND NOT list_contains(?, variant)"
    with store.transaction() as con:
        con.execute(
            f"DELETE FROM features WHERE dataset = ? AND variant IN (SELECT variant FROM variants WHERE {scope})",
            [dataset, dataset, list(perfs), keep],
        )
        con.execute(f"DELETE FROM variants WHERE {scope}", [dataset, list(perfs), keep])
        return upsert(con, "variants", ("dataset", "variant"), [as_columns(r, dataset=dataset) for r in rows])


def variants(store: Store, dataset: str, perfs: Sequence[str] | None = None) -> list[VariantRecord]:
    """Variants in (perf, speed) order, optionally only those of ``perfs``."""
    sql = f"SELECT {select_fields(VariantRecord)} FROM variants WHERE dataset = ?"
    params: list[Any] = [dataset]
    if perfs is not None:
        sql += " AND list_contains(?, perf)"
        params.append(list(perfs))
    with store.transaction() as con:
        return fetch_records(con, sql + " ORDER BY perf, speed", params, VariantRecord)


def features(store: Store, dataset: str, settings_hash: str) -> dict[str, FeatureRecord]:
    """Stored features of one CQT setting, by variant."""
    with store.transaction() as con:
        rows = fetch_records(con, f"SELECT {select_fields(FeatureRecord)} FROM features "
                                  "WHERE dataset = ? AND settings_hash = ?", [dataset, settings_hash], FeatureRecord)
    return {r.variant: r for r in rows}


def record_features(store: Store, dataset: str, settings_hash: str, rows: Sequence[FeatureRecord]) -> int:
    """Record computed features (each with the settings that ``settings_hash`` is the hash of); called per batch
    so a killed run keeps every batch it finished. A (re)written file loses its verified marker: it has not been
    read whole yet."""
    with store.transaction() as con:
        return upsert_features(con, dataset, settings_hash, rows)


def upsert_features(con: duckdb.DuckDBPyConnection, dataset: str, settings_hash: str,
                    rows: Sequence[FeatureRecord]) -> int:
    """:func:`record_features` inside a caller's transaction (a sharded stage's commit)."""
    return upsert(
        con,
        "features",
        ("dataset", "variant", "settings_hash"),
        [as_columns(r, dataset=dataset, settings_hash=settings_hash, settings=json.dumps(r.settings, sort_keys=True),
                    verified_size=None, verified_mtime_ns=None) for r in rows],
    )


def record_verified(store: Store, dataset: str, settings_hash: str,
                    markers: Mapping[str, tuple[str, int, int]]) -> int:
    """Mark feature files as read whole and sound: ``markers`` maps variant → (path, size in bytes, mtime in ns)
    as taken just before the read. A marker lands only on the row that still records that path, so a file moved
    or rewritten meanwhile stays unverified. Returns the rows marked."""
    if not markers:
        return 0
    frame = pd.DataFrame.from_records(
        [{"variant": v, "path": path, "size": size, "mtime_ns": mtime} for v, (path, size, mtime) in markers.items()])
    with store.transaction() as con:
        con.register("_csi_markers", frame)
        try:
            row = con.execute(
                """UPDATE features SET verified_size = m.size, verified_mtime_ns = m.mtime_ns FROM _csi_markers m
                   WHERE features.dataset = ? AND features.settings_hash = ? AND features.variant = m.variant
                     AND features.path = m.path""", [dataset, settings_hash]).fetchone()
        finally:
            con.unregister("_csi_markers")
    return int(row[0]) if row else 0


def feature_table(store: Store, dataset: str, settings_hash: str,
                  perfs: Sequence[str] | None = None) -> list[FeatureTableRecord]:
    """Every variant (of ``perfs`` only, when given) with its feature, original performance, work, work id and
    split: what training, embedding and the reference-format exports read. Variants without a feature or a work
    id are left out."""
    scope = "" if perfs is None else "AND list_contains(?, v.perf)"
    params: list[Any] = [settings_hash, dataset] + ([] if perfs is None else [list(perfs)])
    with store.transaction() as con:
        return fetch_records(
            con,
            f"""SELECT v.variant, v.perf, v.speed, v.wav AS variant_wav, v.dur_s AS variant_dur_s,
                      p.wav, p.dur_s, p.work, p.version, p.line_no, p.batch_id,
                      f.path AS feat, f.n_frames, f.audio_hash, w.work_id, s.split
               FROM variants v
               JOIN performances p ON p.dataset = v.dataset AND p.perf = v.perf
               JOIN features f ON f.dataset = v.dataset AND f.variant = v.variant AND f.settings_hash = ?
               JOIN works w ON w.dataset = p.dataset AND w.work = p.work
               LEFT JOIN splits s ON s.dataset = v.dataset AND s.perf = v.perf
               WHERE v.dataset = ? {scope}
               ORDER BY v.perf, v.speed""",
            params,
            FeatureTableRecord,
        )
