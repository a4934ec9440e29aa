"""Bulk writes: a list of dicts becomes one DataFrame insert instead of thousands of single-row statements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pandas as pd


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


def fetch_dicts(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cursor = con.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


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
