"""Performances of a dataset, the lines rejected from its catalogs and the warnings about them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from csi_assets.store.connection import Store
from csi_assets.store.rows import append, fetch_dicts, upsert

PERFORMANCE_KEY = ("dataset", "perf")


@dataclass(frozen=True)
class CatalogChange:
    added: int
    changed: int
    unchanged: int
    removed: int


def performances(store: Store, dataset: str) -> list[dict[str, Any]]:
    """Every performance of ``dataset`` (main catalog and ingested batches), in perf order."""
    with store.transaction() as con:
        return fetch_dicts(con, "SELECT * FROM performances WHERE dataset = ? ORDER BY perf", [dataset])


def replace_catalog(
    store: Store,
    dataset: str,
    source: str,
    rows: Sequence[Mapping[str, Any]],
    rejected: Sequence[Mapping[str, Any]],
    warnings: Sequence[Mapping[str, Any]],
    batch_id: str | None = None,
) -> CatalogChange:
    """Make the store hold exactly ``rows`` for this catalog ``source``, in one transaction.

    Rows that did not change are not rewritten; performances this source no longer lists are removed (with
    their variants, features and splits), and its rejected lines and warnings are replaced, so re-running with
    the same file changes nothing and a changed file changes only what changed. A row's ``labels`` mapping
    (label -> value or None) replaces that performance's stored labels.
    """
    compared = ("wav", "dur_s", "work", "version", "audio_hash", "line_no")
    labels = {r["perf"]: r.get("labels") or {} for r in rows}
    rows = [{k: v for k, v in r.items() if k != "labels"} for r in rows]
    with store.transaction() as con:
        before = {
            r["perf"]: r
            for r in fetch_dicts(
                con, "SELECT * FROM performances WHERE dataset = ? AND source = ?", [dataset, source]
            )
        }
        fresh = [dict(r, dataset=dataset, source=source, batch_id=batch_id) for r in rows]
        changed = [r for r in fresh if r["perf"] in before and any(r[k] != before[r["perf"]][k] for k in compared)]
        added = [r for r in fresh if r["perf"] not in before]
        upsert(con, "performances", PERFORMANCE_KEY, added + changed)
        gone = sorted(set(before) - {r["perf"] for r in fresh})
        _forget_performances(con, dataset, gone)
        _replace_labels(con, dataset, labels)
        con.execute("DELETE FROM rejected WHERE dataset = ? AND source = ?", [dataset, source])
        con.execute("DELETE FROM catalog_warnings WHERE dataset = ? AND source = ?", [dataset, source])
        append(con, "rejected", [dict(r, dataset=dataset, source=source, batch_id=batch_id) for r in rejected])
        append(con, "catalog_warnings", [dict(w, dataset=dataset, source=source) for w in warnings])
    return CatalogChange(len(added), len(changed), len(fresh) - len(added) - len(changed), len(gone))


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


def rejected(store: Store, dataset: str) -> list[dict[str, Any]]:
    with store.transaction() as con:
        return fetch_dicts(
            con, "SELECT source, line_no, perf, reason FROM rejected WHERE dataset = ? ORDER BY source, line_no",
            [dataset],
        )


def warnings(store: Store, dataset: str) -> list[dict[str, Any]]:
    with store.transaction() as con:
        return fetch_dicts(
            con, "SELECT source, line_no, perf, message FROM catalog_warnings WHERE dataset = ? "
            "ORDER BY source, line_no", [dataset],
        )
