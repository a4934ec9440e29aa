"""Bulk writes (a list of column mappings becomes one DataFrame insert instead of thousands of single-row
statements) and typed reads (each row becomes one record)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pandas as pd

from csi_assets.store.records import Record, build_records, record_fields


def upsert(
    con: duckdb.DuckDBPyConnection, table: str, key: Sequence[str], rows: Sequence[Mapping[str, Any]]
) -> int:
    """Insert the rows, replacing those whose ``key`` columns match, in one statement; returns the count."""
    if not rows:
        return 0
    frame = pd.DataFrame.from_records(list(rows))
    columns = list(frame.columns)
    updates = [c for c in columns if c not in key]
    action = (
        "DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in updates) if updates else "DO NOTHING"
    )
    con.register("_csi_rows", frame)
    con.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(columns)} FROM _csi_rows "
        f"ON CONFLICT ({', '.join(key)}) {action}"
    )
    con.unregister("_csi_rows")
    return len(frame)


def fetch_records(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any],
                  record_type: type[Record]) -> list[Record]:
    """Run a read and return one ``record_type`` per row; the query must select exactly the record's fields, in
    order (:class:`~csi_assets.store.records.RecordMismatch` names both lists otherwise)."""
    cursor = con.execute(sql, list(params))
    return build_records(record_type, [d[0] for d in cursor.description], cursor.fetchall())


def select_fields(record_type: type) -> str:
    """The SELECT list of a record type's fields, for reads of one table."""
    return ", ".join(record_fields(record_type))


def append(con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """Append rows to a table that has no key (rejections, warnings)."""
    if not rows:
        return 0
    frame = pd.DataFrame.from_records(list(rows))
    columns = ", ".join(frame.columns)
    con.register("_csi_rows", frame)
    con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM _csi_rows")
    con.unregister("_csi_rows")
    return len(frame)
