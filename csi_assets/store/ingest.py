"""Delta batches: what arrived, what was ingested, what failed and why."""

from __future__ import annotations

from csi_assets.store.connection import Store
from csi_assets.store.records import IngestBatchRecord, PerformanceRecord
from csi_assets.store.rows import fetch_records, select_fields

RECEIVED, INGESTED, FAILED, REJECTED = "received", "ingested", "failed", "rejected"


def record_batch(store: Store, batch_id: str, dataset: str, source: str, status: str, n_good: int = 0,
                 n_bad: int = 0, reason: str | None = None) -> None:
    """Insert or update a batch's state (the received time is kept from the first record)."""
    with store.transaction() as con:
        con.execute(
            """INSERT INTO ingest_batches (batch_id, dataset, source, status, n_good, n_bad, reason)
               VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (batch_id) DO UPDATE SET status = excluded.status, n_good = excluded.n_good,
                   n_bad = excluded.n_bad, reason = excluded.reason, source = excluded.source,
                   updated_at = now()""",
            [batch_id, dataset, source, status, n_good, n_bad, reason],
        )


def batch(store: Store, batch_id: str) -> IngestBatchRecord | None:
    """The state of one batch, or None when it was never recorded."""
    with store.transaction() as con:
        rows = fetch_records(con, f"SELECT {select_fields(IngestBatchRecord)} FROM ingest_batches "
                                  "WHERE batch_id = ?", [batch_id], IngestBatchRecord)
    return rows[0] if rows else None


def batches(store: Store, dataset: str) -> list[IngestBatchRecord]:
    """Every batch of ``dataset``, oldest first."""
    with store.transaction() as con:
        return fetch_records(con, f"SELECT {select_fields(IngestBatchRecord)} FROM ingest_batches "
                                  "WHERE dataset = ? ORDER BY received_at, batch_id", [dataset], IngestBatchRecord)


def known_perfs(store: Store, dataset: str, perfs: list[str]) -> dict[str, PerformanceRecord]:
    """The stored rows of just these perf ids: a batch's collision check must not read the whole catalog."""
    with store.transaction() as con:
        rows = fetch_records(con, f"SELECT {select_fields(PerformanceRecord)} FROM performances "
                                  "WHERE dataset = ? AND list_contains(?, perf)", [dataset, perfs], PerformanceRecord)
    return {r.perf: r for r in rows}
