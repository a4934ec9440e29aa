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
        self._session: duckdb.DuckDBPyConnection | None = None

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

    def _open(self) -> duckdb.DuckDBPyConnection:
        con = self._connect()
        if not self._migrated:
            schema.migrate(con)
            self._migrated = True
        return con

    @contextmanager
    def session(self) -> Iterator[None]:
        """Keep one connection open for the transactions inside: for a short burst of many small ones (one
        ingested batch), where opening the file each time would cost more than the work. Other processes wait
        for the file meanwhile, so never hold a session across long computations."""
        if self._session is not None:
            yield
            return
        self._session = self._open()
        try:
            yield
        finally:
            self._session.close()
            self._session = None

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction, committed on success and rolled back on any error, on a short-lived connection
        (or the open session's)."""
        con = self._session or self._open()
        try:
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()
        finally:
            if con is not self._session:
                con.close()

    def schema_version(self) -> int:
        with self.transaction() as con:
            return schema.current_version(con)
