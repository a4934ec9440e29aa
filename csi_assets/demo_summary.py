"""Printed at the end of ``make demo``: where the results are and how to look at them."""

from __future__ import annotations

import os

from csi_assets.resources import default_resources
from csi_assets.store import summary


def main() -> None:
    resources = default_resources()
    store = resources["store"].store()
    dataset = resources["dataset"]
    training = resources["training"]
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
    print()
    print("Look at it:  make ui   → http://127.0.0.1:3000  (asset graph, metadata, plots)")
    print("Identify:    .venv/bin/csi identify data/demo/wav/<some perf>.wav --works")


if __name__ == "__main__":
    main()
