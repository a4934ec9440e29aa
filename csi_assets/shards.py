"""Work split into shards that any worker can compute, each shard's results a file on shared storage.

A stage (CQT features, reference embeddings) is planned in one place, computed shard by shard anywhere that sees
the same files (another process, another machine of a cluster), and committed to the store by one writer. A
shard's id is a hash of its inputs, so its rows file is found again by a retried worker (a finished shard is not
computed twice) and a crashed worker leaves at most a temporary file, never a half-written rows file.

Dagster-free: the assets of ``csi_assets.assets`` call these.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def local_cores() -> int:
    """Cores this process may use (its CPU affinity), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def shard_size(n_items: int, items_per_shard: int = 0) -> int:
    """Items per shard: ``items_per_shard`` when positive, else ``ceil(n_items / cores)`` (one shard per core of
    this machine: a local run gets few, large shards; a cluster sets the size so shards scale with the data)."""
    if items_per_shard < 0:
        raise ValueError(f"items_per_shard must be >= 0 (0: one shard per core), got {items_per_shard}")
    return items_per_shard or max(1, math.ceil(n_items / local_cores()))


@dataclass(frozen=True)
class Shard:
    """Part of a stage: ``items`` (JSON-able dicts) and the ``params`` every item is computed with."""

    stage: str
    items: tuple[Mapping[str, Any], ...]
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shard_id(self) -> str:
        """A hash of stage, params and items: the same inputs give the same id on every machine."""
        text = json.dumps([self.stage, self.params, list(self.items)], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


def split_shards(stage: str, items: Sequence[Mapping[str, Any]], params: Mapping[str, Any],
                 items_per_shard: int = 0) -> list[Shard]:
    """``items`` in order, cut into shards of :func:`shard_size` items (none for no items)."""
    size = shard_size(len(items), items_per_shard)
    return [Shard(stage, tuple(items[i:i + size]), dict(params)) for i in range(0, len(items), size)]


def staging_dir(store_path: str | Path) -> Path:
    """Where shard rows files wait for their commit: ``<store>.shards/`` beside the store (shared storage on a
    cluster, like the feature files)."""
    path = Path(store_path)
    return path.with_name(path.name + ".shards")


def rows_path(staging: Path, shard: Shard) -> Path:
    return staging / f"{shard.shard_id}.rows.json"


@dataclass(frozen=True)
class ShardResult:
    """What a worker hands the commit: the rows file of one shard and the items it could not compute."""

    shard_id: str
    path: str
    rows: int
    errors: tuple[str, ...]


def write_rows(path: Path, shard: Shard, rows: Sequence[Mapping[str, Any]], errors: Sequence[str]) -> ShardResult:
    """Write a shard's rows (JSON) atomically: a temporary file in the same folder, flushed, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump({"stage": shard.stage, "shard_id": shard.shard_id, "rows": list(rows), "errors": list(errors)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return ShardResult(shard.shard_id, str(path), len(rows), tuple(errors))


def read_rows(path: str | Path, shard_id: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(rows, errors) of a shard's rows file; ValueError naming the file when it is not that shard's."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable shard rows file: {err}") from err
    if record.get("shard_id") != shard_id:
        raise ValueError(f"{path}: rows of shard {record.get('shard_id')!r}, expected {shard_id!r}")
    return record["rows"], record["errors"]


def finished(path: Path, shard: Shard, files_of: Callable[[Mapping[str, Any]], Sequence[str | Path]]
             ) -> ShardResult | None:
    """The result of a shard computed earlier (a retried or re-run worker), when its rows file and every file its
    rows name (``files_of(row)`` → paths) are still there; None when it must be computed."""
    if not path.exists():
        return None
    try:
        rows, errors = read_rows(path, shard.shard_id)
    except ValueError:
        return None
    if not all(Path(p).exists() for row in rows for p in files_of(row)):
        return None
    return ShardResult(shard.shard_id, str(path), len(rows), tuple(errors))
