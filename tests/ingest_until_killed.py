"""Run one delta-batch ingestion on the Dagster instance of $DAGSTER_HOME and die by SIGKILL right after a stage's
store write has committed: what a `kill -9` (or the OOM killer) does to a run worker at that point.

    python -m tests.ingest_until_killed STAGE DATASET_DIR STORE_PATH BATCH_ID

The run is on the partition (the dataset named like DATASET_DIR, BATCH_ID), as the sensor requested it.

STAGE names the store write after which the process kills itself (see ``STAGES``). Features are computed two
files at a time so that a kill after the first feature write leaves the batch half featurised.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import dagster as dg

from csi_assets import features as feature_stage
from csi_assets.assets import ingestion
from csi_assets.store import catalog, features, shards
from tests.graph_fixtures import Project, materialize

STAGES = {
    "rows": (catalog, "add_batch_rows"),  # performances stored, no work ids, variants, features or embeddings
    "variants": (features, "replace_variants"),  # catalogued, nothing computed
    "features": (features, "record_features"),  # half of the features stored
    "embeddings": (shards, "commit"),  # the embedding shards committed, batch still `received`
}


def die_after(module: Any, name: str) -> None:
    real = getattr(module, name)

    def write_then_die(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(module, name, write_then_die)


def main(stage: str, dataset_dir: str, store_path: str, batch_id: str) -> None:
    feature_stage.CQT_FILES_PER_BATCH = 2
    die_after(*STAGES[stage])
    folder = Path(dataset_dir)
    project = Project(folder.parent, folder, folder.parent / "training", Path(store_path))
    materialize(project, [ingestion.ingested_batch], instance=dg.DagsterInstance.get(), batch=batch_id)
    sys.exit(f"stage {stage!r} was never reached: the ingestion finished")


if __name__ == "__main__":
    main(*sys.argv[1:])
