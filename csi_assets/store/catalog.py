"""Performances of a dataset, the lines rejected from its catalogs and the warnings about them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from csi_assets.store.connection import Store
from csi_assets.store.records import CatalogWarningRecord, PerformanceRecord, RejectedLineRecord
from csi_assets.store.rows import append, fetch_records, select_fields, upsert

PERFORMANCE_KEY = ("dataset", "perf")


@dataclass(frozen=True)
class CatalogChange:
    added: int
    changed: int
    unchanged: int
    removed: int


def performances(store: Store, dataset: str) -> list[PerformanceRecord]:
    """Every performance of ``dataset`` (main catalog and ingested batches), in perf order."""
    with store.transaction() as con:
        return fetch_records(con, f"SELECT {select_fields(PerformanceRecord)} FROM performances WHERE dataset = ? "
                                  "ORDER BY perf", [dataset], PerformanceRecord)


def replace_catalog(
    store: Store,
    dataset: str,
    source: str,
    rows: Sequence[Mapping[str, Any]],
    rejected: Sequence[Mapping[str, Any]],
    warnings: Sequence[Mapping[str, Any]],
) -> CatalogChange:
    """Make the store hold exactly ``rows`` as the dataset's main catalog (read from file ``source``), in one
    transaction. ``rows`` are verified catalog lines (the columns of :class:`PerformanceRecord` that a line sets:
    perf, wav, dur_s, work, version, line_no, audio_hash, audio_size, audio_mtime_ns, plus ``labels``);
    ``rejected`` (line_no, raw, reason) and ``warnings`` (line_no, perf, message) are about lines of ``source``.

    The main catalog owns every performance no delta batch brought, and nothing else (whatever file recorded it:
    a moved dataset folder or an imported ``full.txt`` is still the same catalog): rows that did not change are not
    rewritten, owned performances it no longer lists are removed (with their variants, features and splits), and
    the rejected lines and warnings of ``source`` are replaced, so re-running with the same file changes nothing.
    A row's ``labels`` mapping (label -> value or None) replaces that performance's stored labels. Raises
    :class:`CatalogConflict` (changing nothing) when a row's perf id is held by a batch.
    """
    with store.transaction() as con:
        before = _owned(con, dataset, "batch_id IS NULL", [])
        added, changed = _write_rows(con, dataset, source, None, rows, before)
        gone = sorted(set(before) - {r["perf"] for r in rows})
        _forget_performances(con, dataset, gone)
        _replace_notes(con, dataset, source, None, rejected, warnings)
    return CatalogChange(added, changed, len(rows) - added - changed, len(gone))


def add_batch_rows(
    store: Store,
    dataset: str,
    source: str,
    batch_id: str,
    rows: Sequence[Mapping[str, Any]],
    rejected: Sequence[Mapping[str, Any]],
    warnings: Sequence[Mapping[str, Any]],
) -> CatalogChange:
    """Add or update the performances of delta batch ``batch_id`` (catalog file ``source``), in one transaction.

    A batch only adds: its rows are new perf ids or ones it stored itself, and a stored performance it no longer
    lists (a re-run after its folder changed) is kept, never removed. Rejected lines and warnings of ``source``
    are replaced. Raises :class:`CatalogConflict` (changing nothing) when a perf id is held by another owner.
    """
    with store.transaction() as con:
        before = _owned(con, dataset, "batch_id = ?", [batch_id])
        added, changed = _write_rows(con, dataset, source, batch_id, rows, before)
        _replace_notes(con, dataset, source, batch_id, rejected, warnings)
    return CatalogChange(added, changed, len(rows) - added - changed, 0)


class CatalogConflict(ValueError):
    """A catalog tried to write a perf id that another catalog or batch holds."""


def _owned(con: Any, dataset: str, owner: str, params: list[Any]) -> dict[str, PerformanceRecord]:
    rows = fetch_records(con, f"SELECT {select_fields(PerformanceRecord)} FROM performances "
                              f"WHERE dataset = ? AND {owner}", [dataset, *params], PerformanceRecord)
    return {r.perf: r for r in rows}


def _write_rows(con: Any, dataset: str, source: str, batch_id: str | None, rows: Sequence[Mapping[str, Any]],
                before: Mapping[str, PerformanceRecord]) -> tuple[int, int]:
    """Insert new and rewrite changed rows of one owner, and replace their labels; returns (added, changed)."""
    compared = ("wav", "dur_s", "work", "version", "audio_hash", "line_no")
    labels = {r["perf"]: r.get("labels") or {} for r in rows}
    fresh = [{k: v for k, v in r.items() if k != "labels"} | {"dataset": dataset, "source": source,
                                                              "batch_id": batch_id} for r in rows]
    added = [r for r in fresh if r["perf"] not in before]
    held = fetch_records(con, f"SELECT {select_fields(PerformanceRecord)} FROM performances WHERE dataset = ? "
                              "AND list_contains(?, perf)", [dataset, [r["perf"] for r in added]], PerformanceRecord)
    if held:
        owners = ", ".join(f"{h.perf!r} (held by {h.holder})" for h in held[:5])
        raise CatalogConflict(f"{source}: perf ids already held by another catalog or batch: {owners}")
    changed = [r for r in fresh if r["perf"] in before and any(r[k] != getattr(before[r["perf"]], k) for k in compared)]
    upsert(con, "performances", PERFORMANCE_KEY, added + changed)
    _replace_labels(con, dataset, labels)
    return len(added), len(changed)


def _replace_notes(con: Any, dataset: str, source: str, batch_id: str | None,
                   rejected: Sequence[Mapping[str, Any]], warnings: Sequence[Mapping[str, Any]]) -> None:
    con.execute("DELETE FROM rejected WHERE dataset = ? AND source = ?", [dataset, source])
    con.execute("DELETE FROM catalog_warnings WHERE dataset = ? AND source = ?", [dataset, source])
    append(con, "rejected", [dict(r, dataset=dataset, source=source, batch_id=batch_id) for r in rejected])
    append(con, "catalog_warnings", [dict(w, dataset=dataset, source=source) for w in warnings])


def _replace_labels(con: Any, dataset: str, labels: Mapping[str, Mapping[str, str | None]]) -> None:
    """Every label row of these performances becomes exactly what ``labels`` (perf -> label -> value) says."""
    con.execute("DELETE FROM performance_labels WHERE dataset = ? AND list_contains(?, perf)",
                [dataset, list(labels)])
    append(con, "performance_labels", [{"dataset": dataset, "perf": perf, "label": label, "value": value}
                                       for perf, values in labels.items() for label, value in values.items()])


def performance_labels(store: Store, dataset: str, label: str) -> dict[str, str | None]:
    """perf -> value (None: missing) of one label, for every catalogued performance that has a row for it."""
    with store.transaction() as con:
        rows = con.execute("SELECT l.perf, l.value FROM performance_labels l JOIN performances p "
                           "ON p.dataset = l.dataset AND p.perf = l.perf WHERE l.dataset = ? AND l.label = ? "
                           "ORDER BY l.perf", [dataset, label]).fetchall()
    return dict(rows)


def label_counts(store: Store, dataset: str) -> dict[str, dict[str, int]]:
    """label -> {value: performances}, missing values under the key ``None`` -- what a catalog run reports."""
    with store.transaction() as con:
        rows = con.execute("SELECT label, value, count(*) FROM performance_labels WHERE dataset = ? "
                           "GROUP BY label, value ORDER BY label, value NULLS FIRST", [dataset]).fetchall()
    counts: dict[str, dict[str, int]] = {}
    for label, value, n in rows:
        counts.setdefault(label, {})[value] = int(n)
    return counts


def _forget_performances(con: Any, dataset: str, perfs: Sequence[str]) -> None:
    if not perfs:
        return
    for table in ("performances", "splits", "performance_labels"):
        con.execute(f"DELETE FROM {table} WHERE dataset = ? AND list_contains(?, perf)", [dataset, list(perfs)])
    con.execute(
        "DELETE FROM features WHERE dataset = ? AND variant IN "
        "(SELECT variant FROM variants WHERE dataset = ? AND list_contains(?, perf))",
        [dataset, dataset, list(perfs)],
    )
    con.execute("DELETE FROM variants WHERE dataset = ? AND list_contains(?, perf)", [dataset, list(perfs)])


def rejected(store: Store, dataset: str) -> list[RejectedLineRecord]:
    """The rejected lines of every catalog of ``dataset``, by file and line."""
    with store.transaction() as con:
        return fetch_records(con, f"SELECT {select_fields(RejectedLineRecord)} FROM rejected WHERE dataset = ? "
                                  "ORDER BY source, line_no", [dataset], RejectedLineRecord)


def warnings(store: Store, dataset: str) -> list[CatalogWarningRecord]:
    """The warnings about stored lines of every catalog of ``dataset``, by file and line."""
    with store.transaction() as con:
        return fetch_records(con, f"SELECT {select_fields(CatalogWarningRecord)} FROM catalog_warnings "
                                  "WHERE dataset = ? ORDER BY source, line_no", [dataset], CatalogWarningRecord)
