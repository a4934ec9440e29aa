"""Short-lived DuckDB connections with retry: DuckDB lets one process write a file at a time.

Dagster's multiprocess executor, the sensor and the CLI all touch the same file. Each unit of work opens a
connection, does one transaction and closes it; a process that finds the file locked by another waits and retries
instead of failing the run. Commands that only read (``csi identify``, ``csi eval``) open the file read-only; a
lock that outlasts the wait is a :class:`StoreLockedError` naming the process that holds it.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from csi_assets.store import schema

_LOCK_MARKERS = ("could not set lock", "conflicting lock", "lock on file", "database is locked")


class StoreError(RuntimeError):
    """The store could not be opened or a write could not be completed."""


class StoreLockedError(StoreError):
    """Another process held the store's lock for longer than the wait; ``pid`` is that process (None if unknown)."""

    def __init__(self, path: Path, waited_s: float, pid: int | None, holder: str) -> None:
        self.pid = pid
        super().__init__(f"{path}: locked by another process ({holder}) for longer than {waited_s:g} s; "
                         "try again when it has finished")


def _is_lock_conflict(err: Exception) -> bool:
    text = str(err).lower()
    return any(marker in text for marker in _LOCK_MARKERS)


def _lock_holder(err: Exception) -> tuple[int | None, str]:
    """(PID, description) of the lock holder from DuckDB's message, which reads
    ``Conflicting lock is held in /usr/bin/python3 (PID 8331)``; the description adds the holder's command line
    where ``/proc`` shows it."""
    found = re.search(r"held in (.*?) \(PID (\d+)\)", str(err))
    if found is None:
        return None, "holder unknown"
    pid = int(found.group(2))
    try:
        command = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ")
                           .split())  # one line, even for ``python -c`` with a multi-line program
    except OSError:
        command = ""
    return pid, f"PID {pid}: {(command or found.group(1))[:160]}"


class Store:
    """A DuckDB file, migrated to the current schema on first use in a process."""

    def __init__(self, path: str | Path, lock_timeout_s: float = 120.0, read_only: bool = False) -> None:
        """``read_only``: never write nor migrate (several readers may share the file); the file must exist and
        be at the current schema version."""
        self.path = Path(path)
        self.lock_timeout_s = lock_timeout_s
        self.read_only = read_only
        self._migrated = False
        self._session: duckdb.DuckDBPyConnection | None = None

    def _connect(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        delay = 0.05
        while True:
            try:
                if not self.read_only:
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                return duckdb.connect(str(self.path), read_only=self.read_only)
            except duckdb.Error as err:
                if not _is_lock_conflict(err):
                    raise StoreError(f"{self.path}: cannot open the store: {err}") from err
                if time.monotonic() > deadline:
                    raise StoreLockedError(self.path, self.lock_timeout_s, *_lock_holder(err)) from err
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 1.0)

    def _open(self) -> duckdb.DuckDBPyConnection:
        con = self._connect()
        if not self._migrated:
            if self.read_only:
                self._check_version(con)
            else:
                schema.migrate(con)
            self._migrated = True
        return con

    def _check_version(self, con: duckdb.DuckDBPyConnection) -> None:
        """A read-only store cannot be migrated: one written by older code is an error, not odd query failures."""
        found, needed = schema.stored_version(con), schema.MIGRATIONS[-1][0]
        if found < needed:
            con.close()
            raise StoreError(f"{self.path}: store schema version {found}, this code needs {needed}; any writing "
                             "command (e.g. a Dagster materialization) upgrades it")

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
            return schema.stored_version(con)
