"""``csi identify QUERY... [--top 10] [--works] [--calibrated] [--json]``: rank stored performances (or works)
for each query recording with the promoted model.

Every query file is checked (exists, is a file, has an audio header libsndfile reads) before the model loads;
every good query is answered and every bad one listed (stderr; an ``error`` entry with ``--json``). Exit status:
0 all answered, 1 some queries failed, 2 none could be answered (or the store, model or options are unusable).
The model stack (torch, nnAudio, DuckDB) is imported when the command runs, not when ``csi`` builds its parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from csi_assets.cli import CliError, add_store_options, locations

SOME_FAILED, NONE_ANSWERED = 1, 2


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
    add_store_options(p)
    p.add_argument("--device", default=None, help="torch device (default: the model's, else cuda > mps > cpu)")
    p.set_defaults(func=run)


def unreadable_queries(queries: list[str]) -> dict[str, str]:
    """{path: message} for each query that is missing, a directory, empty or has no readable audio header."""
    from csi_model.audio import AudioError, check_audio_file

    errors = {}
    for query in queries:
        try:
            check_audio_file(query)
        except AudioError as err:
            errors[query] = str(err)
    return errors


def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise CliError(f"--top must be at least 1, got {args.top}")
    errors = unreadable_queries(args.queries)
    good = [q for q in args.queries if q not in errors]
    results = _identify(args, good, errors) if good else []
    _print(args, results, errors)
    for message in errors.values():
        print(f"csi identify: error: {message}", file=sys.stderr)
    if not errors:
        return 0
    print(f"csi identify: {len(args.queries) - len(errors)} of {len(args.queries)} queries answered",
          file=sys.stderr)
    return NONE_ANSWERED if not results else SOME_FAILED


def _identify(args: argparse.Namespace, queries: list[str], errors: dict[str, str]) -> list[Any]:
    """Load the model once and answer ``queries``; a query that fails while decoding is added to ``errors``."""
    from tqdm import tqdm

    from csi_assets.identify import Identifier, IdentifyError
    from csi_assets.store import StoreError

    dataset_dir, store = locations(args)
    try:
        identifier = Identifier(store, dataset_dir, args.model, args.device, lock_timeout_s=args.lock_wait)
        quiet = True if len(queries) < 2 else None  # None: a bar only when stderr is a terminal
        with tqdm(total=len(queries), unit="query", desc="identify", disable=quiet, file=sys.stderr) as bar:
            return identifier.identify(queries, args.top, args.works, args.calibrated, bar.update,
                                       failed=errors.__setitem__)
    except (IdentifyError, StoreError) as err:
        raise CliError(str(err)) from err


def _print(args: argparse.Namespace, results: list[Any], errors: dict[str, str]) -> None:
    """Results in the order of the command line; with ``--json`` a failed query is ``{"query", "error"}``."""
    if args.json:
        answered = iter(results)
        print(json.dumps([{"query": q, "error": errors[q]} if q in errors else next(answered).to_dict()
                          for q in args.queries], indent=2))
    elif results:
        print("\n\n".join(_table(r, args.works, args.calibrated) for r in results))


def _table(result: Any, works: bool, calibrated: bool) -> str:
    """One query's matches (a ``csi_assets.identify.QueryResult``) as a text table; with ``calibrated`` a note
    says what p and p_pair mean and how many references p accounts for."""
    from tabulate import tabulate

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
