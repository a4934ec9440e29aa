"""Delta batches of new performances, without Dagster: what an entry of the dataset's ``incoming/`` is, its
content-hash id, quarantine of unreadable ones, and ingesting one batch (catalog with the main catalog's
validation, new work ids, features without tempo augmentation, embeddings with the promoted model).

Every stage works on the batch's whole row set and does only what is missing, so a re-run after a kill at any
point ends as an uninterrupted run would. Nothing already stored is recomputed or changed.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csi_assets.catalog import rejection_rows, split_collisions, verify_catalog_rows
from csi_assets.errors import RunFailed
from csi_assets.features import extract_features, pending_features
from csi_assets.layouts import DatasetLayout
from csi_assets.model_loading import LoadedModel, ModelLoadError, dataset_input, load_model
from csi_assets.progress import Log
from csi_assets.reference_index import ReferenceIndex, sync_index
from csi_assets.references import (
    commit_reference_shards,
    embed_missing,
    embed_shard,
    pending_references,
    reference_rows,
    reference_shards,
    reference_stage,
    warn_too_short,
)
from csi_assets.shards import Shard, ShardResult
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import features as feature_store
from csi_assets.store import ingest as ingest_store
from csi_assets.store import models as model_store
from csi_assets.store import shards as shard_store
from csi_assets.store import splits as split_store
from csi_assets.store.records import FeatureRecord, IngestBatchRecord, VariantRecord
from csi_model.catalog import parse_catalog
from csi_model.cqt import settings_for
from csi_model.devices import pick_device
from csi_model.splits import assign_work_ids


class BatchUnreadable(ValueError):
    """The batch as a whole cannot be read: it is quarantined, not ingested."""


def batch_catalog(entry: Path) -> Path:
    """The catalog file of a batch entry: ``<folder>/dataset.txt`` or the ``*.txt`` file itself."""
    if entry.is_dir():
        catalog = entry / "dataset.txt"
        if not catalog.is_file():
            raise BatchUnreadable(f"{entry}: a batch folder needs a dataset.txt")
        return catalog
    if entry.suffix != ".txt":
        raise BatchUnreadable(f"{entry}: a batch is a folder with dataset.txt, or a .txt catalog")
    return entry


def _batch_files(entry: Path) -> list[tuple[str, Path]]:
    """(name within the batch, path) of every regular file of a batch entry, in name order."""
    if not entry.is_dir():
        return [(entry.name, entry)]
    return sorted((str(p.relative_to(entry)), p) for p in entry.rglob("*") if p.is_file())


def batch_id_of(entry: Path) -> str:
    """A content hash of everything in the batch (names and bytes), stable across re-drops."""
    digest = hashlib.sha256()
    for name, path in _batch_files(entry):
        digest.update(name.encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def entry_signature(entry: Path) -> str:
    """Name, size and modification time of every file of a batch entry: read without opening any file, and changed
    by any change to the batch's content (a folder's own mtime is not: files added in a sub-folder or appended
    to leave it as it was). Raises OSError when the entry goes away meanwhile."""
    digest = hashlib.sha256()
    for name, path in _batch_files(entry):
        info = path.stat()
        digest.update(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def entry_problem(entry: Path) -> str | None:
    """Why an entry of ``incoming/`` cannot be a batch at all (a dangling or looping symlink, a pipe, a device), or
    None for a regular file or a folder. Such entries are skipped, never moved: they may be someone's mount point
    or transfer in progress."""
    try:
        mode = entry.stat().st_mode
    except OSError as err:
        return f"cannot be read ({err.strerror or err}): a dangling or looping symlink?"
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    return "is neither a regular file nor a folder"


def check_readable(entry: Path) -> Path:
    """Raise :class:`BatchUnreadable` unless the batch's catalog is text with at least one usable line."""
    catalog = batch_catalog(entry)
    try:
        parsed = parse_catalog(catalog)
    except FileNotFoundError:
        raise  # gone while being read: not a verdict on the batch
    except (UnicodeDecodeError, OSError) as err:
        raise BatchUnreadable(f"{catalog}: cannot be read as a UTF-8 catalog: {err}") from err
    if not parsed.rows:
        reasons = "; ".join(r.reason for r in parsed.rejected[:3]) or "it has no lines"
        raise BatchUnreadable(f"{catalog}: no usable line ({reasons})")
    return catalog


def pending_entries(incoming: Path) -> list[Path]:
    """Batch entries in name order; hidden names and ``*.partial`` are still being copied in."""
    if not incoming.is_dir():
        return []
    return sorted(p for p in incoming.iterdir() if not p.name.startswith(".") and not p.name.endswith(".partial"))


