"""The dataset's catalog as the store holds it: every line of ``dataset.txt`` verified against its audio, perf ids
owned by one catalog file each, bad lines kept as ``rejected`` rows, without Dagster.

A performance's audio is decoded again only when its file's size or mtime changed since it was hashed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from csi_assets.errors import RunFailed
from csi_assets.layouts import DatasetLayout
from csi_assets.progress import Log, Progress
from csi_assets.shards import local_cores
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store.records import PerformanceRecord
from csi_model.audio import AudioError
from csi_model.catalog import CatalogRow, RejectedLine, parse_catalog, verify_row
from csi_model.cqt import content_hash


def _audio_identity(row: CatalogRow, known: PerformanceRecord | None) -> tuple[str, int, int, bool]:
    """(hash, size, mtime_ns, needs_decode): the stored hash is trusted while the file's size and mtime match."""
    stat = row.wav.stat()
    if known and known.wav == str(row.wav) and known.audio_size == stat.st_size \
            and known.audio_mtime_ns == stat.st_mtime_ns:
        return known.audio_hash, stat.st_size, stat.st_mtime_ns, False
    return content_hash(row.wav), stat.st_size, stat.st_mtime_ns, True


def verify_catalog_rows(
    rows: Sequence[CatalogRow], known: Mapping[str, PerformanceRecord], log: Log, label: str
) -> tuple[list[dict[str, Any]], list[RejectedLine], list[dict[str, Any]]]:
    """Decode each new or changed audio file (in parallel), keep unchanged ones as stored.
    Returns (performance rows, rejected lines, duration warnings)."""
    progress = Progress(log, label, len(rows), "files")

    def check(row: CatalogRow) -> tuple[dict[str, Any] | None, RejectedLine | None, str | None]:
        try:
            audio_hash, size, mtime, needs_decode = _audio_identity(row, known.get(row.perf))
            warning = None
            if needs_decode:
                row, warning = verify_row(row)
            else:
                row = replace(row, dur_s=known[row.perf].dur_s)
        except AudioError as err:
            return None, RejectedLine(row.line_no, row.perf, f"{err.path} (line {row.line_no}): {err.reason}"), None
        finally:
            progress.advance()
        record = {
            "perf": row.perf, "wav": str(row.wav), "dur_s": row.dur_s, "work": row.work, "version": row.version,
            "line_no": row.line_no, "audio_hash": audio_hash, "audio_size": size, "audio_mtime_ns": mtime,
            "labels": dict(row.labels),
        }
        return record, None, warning

    good, bad, warned = [], [], []
    with ThreadPoolExecutor(local_cores()) as pool:
        for (record, rejection, warning), row in zip(pool.map(check, rows), rows):
            if record:
                good.append(record)
            if rejection:
                bad.append(rejection)
            if warning:
                warned.append({"line_no": row.line_no, "perf": row.perf, "message": warning})
    return good, bad, warned


def rejection_rows(lines: Sequence[RejectedLine]) -> list[dict[str, Any]]:
    """Rejected catalog lines as the store's ``rejected`` rows."""
    return [{"line_no": r.line_no, "raw": r.text, "reason": r.reason} for r in lines]


def split_collisions(
    rows: Sequence[dict[str, Any]], stored: Mapping[str, PerformanceRecord], source: str, batch_id: str | None = None
) -> tuple[list[dict[str, Any]], list[RejectedLine], int]:
    """Sort the verified rows of catalog file ``source`` by who holds their perf id: (own rows, rejections, already).

    The main catalog (``batch_id`` None) owns the performances no batch brought; a delta batch owns those stored
    with its id. A row is its own when its perf id is new or already its own; a perf id the main catalog or another
    batch holds is never taken over: with the same audio and work it is counted as already present, otherwise the
    line is rejected naming file, line and holder. ``stored``: perf -> stored performance."""
    own, clashes, already = [], [], 0
    for row in rows:
        held = stored.get(row["perf"])
        if held is None or held.batch_id == batch_id:
            own.append(row)
        elif held.audio_hash == row["audio_hash"] and held.work == row["work"]:
            already += 1
        else:
            clashes.append(RejectedLine(row["line_no"], row["perf"], (
                f"{source} (line {row['line_no']}): perf {row['perf']!r} already exists with different content "
                f"in {held.holder} (work {held.work!r}); give this recording its own perf id")))
    return own, clashes, already


@dataclass(frozen=True)
class CatalogRun:
    """What recording the main catalog did: the stored rows, bad lines, duration warnings and the change."""

    good: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    warned: list[dict[str, Any]]
    already: int
    change: catalog_store.CatalogChange


def catalog_dataset(store: Store, dataset: DatasetLayout, log: Log) -> CatalogRun:
    """Verify ``dataset.txt`` line by line against its audio and replace the stored main catalog with its usable
    lines (bad ones land in ``rejected``, and are logged). Raises :class:`RunFailed` without a catalog file or
    without a single usable line (the store is then unchanged)."""
    if not dataset.catalog_path.exists():
        raise RunFailed(f"{dataset.catalog_path}: no catalog (dataset.txt) in the dataset folder; "
                        "set CSI_DATASET_DIR or run `csi synth` for the demo")
    parsed = parse_catalog(dataset.catalog_path, labels=dataset.hparams().labels)
    known = {r.perf: r for r in catalog_store.performances(store, dataset.name)}
    verified, bad_audio, warned = verify_catalog_rows(parsed.rows, known, log, "checking audio")
    good, clashes, already = split_collisions(verified, known, str(dataset.catalog_path))
    rejected = rejection_rows([*parsed.rejected, *bad_audio, *clashes])
    if not good:
        reasons = "; ".join(r["reason"] for r in rejected[:3]) or "it has no lines"
        raise RunFailed(f"{dataset.catalog_path}: no usable line ({reasons}); the store is unchanged")
    change = catalog_store.replace_catalog(store, dataset.name, str(dataset.catalog_path), good, rejected, warned)
    for r in rejected:
        log.warning(r["reason"])
    for w in warned:
        log.warning(w["message"])
    return CatalogRun(good, rejected, warned, already, change)
