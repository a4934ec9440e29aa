"""The commit ledger of sharded stages: which shard files each stage has loaded, so a commit runs once per shard.

Each stage's commit is one transaction: the shards' rows and their ledger entries go in together or not at all,
so a commit killed half-way leaves nothing of itself, and one retried after it went through finds its shards
already in the ledger and writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import duckdb

from csi_assets.store.connection import Store
from csi_assets.store.rows import upsert

Writer = Callable[[duckdb.DuckDBPyConnection, list[Any]], int]
"""Writes one shard's rows (records or column mappings, as the stage made them) in the commit's transaction."""


def forget(store: Store, stage: str, shard_ids: Sequence[str]) -> None:
    """Drop the ledger entries of shards planned again: their items are pending, so what was committed under
    those ids is gone or stale."""
    with store.transaction() as con:
        con.execute("DELETE FROM shard_commits WHERE stage = ? AND list_contains(?, shard_id)",
                    [stage, list(shard_ids)])


def committed(store: Store, stage: str) -> set[str]:
    with store.transaction() as con:
        rows = con.execute("SELECT shard_id FROM shard_commits WHERE stage = ?", [stage]).fetchall()
    return {r[0] for r in rows}


def commit(store: Store, stage: str, shards: Sequence[tuple[str, list[Any]]], write: Writer,
           finish: Callable[[duckdb.DuckDBPyConnection], Any] | None = None) -> int:
    """Load ``(shard_id, rows)`` of every shard not yet in the ledger with ``write(con, rows)`` and record them,
    then ``finish(con)`` (the stage's own bookkeeping), all in one transaction. Returns the rows written."""
    written = 0
    with store.transaction() as con:
        done = {r[0] for r in con.execute("SELECT shard_id FROM shard_commits WHERE stage = ?", [stage]).fetchall()}
        new = [(shard_id, rows) for shard_id, rows in shards if shard_id not in done]
        for _, rows in new:
            written += write(con, rows)
        upsert(con, "shard_commits", ("stage", "shard_id"),
               [{"stage": stage, "shard_id": shard_id, "n_rows": len(rows)} for shard_id, rows in new])
        if finish is not None:
            finish(con)
    return written
