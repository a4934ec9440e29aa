"""The delta-dataset sensor: new batches under ``incoming/`` become partitions of ``ingested_batch``.

Exactly once: a batch is named by its content hash; the cursor remembers every entry seen (name, modification
time and batch id, so unchanged entries are not hashed again) and a batch whose id was seen or whose partition
exists is never requested again, so re-dropping a batch, restarting the daemon or evaluating twice requests
nothing new. A batch that cannot be read at all is moved to ``rejected/`` with an error file and
recorded as rejected; the good batches still go through.
"""

import json

import dagster as dg

from csi_assets.assets.ingestion import (
    BatchUnreadable,
    batch_id_of,
    check_readable,
    delta_batches,
    ingest_job,
    pending_entries,
    quarantine,
)
from csi_assets.resources import DatasetResource, StoreResource
from csi_assets.store import ingest as ingest_store


@dg.sensor(job=ingest_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def delta_dataset_sensor(
    context: dg.SensorEvaluationContext, dataset: DatasetResource, store: StoreResource
) -> dg.SensorResult:
    entries: dict[str, list] = json.loads(context.cursor) if context.cursor else {}
    seen = {batch_id for _, batch_id in entries.values()}
    db = store.store()
    requests, new_keys = [], []
    for entry in pending_entries(dataset.incoming_dir):
        mtime = entry.stat().st_mtime_ns
        if entries.get(entry.name, [None])[0] == mtime:
            continue
        batch_id = batch_id_of(entry)
        entries[entry.name] = [mtime, batch_id]
        if batch_id in seen or context.instance.has_dynamic_partition(delta_batches.name, batch_id):
            continue
        seen.add(batch_id)
        try:
            catalog = check_readable(entry)
        except BatchUnreadable as err:
            moved = quarantine(entry, dataset.root / "rejected", str(err))
            ingest_store.record_batch(db, batch_id, dataset.name, str(moved), ingest_store.REJECTED, reason=str(err))
            context.log.warning(f"batch {entry.name} rejected: {err}")
            continue
        ingest_store.record_batch(db, batch_id, dataset.name, str(catalog), ingest_store.RECEIVED)
        new_keys.append(batch_id)
        requests.append(dg.RunRequest(run_key=batch_id, partition_key=batch_id,
                                      tags={"csi/batch": entry.name}))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[delta_batches.build_add_request(new_keys)] if new_keys else [],
        cursor=json.dumps(entries, sort_keys=True),
        skip_reason=None if requests else "no new batch under incoming/",
    )