def quarantine(entry: Path, rejected_dir: Path, reason: str) -> Path:
    """Move an unreadable batch to ``rejected/`` with ``<name>.error.txt`` beside it."""
    rejected_dir.mkdir(parents=True, exist_ok=True)
    target = rejected_dir / entry.name
    suffix = 1
    while target.exists():
        target = rejected_dir / f"{entry.name}.{suffix}"
        suffix += 1
    entry.rename(target)
    (rejected_dir / f"{target.name}.error.txt").write_text(reason + "\n", encoding="utf-8")
    return target


def ingest_batch(db: Store, dataset: DatasetLayout, batch_id: str, catalog: Path, log: Log) -> dict[str, Any]:
    """Catalog, identify, extract and embed one batch in this process; returns counts. Raises on a batch that
    cannot finish. (The ``ingested_batch`` asset does the same with the embedding fanned out in shards.)

    Every stage works on the batch's whole row set (new perf ids and those it stored in an earlier, interrupted
    run) and does only what is missing, so a re-run after a kill at any point ends as an uninterrupted run would."""
    counts = catalog_and_featurise(db, dataset, batch_id, catalog, log)
    model = batch_model(db, dataset, log)
    if model is None:
        return counts | {"embedded": 0}
    references = reference_rows(db, dataset, counts["perfs"])
    embedded = embed_missing(db, dataset.name, model, references, log).computed
    sync_batch_index(db, dataset, model.model_id, log)
    return counts | {"embedded": embedded}


def catalog_and_featurise(db: Store, dataset: DatasetLayout, batch_id: str, catalog: Path, log: Log
                          ) -> dict[str, Any]:
    """Catalog the batch, give new works ids, record its variants and extract its features; returns counts and
    the batch's own ``perfs``. Raises :class:`RunFailed` (its rejections stored) when no line could be stored."""
    parsed = parse_catalog(catalog, labels=dataset.hparams().labels)
    known = ingest_store.known_perfs(db, dataset.name, [r.perf for r in parsed.rows])
    verified, bad_audio, warned = verify_catalog_rows(parsed.rows, {}, log, f"batch {batch_id}: checking audio")
    own, clashes, already = split_collisions(verified, known, str(catalog), batch_id)
    rejected = rejection_rows([*parsed.rejected, *bad_audio, *clashes])
    variants = [VariantRecord(variant=r["perf"], perf=r["perf"], speed=1.0, wav=r["wav"], dur_s=r["dur_s"],
                              source_hash=r["audio_hash"]) for r in own]
    with db.session():  # a burst of small writes: one connection instead of one per write
        change = catalog_store.add_batch_rows(db, dataset.name, str(catalog), batch_id, own, rejected, warned)
        new_works = split_store.add_work_ids(
            db, dataset.name, assign_work_ids({r["work"] for r in own}, split_store.work_ids(db, dataset.name)))
        feature_store.replace_variants(db, dataset.name, [r["perf"] for r in own], variants)
    if not own and not already:  # its rejections are stored; the batch itself must not read as ingested
        reasons = "; ".join(r["reason"] for r in rejected[:3]) + (" ..." if len(rejected) > 3 else "")
        raise RunFailed(f"batch {batch_id}: none of its {len(rejected)} line(s) could be stored: {reasons}",
                        {"rejected_lines": len(rejected)})
    hp = dataset.hparams()
    settings = settings_for(hp)

    def record(rows: list[FeatureRecord]) -> None:
        feature_store.record_features(db, dataset.name, settings.settings_hash(), rows)

    todo = pending_features(variants, feature_store.features(db, dataset.name, settings.settings_hash()))
    computed, errors = extract_features(todo, settings, dataset.features_dir, pick_device(hp.device), record,
                                        log, f"batch {batch_id}: CQT")
    if errors:
        raise RuntimeError("feature extraction failed:\n" + "\n".join(errors[:20]))
    return {"performances": len(own), "added": change.added, "already_present": already,
            "rejected": len(rejected), "features": computed, "new_works": new_works, "rejected_lines": rejected,
            "perfs": [r["perf"] for r in own]}


def batch_model(db: Store, dataset: DatasetLayout, log: Log) -> LoadedModel | None:
    """The promoted model that embeds the batch, or None (logged) when there is none yet: the next reference
    refresh embeds the batch then. A model trained on other features must not embed it (ModelLoadError)."""
    try:
        model = load_model(db, dataset.name)
    except ModelLoadError as err:
        log.warning(f"{err}; the batch is catalogued and featurised, and the reference refresh embeds it once a "
                    "model is promoted")
        return None
    dataset_input(model, dataset.hparams(), log)  # a model trained on other features must not embed this batch
    return model


