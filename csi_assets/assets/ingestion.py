"""Group ``ingestion``: delta batches of new performances become references without retraining.

A batch is a folder under the dataset's ``incoming/`` with its own ``dataset.txt`` and audio, or a single
``*.txt`` catalog there. The sensor names each batch by a hash of its content (so dropping the same batch twice
ingests it once) and registers it as a partition of ``ingested_batch``; one run per batch catalogs it with the
main catalog's validation, gives new works new permanent ids, extracts features without tempo augmentation and
embeds the new performances with the promoted model. Nothing already stored is recomputed or changed.
"""

import hashlib
import stat
from pathlib import Path
from typing import Any

import dagster as dg

from csi_assets.assets.data import (
    extract_features,
    pending_features,
    rejection_rows,
    split_collisions,
    verify_catalog_rows,
)
from csi_assets.assets.serving import embed_missing
from csi_assets.model_loading import ModelLoadError, dataset_input, load_model
from csi_assets.reference_index import ReferenceIndex, sync_index
from csi_assets.resources import DatasetResource, StoreResource
from csi_assets.store import catalog as catalog_store
from csi_assets.store import features as feature_store
from csi_assets.store import ingest as ingest_store
from csi_assets.store import splits as split_store
from csi_assets.store.records import FeatureRecord, VariantRecord
from csi_model.catalog import parse_catalog
from csi_model.devices import pick_device
from csi_model.splits import assign_work_ids
from csi_model.cqt import settings_for

GROUP = "ingestion"
delta_batches = dg.DynamicPartitionsDefinition(name="delta_batches")


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


def ingest_batch(db: Any, dataset: DatasetResource, batch_id: str, catalog: Path, log: Any) -> dict[str, Any]:
    """Catalog, identify, extract and embed one batch; returns counts. Raises on a batch that cannot finish.

    Every stage works on the batch's whole row set (new perf ids and those it stored in an earlier, interrupted
    run) and does only what is missing, so a re-run after a kill at any point ends as an uninterrupted run would."""
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
    hp = dataset.hparams()
    settings = settings_for(hp)

    def record(rows: list[FeatureRecord]) -> None:
        feature_store.record_features(db, dataset.name, settings.settings_hash(), rows)

    todo = pending_features(variants, feature_store.features(db, dataset.name, settings.settings_hash()))
    computed, errors = extract_features(todo, settings, dataset.features_dir, pick_device(hp.device), record,
                                        log, f"batch {batch_id}: CQT")
    if errors:
        raise RuntimeError("feature extraction failed:\n" + "\n".join(errors[:20]))
    embedded = _embed_new(db, dataset, settings.settings_hash(), [r["perf"] for r in own], log)
    return {"performances": len(own), "added": change.added, "already_present": already,
            "rejected": len(rejected), "features": computed, "embedded": embedded, "new_works": new_works,
            "rejected_lines": rejected}


def _embed_new(db: Any, dataset: DatasetResource, settings_hash: str, perfs: list[str], log: Any) -> int:
    """Embed the batch's performances that lack an embedding of the promoted model (without a model, the next
    refresh does it) and add them to the model's reference index, if it has one, without rebuilding it."""
    try:
        model = load_model(db, dataset.name)
    except ModelLoadError as err:
        log.warning(f"{err}; the batch is catalogued and featurised, and the reference refresh embeds it once a "
                    "model is promoted")
        return 0
    dataset_input(model, dataset.hparams(), log)  # a model trained on other features must not embed this batch
    references = [r for r in feature_store.feature_table(db, dataset.name, settings_hash, perfs=perfs)
                  if r.speed == 1.0]
    computed = embed_missing(db, dataset.name, model, references, log).computed
    if ReferenceIndex.read(db.path, dataset.name, model.model_id) is not None:  # none yet: reference_index builds it
        sync_index(db, db.path, dataset.name, model.model_id, log=log.info)
    return computed


@dg.asset(group_name=GROUP, partitions_def=delta_batches, kinds={"duckdb"})
def ingested_batch(context: dg.AssetExecutionContext, dataset: DatasetResource,
                   store: StoreResource) -> dg.MaterializeResult:
    """One delta batch catalogued, featurised (no tempo augmentation) and embedded with the promoted model."""
    db = store.store()
    batch_id = context.partition_key
    state = ingest_store.batch(db, batch_id)
    if state is None:
        raise dg.Failure(description=f"batch {batch_id} was never received by the sensor (no row in the store)")
    catalog = Path(state.source)
    try:
        counts = ingest_batch(db, dataset, batch_id, catalog, context.log)
    except Exception as err:
        ingest_store.record_batch(db, batch_id, dataset.name, str(catalog), ingest_store.FAILED, reason=str(err))
        raise
    ingest_store.record_batch(db, batch_id, dataset.name, str(catalog), ingest_store.INGESTED,
                              n_good=counts["performances"], n_bad=counts["rejected"])
    for line in counts["rejected_lines"]:
        context.log.warning(line["reason"])
    return dg.MaterializeResult(metadata={
        "performances": counts["performances"], "added_now": counts["added"],
        "already_present": counts["already_present"],
        "rejected_lines": counts["rejected"], "features": counts["features"], "embedded": counts["embedded"],
        "new_works": counts["new_works"], "catalog": dg.MetadataValue.path(str(catalog)),
        "rejected": dg.MetadataValue.md("\n".join(f"- {r['reason']}" for r in counts["rejected_lines"]) or "none"),
    })

