"""``csi`` starts light: building its parser (``csi --help``, argument errors) and rejecting bad input files load
no heavy library, in a fresh interpreter where nothing was imported before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.paths import REPO

HEAVY = ("torch", "dagster", "duckdb", "scipy", "sklearn", "matplotlib", "nnAudio", "faiss")


def _heavy_modules_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return the heavy top-level packages it left in ``sys.modules``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_building_the_parser_imports_no_heavy_library() -> None:
    assert _heavy_modules_after("from csi_assets.cli import build_parser\nbuild_parser()") == []


def test_help_of_every_subcommand_imports_no_heavy_library() -> None:
    code = ("from csi_assets.cli import build_parser\n"
            "parser = build_parser()\n"
            "for name in parser._subparsers._group_actions[0].choices:\n"
            "    try:\n"
            "        parser.parse_args([name, '--help'])\n"
            "    except SystemExit:\n"
            "        pass")
    assert _heavy_modules_after(code) == []


def test_unreadable_queries_are_rejected_before_the_model_or_store_loads(tmp_path: Path) -> None:
    missing, broken = tmp_path / "missing.wav", tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF0000WAVEnot really audio")
    code = (f"from csi_assets.cli import main\n"
            f"assert main(['identify', {str(missing)!r}, {str(broken)!r}, {str(tmp_path)!r}]) == 2")
    assert _heavy_modules_after(code) == []