def sync_batch_index(db: Store, dataset: DatasetLayout, model_id: str, log: Log) -> None:
    """Add the batch to the model's reference index in place, when it has one (none yet: reference_index builds
    it)."""
    if ReferenceIndex.read(db.path, dataset.name, model_id) is not None:
        sync_index(db, db.path, dataset.name, model_id, log=log.info)


@dataclass(frozen=True)
class BatchIntake:
    """What the first op of a batch hands its commit: counts so far and the embedding stage, if any."""

    batch_id: str
    catalog: str
    counts: dict[str, Any]
    model_id: str | None
    stage: str | None
    to_embed: int


@contextmanager
def failure_recorded(db: Store, dataset: DatasetLayout, batch_id: str, catalog: Path) -> Iterator[None]:
    """Record the batch as failed, with the reason, when the block raises; re-raise."""
    try:
        yield
    except Exception as err:
        ingest_store.record_batch(db, batch_id, dataset.name, str(catalog), ingest_store.FAILED, reason=str(err))
        raise


def received_batch(db: Store, batch_id: str) -> IngestBatchRecord:
    """The stored state of a batch the sensor received. Raises :class:`~csi_assets.errors.RunFailed` for a batch
    never received (a partition picked by hand)."""
    state = ingest_store.batch(db, batch_id)
    if state is None:
        raise RunFailed(f"batch {batch_id} was never received by the sensor (no row in the store)")
    return state


def intake_batch(db: Store, dataset: DatasetLayout, batch_id: str, items_per_shard: int, log: Log
                 ) -> tuple[BatchIntake, list[Shard]]:
    """Catalog and featurise a batch the sensor received, then cut its performances without an embedding of the
    promoted model into shards. Raises :class:`~csi_assets.errors.RunFailed` for a batch never received, or
    received by another dataset (Dagster's batch partitions are one list across datasets, so a (dataset, batch)
    pair may name another dataset's batch); any other failure is recorded on the batch's row before it
    propagates."""
    state = received_batch(db, batch_id)
    if state.dataset != dataset.name:
        raise RunFailed(f"batch {batch_id} was received by dataset {state.dataset!r}, not {dataset.name!r}: "
                        f"it is ingested as the partition (dataset {state.dataset}, batch {batch_id})")
    catalog = Path(state.source)
    with failure_recorded(db, dataset, batch_id, catalog):
        counts = catalog_and_featurise(db, dataset, batch_id, catalog, log)
        model = batch_model(db, dataset, log)
        shards: list[Shard] = []
        stage = None
        if model is not None:
            todo, too_short = pending_references(db, dataset.name, model, reference_rows(db, dataset,
                                                                                         counts["perfs"]))
            warn_too_short(model, too_short, log)
            stage = reference_stage(dataset.name, model.model_id)
            shards = reference_shards(stage, todo, model_store.get_model(db, model.model_id),
                                      None, items_per_shard)  # device: the model's rule, on the worker
            shard_store.forget(db, stage, [s.shard_id for s in shards])
    return BatchIntake(batch_id, str(catalog), counts, model and model.model_id, stage,
                       sum(len(s.items) for s in shards)), shards


def embed_batch_shard(db: Store, dataset: DatasetLayout, batch_id: str, shard: Shard, staging: Path,
                      log: Log) -> ShardResult:
    """Embed one shard of a batch (:func:`csi_assets.references.embed_shard`). A failure is recorded on the
    batch's row, with its reason, before it propagates: the batch must not stay ``received`` with no word of why
    (the sensor's retry and ``csi`` read that row)."""
    with failure_recorded(db, dataset, batch_id, Path(received_batch(db, batch_id).source)):
        return embed_shard(shard, staging, log)


def commit_batch_embeddings(db: Store, dataset: DatasetLayout, intake: BatchIntake, results: list[ShardResult],
                            log: Log) -> None:
    """Store the batch's embeddings in one transaction, add them to the model's index, mark the batch ingested."""
    with failure_recorded(db, dataset, intake.batch_id, Path(intake.catalog)):
        if intake.model_id is not None:
            commit_reference_shards(db, dataset.name, intake.model_id, intake.stage, results)
            sync_batch_index(db, dataset, intake.model_id, log)
    ingest_store.record_batch(db, intake.batch_id, dataset.name, intake.catalog, ingest_store.INGESTED,
                              n_good=intake.counts["performances"], n_bad=intake.counts["rejected"])
    for line in intake.counts["rejected_lines"]:
        log.warning(line["reason"])
