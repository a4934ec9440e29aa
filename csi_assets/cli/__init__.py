"""The ``csi`` command: one sub-command per module, each registering its own arguments.

Sub-commands live beside this file (``synth.py``, ``identify.py``, ...); each exposes ``register(subparsers)``
that adds its parser and sets ``func`` to a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

_SUBCOMMAND_MODULES = ("synth", "identify", "eval", "model_info", "tools", "serve")


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


if __name__ == "__main__":
    sys.exit(main())
