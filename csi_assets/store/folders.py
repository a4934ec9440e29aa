"""The folders each dataset name stands for (table ``dataset_folders``), recorded at first use."""

from __future__ import annotations

from csi_assets.store.connection import Store
from csi_assets.store.records import DatasetFoldersRecord
from csi_assets.store.rows import fetch_records, select_fields


def bound_folders(store: Store, dataset: str) -> DatasetFoldersRecord | None:
    """The folders recorded for ``dataset``, or None before its first use."""
    with store.transaction() as con:
        rows = fetch_records(con, f"SELECT {select_fields(DatasetFoldersRecord)} FROM dataset_folders "
                                  "WHERE dataset = ?", [dataset], DatasetFoldersRecord)
    return rows[0] if rows else None


def every_binding(store: Store) -> list[DatasetFoldersRecord]:
    """Every dataset's recorded folders, by name."""
    with store.transaction() as con:
        return fetch_records(con, f"SELECT {select_fields(DatasetFoldersRecord)} FROM dataset_folders "
                                  "ORDER BY dataset", [], DatasetFoldersRecord)


def bind_folder(store: Store, dataset: str, folder: str) -> None:
    """Record the dataset folder of ``dataset`` unless one is recorded (the first binding stays)."""
    with store.transaction() as con:
        con.execute("INSERT INTO dataset_folders (dataset, folder) VALUES (?, ?) ON CONFLICT DO NOTHING",
                    [dataset, folder])


def record_training_folder(store: Store, dataset: str, folder: str) -> None:
    """Record ``folder`` as the training folder of ``dataset`` (already bound to its dataset folder)."""
    with store.transaction() as con:
        con.execute("UPDATE dataset_folders SET training_folder = ? WHERE dataset = ?", [folder, dataset])


def forget_folders(store: Store, dataset: str) -> bool:
    """Drop the folders recorded for ``dataset`` (its next run records them anew); False when none were."""
    with store.transaction() as con:
        found = con.execute("SELECT count(*) FROM dataset_folders WHERE dataset = ?", [dataset]).fetchone()[0]
        con.execute("DELETE FROM dataset_folders WHERE dataset = ?", [dataset])
    return bool(found)
