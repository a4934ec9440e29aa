"""The delta-dataset sensor: new batches under each dataset's ``incoming/`` become partitions of ``ingested_batch``.

It watches the ``incoming/`` folder of every registered dataset (and of the default one, which it registers if
needed); each batch becomes a (dataset, batch) partition.

Exactly once: a batch is named by its content hash; the cursor remembers every entry seen (name, a signature of its
files' names, sizes and modification times -- so unchanged entries are not hashed again -- and batch id) and a batch
whose id was seen or whose partition exists is never requested again, so re-dropping a batch, restarting the daemon or
evaluating twice requests nothing new. The same content dropped into a second dataset is skipped with one warning
naming the dataset that holds it (a batch id names content, and its record belongs to one dataset); it is remembered
like any entry, with its signature and the holder's batch id, so it is not hashed again until it changes. A folder
whose content changed after it was seen (a line and its audio added) is a new batch: its run stores what is new and
skips what is already stored. A batch that cannot be read at all, and stays so unchanged for a whole tick (a folder
still being copied in or deleted is left alone), is moved to ``rejected/`` with an error file and recorded as
rejected; the good batches still go through.

Each entry is scanned on its own: one that vanishes or changes while being read is looked at again next tick, one
that cannot be a batch (a dangling symlink, a pipe) is skipped with one warning, and neither blocks the others.
A batch left ``received`` or ``failed`` by a run that is no longer alive (killed, crashed, failed) is requested
again, up to ``MAX_RUNS_PER_BATCH`` runs; every stage of the ingestion resumes from what the earlier run stored. One
left so with no run under its (dataset, batch) partition at all (received before batches were dataset partitions, or
its run deleted) is requested under the run key of its first request, its batch partition registered in the same tick
if it is missing.
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg

from csi_assets.dataset_folders import dataset_folder
from csi_assets.errors import RunFailed
from csi_assets.ingestion import (
    BatchUnreadable,
    batch_id_of,
    check_readable,
    entry_problem,
    entry_signature,
    pending_entries,
    quarantine,
)
from csi_assets.jobs import ingest_job
from csi_assets.layouts import DatasetLayout
from csi_assets.partitions import dataset_key, datasets, delta_batches, registration_requests
from csi_assets.resources import DatasetResource, StoreResource
from csi_assets.run_health import run_alive
from csi_assets.store import Store
from csi_assets.store import ingest as ingest_store


class EntryMoving(OSError):
    """An entry's files changed while the sensor read them: it is looked at again next tick."""


MAX_RUNS_PER_BATCH = 3
"""Runs the sensor requests for one batch before it leaves a failed batch to the user (its reason is stored)."""


@dg.sensor(job=ingest_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def delta_dataset_sensor(
    context: dg.SensorEvaluationContext, dataset: DatasetResource, store: StoreResource
) -> dg.SensorResult:
    default = dataset.default()
    previous = _read_cursor(context.cursor, default.name)
    seen = {batch_id for entries in previous.values() for _, batch_id in entries.values() if batch_id}
    db = store.store()
    remembered: dict[str, dict[str, list]] = {}
    requests: list[dg.RunRequest] = []
    watched = _watched(context, dataset, db)
    for layout in watched:
        entries = remembered.setdefault(layout.name, {})
        for entry in pending_entries(layout.incoming_dir):
            try:
                kept, request = _scan_entry(context, db, layout, entry, previous.get(layout.name, {}).get(entry.name),
                                            seen)
            except OSError as err:  # renamed, removed or rewritten while we read it: next tick sees it as it is then
                context.log.info(f"{entry}: changed while being read ({err}); looking again next tick")
                continue
            if kept:
                entries[entry.name] = kept
            if request:
                requests.append(request)
    new_batches = [r.partition_key.keys_by_dimension["batch"] for r in requests]
    for layout in watched:
        retries, unregistered = _retry_stuck(context, db, layout.name, set(new_batches))
        requests += retries
        new_batches += unregistered
    registrations = registration_requests(context.instance, [default])
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=registrations + ([delta_batches.build_add_request(new_batches)]
                                                     if new_batches else []),
        cursor=json.dumps(remembered, sort_keys=True),
        skip_reason=None if requests else "no new batch under incoming/",
    )


def _read_cursor(cursor: str | None, default: str) -> dict[str, dict[str, list]]:
    """{dataset: {entry name: [signature, batch id (of the holding dataset, for content another dataset holds)]
    or [skip marker, None] for an entry that cannot be a batch}}; a cursor of the single-dataset sensor (entries at
    the top level) belonged to the default dataset."""
    previous = json.loads(cursor) if cursor else {}
    if any(isinstance(value, list) for value in previous.values()):
        return {default: previous}
    return previous


