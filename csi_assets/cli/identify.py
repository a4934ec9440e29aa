"""``csi identify QUERY... [--top 10] [--works] [--calibrated] [--json]``: rank stored performances (or works)
for each query recording with the promoted model.

The model stack (torch, nnAudio, Dagster resources) is imported when the command runs, not when ``csi`` builds
its parser, so ``csi --help`` and the other commands stay quick."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tabulate import tabulate
from tqdm import tqdm

from csi_assets.cli import CliError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("identify", help="identify recordings against the reference embeddings")
    p.add_argument("queries", nargs="+", metavar="QUERY", help="audio files (any format libsndfile reads)")
    p.add_argument("--top", type=int, default=10, help="matches per query (default 10)")
    p.add_argument("--works", action="store_true", help="rank works (a work is as near as its nearest performance)")
    p.add_argument("--calibrated", action="store_true",
                   help="show each distance's z-score, p (per search: corrected for the N references compared) "
                        "and p_pair (one unrelated pair)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per query")
    p.add_argument("--model", default=None, help="a registered model id (default: the promoted model)")
    p.add_argument("--dataset-dir", default=None, help="dataset folder (default $CSI_DATASET_DIR or data/demo)")
    p.add_argument("--store", default=None, help="DuckDB store (default $CSI_STORE_PATH or data/csi.duckdb)")
    p.add_argument("--device", default=None, help="torch device (default: the model's, else cuda > mps > cpu)")
    p.set_defaults(func=run)


def locations(args: argparse.Namespace) -> tuple[str, str]:
    """(dataset folder, store path): the options, else the environment the Dagster resources read."""
    from csi_assets.resources import default_resources

    resources = default_resources()
    return (args.dataset_dir or resources["dataset"].dataset_dir, args.store or resources["store"].path)


def run(args: argparse.Namespace) -> int:
    from csi_assets.identify import Identifier, IdentifyError

    if args.top < 1:
        raise CliError(f"--top must be at least 1, got {args.top}")
    dataset_dir, store = locations(args)
    try:
        identifier = Identifier(store, dataset_dir, args.model, args.device)
        quiet = True if len(args.queries) < 2 else None  # None: a bar only when stderr is a terminal
        with tqdm(total=len(args.queries), unit="query", desc="identify", disable=quiet, file=sys.stderr) as bar:
            results = identifier.identify(args.queries, args.top, args.works, args.calibrated, bar.update)
    except IdentifyError as err:
        raise CliError(str(err)) from err
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print("\n\n".join(_table(r, args.works, args.calibrated) for r in results))
    return 0


def _table(result: Any, works: bool, calibrated: bool) -> str:
    """One query's matches (a ``csi_assets.identify.QueryResult``) as a text table; with ``calibrated`` a note
    says what p and p_pair mean and how many references p accounts for."""
    headers = ["rank", "work", "best perf" if works else "perf", "distance"]
    headers += ["z", "p", "p_pair"] if calibrated else []
    rows = [[m.rank, m.work, m.perf, f"{m.distance:.4f}"]
            + ([f"{m.z:+.2f}", _p_text(m.p, m.p_floored), _p_text(m.p_pair, m.p_floored)] if calibrated else [])
            for m in result.matches]
    table = f"{result.query}  (model {result.model})\n" + tabulate(rows, headers=headers)
    if not calibrated:
        return table
    return (f"{table}\np: chance that a search of {result.n_compared} unrelated performances finds one this close\n"
            f"p_pair: chance for one unrelated pair; '< x': nearer than every pair of the null sample "
            f"(floor {result.p_pair_floor:.1e} per pair)")


def _p_text(value: float, floored: bool) -> str:
    """A p-value with 3 significant digits; a floored one as an upper bound, ``< 1.0e-04``."""
    return f"< {value:.1e}" if floored else f"{value:.3g}"
