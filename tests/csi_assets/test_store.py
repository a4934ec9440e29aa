"""The DuckDB store: migrations on empty and existing files, atomic transactions, lock retries."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
import soundfile as sf

from csi_assets.cli import main as csi
from csi_assets.store import Store, StoreError, StoreLockedError, schema
from csi_assets.store.summary import table_counts


def test_migrates_an_empty_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "csi.duckdb")
    assert store.schema_version() == schema.MIGRATIONS[-1][0]
    with store.transaction() as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"performances", "works", "variants", "features", "splits", "models", "embeddings", "evaluations",
            "ingest_batches", "rejected"} <= tables


def test_existing_file_keeps_rows_and_gets_new_migrations(tmp_path: Path) -> None:
    path = tmp_path / "csi.duckdb"
    with Store(path).transaction() as con:
        con.execute("INSERT INTO works (dataset, work, work_id) VALUES ('d', 'w', 0)")
    # Re-opening at the same version changes nothing.
    assert Store(path).schema_version() == schema.MIGRATIONS[-1][0]
    # A newer migration applies on top of the existing file, once.
    newer = (*schema.MIGRATIONS, (99, ("ALTER TABLE works ADD COLUMN note TEXT",)))
    con = duckdb.connect(str(path))
    assert schema.migrate(con, newer) == 99
    assert schema.migrate(con, newer) == 99
    assert con.execute("SELECT work, work_id, note FROM works").fetchall() == [("w", 0, None)]
    con.close()


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "csi.duckdb")
    with pytest.raises(duckdb.ConstraintException):
        with store.transaction() as con:
            con.execute("INSERT INTO works (dataset, work, work_id) VALUES ('d', 'a', 0)")
            con.execute("INSERT INTO works (dataset, work, work_id) VALUES ('d', 'b', 0)")  # duplicate work_id
    assert table_counts(store, "d")["works"] == 0


def test_failed_migration_rolls_back(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "x.duckdb"))
    broken = ((1, ("CREATE TABLE a (x INTEGER)", "THIS IS NOT SQL")),)
    with pytest.raises(duckdb.Error):
        schema.migrate(con, broken)
    assert schema.current_version(con) == 0
    assert con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'a'").fetchone()[0] == 0


def _hold_lock(path: str, ready, release) -> None:
    con = duckdb.connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS held (x INTEGER)")
    ready.set()
    release.wait(30)
    con.close()


def test_waits_for_another_process_then_writes(tmp_path: Path) -> None:
    path = tmp_path / "csi.duckdb"
    Store(path).schema_version()
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(path), ready, release))
    holder.start()
    assert ready.wait(60)
    try:
        with pytest.raises(StoreError, match="locked by another process"):
            Store(path, lock_timeout_s=0.3).schema_version()
        import threading

        threading.Timer(1.0, release.set).start()
        store = Store(path, lock_timeout_s=60)
        with store.transaction() as con:
            con.execute("INSERT INTO works (dataset, work, work_id) VALUES ('d', 'w', 0)")
        assert table_counts(store, "d")["works"] == 1
    finally:
        release.set()
        holder.join(30)


HOLD_WRITE_LOCK = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS held (x INTEGER)")
print("holding", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


@pytest.fixture
def locked_store(tmp_path: Path):
    """A migrated store file whose write lock another process holds: (path, holder's PID)."""
    path = tmp_path / "csi.duckdb"
    Store(path).schema_version()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WRITE_LOCK, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield path, holder.pid
    finally:
        holder.stdin.close()
        holder.wait()


def test_a_lock_outlasting_the_wait_names_the_holding_process(locked_store) -> None:
    path, pid = locked_store
    for read_only in (False, True):
        with pytest.raises(StoreLockedError) as caught:
            Store(path, lock_timeout_s=0.2, read_only=read_only).schema_version()
        assert caught.value.pid == pid and f"PID {pid}" in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.parametrize("command", [["identify", "QUERY"], ["eval"]])
def test_read_only_commands_on_a_locked_store_exit_2_with_one_line_naming_the_holder(
        locked_store, tmp_path: Path, capsys, command: list[str]) -> None:
    path, pid = locked_store
    query = tmp_path / "query.wav"
    sf.write(query, np.sin(np.arange(16000) * 0.1).astype(np.float32), 16000)
    argv = [str(query) if arg == "QUERY" else arg for arg in command]
    assert csi([*argv, "--store", str(path), "--dataset-dir", str(tmp_path), "--lock-wait", "0.2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"PID {pid}" in err and "locked by another process" in err


def test_read_only_store_reads_beside_another_reader_and_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "csi.duckdb"
    duckdb.connect(str(path)).close()  # a DuckDB file without our tables: too old to read
    with pytest.raises(StoreError, match="schema version 0"):
        Store(path, read_only=True).schema_version()
    assert Store(path).schema_version() == schema.MIGRATIONS[-1][0]
    other = duckdb.connect(str(path), read_only=True)
    try:
        assert Store(path, lock_timeout_s=0.2, read_only=True).schema_version() == schema.MIGRATIONS[-1][0]
    finally:
        other.close()