def _watched(context: dg.SensorEvaluationContext, dataset: DatasetResource, db: Store) -> list[DatasetLayout]:
    """The default dataset and every registered one, by name, at the folders recorded for their names (a name that
    is not a folder name, or whose folder is not the recorded one, is skipped with a warning)."""
    layouts = []
    for name in sorted({dataset.default().name, *context.instance.get_dynamic_partitions(datasets.name)}):
        try:
            layouts.append(dataset_folder(db, name, dataset.dataset_dir))
        except RunFailed as err:
            context.log.warning(f"dataset {name!r} skipped: {err.description}")
    return layouts


def _scan_entry(context: dg.SensorEvaluationContext, db: Any, dataset: DatasetLayout, entry: Path,
                before: list | None, seen: set[str]) -> tuple[list | None, dg.RunRequest | None]:
    """(what the cursor remembers of the entry, or None once it was moved away; the run request of a new batch)."""
    problem = entry_problem(entry)
    if problem:
        marker = f"skipped: {problem}"
        if not before or before[0] != marker:
            context.log.warning(f"{entry}: {problem}; skipped until it changes (other batches go on)")
        return [marker, None], None
    signature = entry_signature(entry)
    if before and before[0] == signature and before[1]:
        return before, None  # unchanged since it was named
    batch_id = batch_id_of(entry)
    owner = ingest_store.batch(db, batch_id)
    if owner is not None and owner.dataset != dataset.name:  # remembered with its signature: warned, hashed once
        context.log.warning(f"{entry}: the same files were already received as batch {batch_id} of dataset "
                            f"{owner.dataset!r}; skipped (change or remove it)")
        return [signature, batch_id], None
    if batch_id in seen or context.instance.has_dynamic_partition(delta_batches.name, batch_id):
        return [signature, batch_id], None
    try:
        catalog: Path | BatchUnreadable = check_readable(entry)
    except BatchUnreadable as err:
        catalog = err
    if entry_signature(entry) != signature:  # being copied in or deleted: judge it once it holds still
        raise EntryMoving(f"{entry.name}: its files changed while they were read")
    if isinstance(catalog, BatchUnreadable) and not (before and before[0] == signature):
        context.log.info(f"{catalog}; rejected next tick unless it changes (it may still be copied or deleted)")
        return [signature, None], None
    seen.add(batch_id)
    if isinstance(catalog, BatchUnreadable):
        moved = quarantine(entry, dataset.root / "rejected", str(catalog))
        ingest_store.record_batch(db, batch_id, dataset.name, str(moved), ingest_store.REJECTED,
                                  reason=str(catalog))
        context.log.warning(f"batch {entry.name} rejected: {catalog}")
        return None, None
    note = None
    if before and before[1]:
        note = (f"{entry.name} changed since it was seen as batch {before[1]}: its content is now batch {batch_id} "
                "(performances already stored are kept and skipped)")
        context.log.warning(note)
    ingest_store.record_batch(db, batch_id, dataset.name, str(catalog), ingest_store.RECEIVED, reason=note)
    key = dataset_key(dataset.name, batch=batch_id)
    return [signature, batch_id], dg.RunRequest(run_key=str(key), partition_key=key,
                                                tags={"csi/batch": entry.name})


def _retry_stuck(context: dg.SensorEvaluationContext, db: Any, dataset: str,
                 fresh: set[str]) -> tuple[list[dg.RunRequest], list[str]]:
    """(the run requests of the batches left ``received`` or ``failed`` whose last run is no longer alive or that
    have no run at all, the batch partitions among them to register in this tick).

    A batch with no run under its (dataset, batch) partition -- received before the upgrade to dataset partitions
    (its runs carry the batch id alone), or its run deleted -- is requested as run 1 under the run key of the
    sensor's first request, so the daemon launches nothing if that request's run exists."""
    requests, unregistered = [], []
    for state in ingest_store.batches(db, dataset):
        batch_id = state.batch_id
        if state.status not in (ingest_store.RECEIVED, ingest_store.FAILED) or batch_id in fresh:
            continue
        key = dataset_key(dataset, batch=batch_id)
        runs = context.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/partition": str(key)}))
        if not runs:
            if not context.instance.has_dynamic_partition(delta_batches.name, batch_id):
                unregistered.append(batch_id)  # a run request for an unregistered partition fails the whole tick
            context.log.warning(f"batch {batch_id} is {state.status} and has no run under partition {key}: "
                                f"requesting run 1 of at most {MAX_RUNS_PER_BATCH}")
            requests.append(dg.RunRequest(run_key=str(key), partition_key=key))
            continue
        if len(runs) >= MAX_RUNS_PER_BATCH or run_alive(context.instance, runs[0]):
            continue
        context.log.warning(f"batch {batch_id} is {state.status} and its last run {runs[0].run_id} "
                            f"({runs[0].status.value}) is no longer alive: requesting run {len(runs) + 1} of at "
                            f"most {MAX_RUNS_PER_BATCH}")
        requests.append(dg.RunRequest(run_key=f"{key}-run{len(runs) + 1}", partition_key=key,
                                      tags={"csi/retry_of": runs[0].run_id}))
    return requests, unregistered
