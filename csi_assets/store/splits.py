"""Work ids (permanent) and the train / val / test membership of original performances."""

from __future__ import annotations

from collections.abc import Mapping

from csi_assets.store.connection import Store
from csi_assets.store.records import SplitLeakRecord
from csi_assets.store.rows import fetch_records, upsert


def work_ids(store: Store, dataset: str) -> dict[str, int]:
    with store.transaction() as con:
        return dict(con.execute("SELECT work, work_id FROM works WHERE dataset = ?", [dataset]).fetchall())


def add_work_ids(store: Store, dataset: str, new: Mapping[str, int]) -> int:
    """Insert new works only: an existing work's id is never rewritten."""
    with store.transaction() as con:
        existing = dict(con.execute("SELECT work, work_id FROM works WHERE dataset = ?", [dataset]).fetchall())
        clash = {w: i for w, i in new.items() if w in existing and existing[w] != i}
        if clash:
            raise ValueError(f"work ids are permanent; refusing to renumber {sorted(clash)[:5]}")
        rows = [{"dataset": dataset, "work": w, "work_id": i} for w, i in new.items() if w not in existing]
        return upsert(con, "works", ("dataset", "work"), rows)


def replace_splits(
    store: Store, dataset: str, split_of: Mapping[str, str], unseen: Mapping[int, str], seed: int
) -> None:
    with store.transaction() as con:
        con.execute("DELETE FROM splits WHERE dataset = ?", [dataset])
        con.execute("DELETE FROM unseen_works WHERE dataset = ?", [dataset])
        upsert(con, "splits", ("dataset", "perf"),
               [{"dataset": dataset, "perf": p, "split": str(s), "seed": seed} for p, s in split_of.items()])
        upsert(con, "unseen_works", ("dataset", "work_id"),
               [{"dataset": dataset, "work_id": w, "split": s} for w, s in unseen.items()])


def splits(store: Store, dataset: str) -> dict[str, str]:
    with store.transaction() as con:
        return dict(con.execute("SELECT perf, split FROM splits WHERE dataset = ?", [dataset]).fetchall())


def unseen_works(store: Store, dataset: str) -> dict[int, str]:
    with store.transaction() as con:
        return dict(con.execute("SELECT work_id, split FROM unseen_works WHERE dataset = ?", [dataset]).fetchall())


def split_leaks(store: Store, dataset: str) -> list[SplitLeakRecord]:
    """Works held out as unseen that nevertheless have a performance in another split (should be empty)."""
    with store.transaction() as con:
        return fetch_records(
            con,
            """SELECT u.work_id, u.split AS unseen_in, s.perf, s.split
               FROM unseen_works u
               JOIN works w ON w.dataset = u.dataset AND w.work_id = u.work_id
               JOIN performances p ON p.dataset = u.dataset AND p.work = w.work
               JOIN splits s ON s.dataset = u.dataset AND s.perf = p.perf
               WHERE u.dataset = ? AND s.split <> u.split""",
            [dataset],
            SplitLeakRecord,
        )


def perfs_without_split(store: Store, dataset: str) -> list[str]:
    with store.transaction() as con:
        rows = con.execute(
            "SELECT p.perf FROM performances p LEFT JOIN splits s ON s.dataset = p.dataset AND s.perf = p.perf "
            "WHERE p.dataset = ? AND s.perf IS NULL AND p.batch_id IS NULL ORDER BY p.perf",
            [dataset],
        ).fetchall()
    return [r[0] for r in rows]
