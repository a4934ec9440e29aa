"""Printed at the end of ``make demo``: where the results are and how to look at them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from csi_assets import locations
from csi_assets.layouts import DatasetLayout, TrainingLayout
from csi_assets.store import Store, models, summary


def main() -> None:
    store = Store(Path(locations.store_path()).resolve())
    dataset = DatasetLayout.at(locations.dataset_dir())
    training = TrainingLayout.at(locations.training_dir())
    counts = summary.table_counts(store, dataset.name)
    print()
    print("Demo finished. What was built:")
    for table, n in counts.items():
        print(f"  {table:<22} {n:>7} rows")
    print()
    print(f"  dataset folder   {dataset.root}  (reference-format exports: full.txt, train.txt, ...)")
    print(f"  training folder  {training.root}  (checkpoints/, logs/ for TensorBoard)")
    print(f"  metadata store   {store.path}")
    print(f"  Dagster instance {os.environ.get('DAGSTER_HOME', '(temporary)')}")
    _label_verdicts(store, dataset.name)
    print()
    print("Look at it:  make ui   → http://127.0.0.1:3000  (asset graph, metadata, plots)")
    print("Identify:    .venv/bin/csi identify data/demo/wav/<some perf>.wav --works")


def _label_verdicts(store: Store, dataset: str) -> None:
    """Each label probe's reading (from its metrics.json), when the promoted model has been probed."""
    from csi_assets.classify import probe_file
    from csi_assets.labels import configured_labels

    promoted = models.promoted_model(store, dataset)
    if promoted is None:
        return
    for label in configured_labels():
        metrics = probe_file(promoted.training_dir, promoted.model_id, label).parent / "metrics.json"
        if metrics.is_file():
            print(f"\n  label {label}: {json.loads(metrics.read_text(encoding='utf-8'))['verdict']}")


if __name__ == "__main__":
    main()
