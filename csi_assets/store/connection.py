"""Short-lived DuckDB connections with retry: DuckDB lets one process write a file at a time.

Dagster's multiprocess executor, the sensor and the CLI all touch the same file. Each unit of work opens a
connection, does one transaction and closes it; a process that finds the file locked by another waits and retries
instead of failing the run.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from csi_assets.store import schema

_LOCK_MARKERS = ("could not set lock", "conflicting lock", "lock on file", "database is locked")


class StoreError(RuntimeError):
    """The store could not be opened or a write could not be completed."""


def _is_lock_conflict(err: Exception) -> bool:
    text = str(err).lower()
    return any(marker in text for marker in _LOCK_MARKERS)


class Store:
    """A DuckDB file, migrated to the current schema on first use in a process."""

    def __init__(self, path: str | Path, lock_timeout_s: float = 120.0) -> None:
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self._migrated = False

    def _connect(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                return duckdb.connect(str(self.path))
            except duckdb.Error as err:
                if not _is_lock_conflict(err) or time.monotonic() > deadline:
                    raise StoreError(f"{self.path}: cannot open the store: {err}") from err
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One connection, one transaction: committed on success, rolled back on any error."""
        con = self._connect()
        try:
            if not self._migrated:
                schema.migrate(con)
                self._migrated = True
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()
        finally:
            con.close()

    def schema_version(self) -> int:
        with self.transaction() as con:
            return schema.current_version(con)
