"""The project's contract with a new user: README commands, CI script, and the Dagster definitions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).parents[1]
DESIGN_ASSETS = {
    "dataset_catalog", "speed_variants", "cqt_features", "work_ids", "data_splits", "trained_model",
    "reference_embeddings", "eval_report",
}


def _readme_commands() -> list[str]:
    """Commands of the README's first shell block, in order."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:sh|bash|console)\n(.*?)```", text, re.S)
    assert block, "README.md has no shell code block"
    commands = (line.split("#", 1)[0].strip().removeprefix("$ ") for line in block.group(1).splitlines())
    return [command for command in commands if command]


def test_readme_first_two_commands_are_demo_and_test() -> None:
    assert _readme_commands()[:2] == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    test_command = _readme_commands()[1]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert test_command in ci_lines


def test_makefile_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in ("setup", "demo", "test", "ui", "serve"):
        assert re.search(rf"^{target}:", makefile, re.M), target


def test_definitions_hold_every_design_asset_wired_in_order() -> None:
    from csi_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert DESIGN_ASSETS <= keys
    upstream_of_model = {k.to_user_string() for k in graph.upstream_key_iterator(dg.AssetKey("trained_model"))}
    assert {"dataset_catalog", "speed_variants", "cqt_features", "work_ids", "data_splits"} <= upstream_of_model
    assert defs.resolve_job_def("main") is not None


def test_dagster_definitions_validate() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
