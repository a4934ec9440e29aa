"""Row counts per table for one dataset: what the demo summary and health checks print."""

from __future__ import annotations

from csi_assets.store.connection import Store

_DATASET_TABLES = (
    "performances", "rejected", "works", "variants", "features", "splits", "models", "embeddings",
    "evaluations", "ingest_batches", "performance_labels",
)


def table_counts(store: Store, dataset: str) -> dict[str, int]:
    with store.transaction() as con:
        return {
            table: int(con.execute(f"SELECT count(*) FROM {table} WHERE dataset = ?", [dataset]).fetchone()[0])
            for table in _DATASET_TABLES
        }
