"""CQT features of recordings: which are missing or unusable, computing them in batches, and the sharded form
of that stage (plan → shards computed anywhere → one commit), without Dagster.

A feature file is ``<features_dir>/<settings hash>/<file name of the variant id>.cqt.npy`` (float16 ``[T, n_bins]``);
the store records its path, frame count and the hash of the audio it was computed from.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from csi_assets.errors import RunFailed, require_upstream
from csi_assets.layouts import DatasetLayout
from csi_assets.progress import Log, Progress
from csi_assets.shards import Shard, ShardResult, finished, local_cores, read_rows, rows_path, split_shards, write_rows
from csi_assets.store import Store
from csi_assets.store import features as feature_store
from csi_assets.store import shards as shard_store
from csi_assets.store.records import FeatureRecord, VariantRecord, as_columns
from csi_model.audio import AudioError, load_audio
from csi_model.cqt import CqtSettings, compute_cqt, save_feature
from csi_model.dataset import FeatureFileError, FeatureItem, check_feature_file
from csi_model.devices import pick_device
from csi_model.identifiers import id_path

CQT_FILES_PER_BATCH = 16
"""Files per CQT call and per store transaction: a killed run loses at most one batch of work."""


def feature_path(features_dir: Path, settings: CqtSettings, variant: str) -> Path:
    """``<features_dir>/<settings hash>/<file name of the variant id>.cqt.npy`` (``csi_model.identifiers``)."""
    return id_path(features_dir / settings.settings_hash(), variant, ".cqt.npy")


def pending_features(
    variants: Sequence[VariantRecord], stored: Mapping[str, FeatureRecord], bad: Mapping[str, str] | None = None
) -> list[VariantRecord]:
    """Variants whose feature is missing, was made from other audio, whose file has gone, or is in ``bad``."""
    return [
        v for v in variants
        if not (
            (known := stored.get(v.variant))
            and known.audio_hash == v.source_hash
            and Path(known.path).exists()
            and v.variant not in (bad or {})
        )
    ]


Verified = Callable[[dict[str, tuple[str, int, int]]], None]
VERIFIED_PER_RECORD = 2000  # markers recorded per store write during a scan: a killed scan keeps most of its work


def feature_problems(stored: Mapping[str, FeatureRecord], n_bins: int,
                     verified: Set[str] = frozenset(), record_verified: Verified | None = None) -> dict[str, str]:
    """Why each unusable stored feature file cannot be used, by variant: unreadable, truncated, not
    ``[n_frames recorded, n_bins]``, NaN/inf, or one file recorded for several variants (their ids were once
    turned into the same path). Missing files are left to :func:`pending_features`. Reads a file whole only when
    it has no verified marker (``verified_size``/``verified_mtime_ns`` of its row) matching its size and mtime now,
    and is not in ``verified`` (read whole earlier in the same step); shared files are found for all.
    ``record_verified`` receives, in batches, variant → (path, size, mtime_ns) of the files read whole and sound,
    stamped before the read, so a file changed during or after the read is read again next time."""
    owners: dict[Path, list[str]] = {}
    for variant, row in stored.items():
        owners.setdefault(Path(row.path).resolve(), []).append(variant)
    problems: dict[str, str] = {}
    sound: dict[str, tuple[str, int, int]] = {}
    for variant, row in stored.items():
        path = Path(row.path)
        sharing = owners[path.resolve()]
        if len(sharing) > 1:
            problems[variant] = f"{path}: one file recorded for {len(sharing)} variants ({', '.join(sharing[:3])})"
        elif variant not in verified and (stamp := _file_stamp(path)) is not None and not _marked(row, stamp):
            try:
                check_feature_file(FeatureItem(variant, 0, path, int(row.n_frames)), n_bins)
            except FeatureFileError as err:
                problems[variant] = str(err)
            else:
                sound[variant] = (row.path, *stamp)
        if record_verified is not None and len(sound) >= VERIFIED_PER_RECORD:
            record_verified(sound)
            sound = {}
    if record_verified is not None and sound:
        record_verified(sound)
    return problems


def _file_stamp(path: Path) -> tuple[int, int] | None:
    """(size in bytes, mtime in ns) of a file, None when it does not exist."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_size, info.st_mtime_ns


def _marked(row: FeatureRecord, stamp: tuple[int, int]) -> bool:
    """The file was verified whole at exactly this size and mtime (None until it was, or once it is rewritten)."""
    return (row.verified_size, row.verified_mtime_ns) == stamp


def marker_recorder(db: Store, dataset: str, settings: CqtSettings) -> Verified:
    """The ``record_verified`` of :func:`feature_problems` that writes the markers to the store."""
    def record(markers: dict[str, tuple[str, int, int]]) -> None:
        feature_store.record_verified(db, dataset, settings.settings_hash(), markers)
    return record


ABANDONED_AFTER_S = 3600.0
"""A temporary file older than this was left by a killed writer; a younger one may be a live write (ingestion
writes into the same folder while a data run plans)."""


