"""Dataset tools and interoperability: ``csi align``, ``csi compare``, ``csi histogram``, ``csi query-in-ref`` and
``csi import`` (a CoverHunterMPS data and training folder, used as they are)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from csi_assets.cli import CliError


def _store_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", default=None, help="DuckDB store (default $CSI_STORE_PATH or data/csi.duckdb)")


def _store_path(args: argparse.Namespace) -> str:
    from csi_assets import locations

    return args.store or locations.store_path()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("align", help="coarse time offsets between performances of the same work")
    p.add_argument("--dataset-dir", default=None, help="dataset folder (default $CSI_DATASET_DIR or data/demo)")
    p.add_argument("--training-dir", default=None,
                   help="where alignments.jsonl is written (default $CSI_TRAINING_DIR or training/demo)")
    p.add_argument("--window", type=float, default=None, help="window length in seconds (default 15)")
    p.add_argument("--hop", type=float, default=None, help="window hop in seconds (default 5)")
    p.add_argument("--model", default=None, help="a registered model id (default: the promoted model)")
    p.add_argument("--device", default=None)
    _store_option(p)
    p.set_defaults(func=run_align)

    p = subparsers.add_parser("compare", help="overlap (leakage) report between two catalogs")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(func=run_compare)

    p = subparsers.add_parser("histogram", help="histogram of performances per work, as a PNG")
    p.add_argument("catalog", type=Path)
    p.add_argument("--out", type=Path, required=True, help="PNG file to write")
    p.add_argument("--name", default=None, help="title (default: the catalog's folder name)")
    p.set_defaults(func=run_histogram)

    p = subparsers.add_parser("query-in-ref", help="write the query_in_ref file of a query and a reference catalog")
    p.add_argument("query", type=Path)
    p.add_argument("ref", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=run_query_in_ref)

    p = subparsers.add_parser("import", help="use a CoverHunterMPS data folder (and training folder) as they are")
    p.add_argument("--data", type=Path, required=True, help="folder with full.txt + cqt_feat/ (or dataset.txt)")
    p.add_argument("--training", type=Path, default=None, help="folder with config/hparams.yaml and checkpoints/")
    p.add_argument("--cwd", type=Path, default=None,
                   help="folder the reference tool ran in, for relative wav/feat paths (default: here)")
    _store_option(p)
    p.set_defaults(func=run_import)


def _missing(*paths: Path) -> None:
    for path in paths:
        if not path.is_file():
            raise CliError(f"{path}: no such file")


def run_align(args: argparse.Namespace) -> int:
    if any(value is not None and value <= 0 for value in (args.window, args.hop)):
        raise CliError(f"--window and --hop must be positive, got {args.window} and {args.hop}")
    from csi_assets import locations
    from csi_assets.alignment import align_dataset
    from csi_assets.errors import RunFailed
    from csi_assets.layouts import DatasetLayout, TrainingLayout
    from csi_assets.store import Store
    from csi_model.alignment import DEFAULT_HOP_S, DEFAULT_WINDOW_S
    from csi_model.hparams import HParamsError

    window = DEFAULT_WINDOW_S if args.window is None else args.window
    hop = DEFAULT_HOP_S if args.hop is None else args.hop
    dataset = DatasetLayout.at(args.dataset_dir or locations.dataset_dir())
    training = TrainingLayout.at(args.training_dir or locations.training_dir())
    store = Store(_store_path(args))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        run, path = align_dataset(store, dataset, training.root, window, hop, logging.getLogger("csi.align"),
                                  args.model, args.device)
    except (RunFailed, HParamsError) as err:
        raise CliError(str(err)) from err
    print(f"{len(run.alignments)} pairs ({run.windows} windows, {run.seconds:.1f} s) -> {path}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    _missing(args.a, args.b)
    from csi_model.dataset_tools import compare_catalogs

    report = compare_catalogs(args.a, args.b)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return 0


def run_histogram(args: argparse.Namespace) -> int:
    _missing(args.catalog)
    from csi_assets.layouts import folder_path
    from csi_model.dataset_tools import perfs_per_work, plot_perfs_per_work, read_catalog_ids, work_size_stats

    ids = read_catalog_ids(args.catalog)
    counts = perfs_per_work(ids.perfs, ids.works)
    if not counts:
        raise CliError(f"{args.catalog}: no usable lines")
    stats = work_size_stats(counts)
    plot_perfs_per_work(counts, args.out, args.name or folder_path(args.catalog).parent.name)
    for line in ids.malformed:
        print(f"skipped {line}")
    print(f"{stats.works} works, {stats.perfs} performances, {stats.min_perfs}..{stats.max_perfs} per work "
          f"(most often {stats.most_common}, {stats.single_perf_works} works with one) -> {args.out}")
    return 0


def run_query_in_ref(args: argparse.Namespace) -> int:
    _missing(args.query, args.ref)
    from csi_model.catalog import CatalogLineError
    from csi_model.dataset_tools import write_query_in_ref

    try:
        pairs = write_query_in_ref(args.query, args.ref, args.out)
    except CatalogLineError as err:
        raise CliError(str(err)) from err
    print(f"{len(pairs)} query lines are in the references -> {args.out}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from csi_assets.importer import ReferenceImportError, import_reference
    from csi_assets.layouts import folder_path
    from csi_assets.store import Store
    from csi_model.hparams import HParamsError

    try:
        report = import_reference(Store(_store_path(args)), args.data, args.training, args.cwd)
    except (ReferenceImportError, HParamsError) as err:
        raise CliError(str(err)) from err
    print(f"dataset {report.dataset!r}: {report.performances} performances, {report.variants} variants, "
          f"{report.features} features, {report.works} works")
    for line in report.rejected:
        print(f"rejected: {line['reason']}")
    for line in report.warnings:
        print(f"warning: {line['message']}")
    if report.model_id:
        print(f"model {report.model_id} (epoch {report.epoch}, {report.checkpoint}) registered and promoted")
    print(f"next: the dataset's partition is {report.dataset!r} (the dataset_folders sensor registers it), then "
          f"dagster asset materialize -m csi_assets.definitions --select reference_embeddings --partition "
          f"{report.dataset}, then csi identify --dataset-dir {folder_path(args.data)}")
    return 0
