"""The ``csi`` command: one sub-command per module, each registering its own arguments.

Sub-commands live beside this file (``synth.py``, ``identify.py``, ...); each exposes ``register(subparsers)``
that adds its parser and sets ``func`` to a callable taking the parsed namespace and returning an exit code.
To add one, write the module and add its name to ``_SUBCOMMAND_MODULES``.

Start-up rule: building the parser runs every module's top level and ``register``, so those import nothing heavy
(no torch, dagster, duckdb, scipy, sklearn, matplotlib, nnAudio, not even numpy); ``csi --help`` and argument
errors then take a fraction of a second. Each ``func`` imports what it needs and checks its arguments and input
files before it loads a model or opens the store.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

_SUBCOMMAND_MODULES = ("synth", "identify", "eval", "model_info", "tools", "classify", "serve", "datasets")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csi", description="Cover-song identification (CoverHunter on Dagster).")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(f"csi_assets.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as err:
        print(f"csi {args.command}: error: {err}", file=sys.stderr)
        return 2


class CliError(Exception):
    """A user-facing failure: printed as one clear line, exit status 2, no traceback."""


def add_store_options(p: argparse.ArgumentParser) -> None:
    """``--dataset-dir``, ``--store`` and ``--lock-wait`` of the commands that read the store."""
    p.add_argument("--dataset-dir", default=None, help="dataset folder (default $CSI_DATASET_DIR or data/demo)")
    p.add_argument("--store", default=None, help="DuckDB store (default $CSI_STORE_PATH or data/csi.duckdb)")
    p.add_argument("--lock-wait", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait while another process writes the store (default 120)")


def locations(args: argparse.Namespace) -> tuple[str, str]:
    """(dataset folder, store path): the options, else the environment the Dagster resources read."""
    from csi_assets import locations as default

    return args.dataset_dir or default.dataset_dir(), args.store or default.store_path()


if __name__ == "__main__":
    sys.exit(main())