def remove_abandoned_temporaries(folder: Path, older_than_s: float = ABANDONED_AFTER_S) -> int:
    """Delete the temporary files of atomic writes (``.<name>.<random>.tmp*``) in ``folder`` that no writer has
    touched for ``older_than_s`` seconds; returns how many."""
    removed = 0
    now = time.time()
    for temporary in folder.glob(".*.tmp*"):
        try:
            if now - temporary.stat().st_mtime > older_than_s:
                temporary.unlink()
                removed += 1
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            continue
    return removed


def extract_features(
    variants: Sequence[VariantRecord], settings: CqtSettings, features_dir: Path, device: Any,
    record: Callable[[list[FeatureRecord]], Any], log: Any, label: str,
) -> tuple[int, list[str]]:
    """Decode (in parallel processes), CQT (batched across files) and save the variants; ``record(rows)`` is called
    after each batch is on disk, so a killed run keeps every batch it finished. Returns (computed, errors)."""
    progress = Progress(log, label, len(variants), "files")
    errors: list[str] = []
    done = 0
    for start, decoded in zip(range(0, len(variants), CQT_FILES_PER_BATCH),
                              _decoded_batches([v.wav for v in variants])):
        batch, signals = [], []
        for v, (signal, error) in zip(variants[start:start + CQT_FILES_PER_BATCH], decoded):
            if error is not None:
                errors.append(f"{v.variant}: {error}")
                continue
            signals.append(signal)
            batch.append(v)
        rows = []
        for v, feature in zip(batch, compute_cqt(signals, settings, device)):
            path = feature_path(features_dir, settings, v.variant)
            save_feature(path, feature)
            rows.append(FeatureRecord(variant=v.variant, path=str(path), n_frames=int(feature.shape[0]),
                                      n_bins=int(feature.shape[1]), audio_hash=v.source_hash,
                                      settings=asdict(settings)))
        record(rows)
        done += len(rows)
        progress.advance(len(decoded))
    return done, errors


def _decoded_batches(wavs: Sequence[str]) -> Iterator[list[tuple[np.ndarray | None, str | None]]]:
    """``(signal, error)`` per file in batches of CQT_FILES_PER_BATCH, in order. With more than one batch, one
    decode process per core works on the next batch while the caller computes the current batch's CQT, so at most
    two batches of signals are in memory whatever the collection's size (in a daemon process, one file at a
    time in the calling process)."""
    batches = [wavs[i:i + CQT_FILES_PER_BATCH] for i in range(0, len(wavs), CQT_FILES_PER_BATCH)]
    # A daemon process (a Dask worker) may not start processes of its own: there, shards are the parallelism.
    workers = 1 if multiprocessing.current_process().daemon else local_cores()
    if workers == 1 or len(batches) <= 1:
        yield from ([_decode_or_error(w) for w in batch] for batch in batches)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = [pool.submit(_decode_or_error, w) for w in batches[0]]
        for following in [*batches[1:], []]:
            ahead = [pool.submit(_decode_or_error, w) for w in following]
            yield [future.result() for future in pending]
            pending = ahead


def _decode_or_error(wav: str) -> tuple[np.ndarray | None, str | None]:
    try:
        return load_audio(wav), None
    except AudioError as err:
        return None, str(err)


# ---------------------------------------------------------------------------------------------------------------
# the sharded stage: plan, compute a shard anywhere, commit once


def feature_stage(dataset: str, settings: CqtSettings) -> str:
    """The ledger name of one dataset's features at one CQT setting."""
    return f"cqt_features/{dataset}/{settings.settings_hash()}"


@dataclass(frozen=True)
class FeaturePlan:
    """What the planning step found, for the commit: the stage, how many variants, the bad files it discarded,
    and the stored paths it read whole (``verified``: not read again by the commit's check unless rewritten)."""

    stage: str
    variants: int
    pending: tuple[str, ...]
    problems: Mapping[str, str]
    verified_paths: Mapping[str, str]


def plan_feature_shards(stage: str, pending: Sequence[VariantRecord], settings: CqtSettings,
                        features_dir: Path, device: str | None, items_per_shard: int = 0) -> list[Shard]:
    """Shards of the pending variants (each a :class:`VariantRecord`'s fields, JSON): see ``shards.shard_size``."""
    items = [as_columns(v) for v in pending]
    params = {"settings": asdict(settings), "features_dir": str(features_dir), "device": device}
    return split_shards(stage, items, params, items_per_shard)


def compute_feature_shard(shard: Shard, staging: Path, log: Any) -> ShardResult:
    """Compute a shard's features into their ``.npy`` files and its rows into ``<staging>/<shard id>.rows.json``;
    a shard whose rows file and feature files exist already (a retried worker) is not computed again."""
    path = rows_path(staging, shard)
    done = finished(path, shard, lambda row: [row["path"]])
    if done is not None:
        log.info(f"shard {shard.shard_id}: found computed ({done.rows} features)")
        return done
    settings = CqtSettings(**shard.params["settings"])
    rows: list[FeatureRecord] = []
    _, errors = extract_features([VariantRecord(**item) for item in shard.items], settings,
                                 Path(shard.params["features_dir"]), pick_device(shard.params["device"]), rows.extend,
                                 log, f"CQT shard {shard.shard_id}")
    return write_rows(path, shard, [as_columns(r) for r in rows], errors)


