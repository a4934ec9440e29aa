"""``csi datasets [--forget NAME]``: the folders each dataset name stands for.

A dataset's folders are recorded at its first run (:mod:`csi_assets.dataset_folders`), so every process means the
same folders by its name. After moving a dataset, ``--forget`` its name: the next run records the new folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from csi_assets.cli import CliError, locations


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("datasets", help="the folders each dataset name stands for; forget a moved one")
    p.add_argument("--forget", metavar="NAME", default=None,
                   help="drop the folders recorded for NAME (after moving it): its next run records the new ones")
    p.add_argument("--store", default=None, help="DuckDB store (default $CSI_STORE_PATH or data/csi.duckdb)")
    p.add_argument("--lock-wait", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait while another process writes the store (default 120)")
    p.set_defaults(func=run, dataset_dir=None)


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from csi_assets.store import Store, StoreError
    from csi_assets.store import folders as folder_store

    store_path = Path(locations(args)[1])
    if not store_path.is_file():
        raise CliError(f"no store at {store_path}: no dataset has run yet")
    try:
        if args.forget is not None:
            if not folder_store.forget_folders(Store(store_path, args.lock_wait), args.forget):
                raise CliError(f"no folders are recorded for dataset {args.forget!r} in {store_path}")
            print(f"forgot the folders of dataset {args.forget!r}; its next run records them anew")
            return 0
        bindings = folder_store.every_binding(Store(store_path, args.lock_wait, read_only=True))
    except StoreError as err:
        raise CliError(str(err)) from err
    print(tabulate([[b.dataset, b.folder, b.training_folder or "-"] for b in bindings],
                   headers=["dataset", "folder", "training folder"]) if bindings else "no dataset has run yet")
    return 0