def commit_feature_shards(store: Store, dataset: str, settings: CqtSettings, stage: str,
                          results: Sequence[ShardResult]) -> tuple[int, list[str]]:
    """Record every shard's features in one transaction (shards already committed are skipped), then delete the
    rows files. Returns (rows written, the errors the shards reported)."""
    loaded, errors = [], []
    for result in results:
        rows, shard_errors = read_rows(result.path, result.shard_id)
        loaded.append((result.shard_id, [FeatureRecord(**row) for row in rows]))
        errors.extend(shard_errors)
    written = shard_store.commit(store, stage, loaded, lambda con, rows: feature_store.upsert_features(
        con, dataset, settings.settings_hash(), rows))
    for result in results:
        Path(result.path).unlink(missing_ok=True)
    return written, errors


def discard_bad_features(stored: Mapping[str, FeatureRecord], problems: Mapping[str, str], folder: Path,
                         log: Log) -> None:
    """Name every bad feature file and delete those this project wrote (inside ``folder``), so they are computed
    again; bad files imported from the reference tool cannot be recomputed here without mixing two feature
    extractors, so they stop the run (:class:`RunFailed`)."""
    imported = [v for v in problems if "origin" in stored[v].settings]
    if imported:
        raise RunFailed(f"{len(imported)} imported feature file(s) are unusable; import the reference "
                        "folder again:\n" + "\n".join(problems[v] for v in imported[:20]))
    for variant, reason in problems.items():
        log.warning(f"{reason}; computing it again")
        path = Path(stored[variant].path)
        if path.resolve().parent == folder.resolve():
            path.unlink(missing_ok=True)


def plan_features(store: Store, dataset: DatasetLayout, items_per_shard: int, log: Log
                  ) -> tuple[FeaturePlan, list[Shard]]:
    """Read every stored feature file once, discard bad ones, and cut the recordings without a usable feature
    into shards (forgetting earlier runs' ledger rows of those shards)."""
    settings = dataset.cqt_settings()
    folder = dataset.features_dir / settings.settings_hash()
    remove_abandoned_temporaries(folder)  # left by killed writers; live writes are left alone
    variants = feature_store.variants(store, dataset.name)
    require_upstream(variants, "speed_variants", dataset.name, "recordings to compute features of")
    stored = feature_store.features(store, dataset.name, settings.settings_hash())
    problems = feature_problems(stored, settings.n_bins, record_verified=marker_recorder(store, dataset.name, settings))
    discard_bad_features(stored, problems, folder, log)
    pending = pending_features(variants, stored, problems)
    stage = feature_stage(dataset.name, settings)
    shards = plan_feature_shards(stage, pending, settings, dataset.features_dir, dataset.hparams().device,
                                 items_per_shard)
    shard_store.forget(store, stage, [s.shard_id for s in shards])
    log.info(f"{len(pending)} of {len(variants)} recordings to compute, in {len(shards)} shard(s)")
    return FeaturePlan(stage, len(variants), tuple(v.variant for v in pending), problems,
                       {v: r.path for v, r in stored.items()}), shards


@dataclass(frozen=True)
class FeaturesRun:
    """What :func:`commit_features` recorded: every stored feature, those this step read whole, how many were
    computed now."""

    stored: Mapping[str, FeatureRecord]
    verified: Set[str]
    computed: int


def commit_features(store: Store, dataset: DatasetLayout, plan: FeaturePlan, results: Sequence[ShardResult]
                    ) -> FeaturesRun:
    """Record every shard's features in one store transaction; raises :class:`RunFailed` when any variant is left
    without a feature (naming the shards' errors)."""
    settings = dataset.cqt_settings()
    computed, errors = commit_feature_shards(store, dataset.name, settings, plan.stage, results)
    stored = feature_store.features(store, dataset.name, settings.settings_hash())
    rewritten = set(plan.pending) | set(plan.problems)
    verified = {v for v, r in stored.items()  # read whole by the plan and not rewritten since: not read again
                if v not in rewritten and plan.verified_paths.get(v) == r.path}
    missing = pending_features(feature_store.variants(store, dataset.name), stored)
    if errors or missing:
        raise RunFailed(f"{len(missing)} of {plan.variants} variants have no feature:\n" + "\n".join(errors[:20]))
    return FeaturesRun(stored, verified, computed)


def compute_features(store: Store, dataset: DatasetLayout, staging: Path, log: Log) -> FeaturesRun:
    """The whole stage in this process: plan, compute every shard (rows files in ``staging``), commit."""
    plan, shards = plan_features(store, dataset, 0, log)
    return commit_features(store, dataset, plan, [compute_feature_shard(s, staging, log) for s in shards])
