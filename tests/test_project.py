"""The project's contract with a new user: README commands, CI script, and the Dagster definitions."""

from __future__ import annotations

import json
import re
import shlex
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


DATASET_NAMES_IN_DOCS = {"demo", "my_dataset", "covers80"}
"""The dataset names the documented commands use (the demo, a user's dataset, an imported reference dataset)."""


_DAGSTER_COMMANDS = ("dagster asset materialize", "dagster job execute")
_FENCED = re.compile(r"```[a-z]*\n(.*?)```", re.S)
_INLINE = re.compile(r"`([^`\n]+)`")


def _documented_dagster_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `dagster asset materialize` / `dagster job execute` of the README and docs/: the lines
    of fenced blocks (continuation lines joined, comments dropped) and the inline code spans of the prose. A span
    that is only the command's name (`dagster asset materialize`) mentions it and is left out; any span with
    arguments is a command a user may copy."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for block in _FENCED.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                argv = shlex.split(line.strip().removeprefix("$ "), comments=True)
                if any(command in " ".join(argv) for command in _DAGSTER_COMMANDS):
                    found.append((path.name, argv))
        for span in _INLINE.findall(_FENCED.sub("", text)):
            if any(command in span for command in _DAGSTER_COMMANDS) and span.strip() not in _DAGSTER_COMMANDS:
                found.append((f"{path.name} (inline)", shlex.split(span.strip().removeprefix("$ "))))
    return found


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def expected_key(key: str, partitions_def: dg.PartitionsDefinition) -> str:
    """The key Dagster expects for the parts ``key`` names: its one dataset name in the ``dataset`` dimension, the
    other part in the other dimension, in Dagster's string form (parts ordered by dimension name)."""
    if not isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return key if key in DATASET_NAMES_IN_DOCS else f"<a dataset of {sorted(DATASET_NAMES_IN_DOCS)}>"
    parts = key.split("|")
    datasets = [part for part in parts if part in DATASET_NAMES_IN_DOCS]
    others = [part for part in parts if part not in DATASET_NAMES_IN_DOCS]
    other_dimensions = [d.name for d in partitions_def.partitions_defs if d.name != "dataset"]
    if len(datasets) != 1 or len(others) != len(other_dimensions):
        return f"<one dataset part and {len(other_dimensions)} other>"
    return str(dg.MultiPartitionKey({"dataset": datasets[0], **dict(zip(other_dimensions, others, strict=True))}))


def test_documented_dagster_commands_name_a_valid_dataset_partition() -> None:
    """Every asset is partitioned by dataset: a documented command without a partition, or with the parts of a
    two-dimensional key in the wrong order (Dagster sorts them by dimension name), fails for the user."""
    from csi_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    commands = _documented_dagster_commands()
    assert len(commands) >= 10, commands
    assert any(source.endswith("(inline)") for source, _ in commands), "no inline command found"
    for source, argv in commands:
        text = " ".join(argv)
        if "job execute" in text:
            tags = json.loads(_option(argv, "--tags") or "{}")
            assert tags.get("dagster/partition") in DATASET_NAMES_IN_DOCS, f"{source}: {text}"
            continue
        key, select = _option(argv, "--partition"), _option(argv, "--select")
        assert key, f"{source}: no --partition in {text}"
        if select is None and "…" in argv:  # an elided command: `dagster asset materialize … --partition demo`
            assert key in DATASET_NAMES_IN_DOCS, f"{source}: {key} is not a dataset in {text}"
            continue
        assert select, f"{source}: no --select in {text}"
        partitions_defs = {graph.get(dg.AssetKey(name)).partitions_def for name in select.split(",")}
        assert len(partitions_defs) == 1, f"{source}: assets of different partitions in {text}"
        [partitions_def] = partitions_defs
        assert key == expected_key(key, partitions_def), f"{source}: {key} is not the key Dagster expects in {text}"


def test_expected_key_puts_the_dataset_in_its_slot() -> None:
    """The check above can fail: a swapped or incomplete key is not the expected one."""
    label = dg.MultiPartitionsDefinition({"dataset": dg.StaticPartitionsDefinition(["demo"]),
                                          "label": dg.StaticPartitionsDefinition(["register"])})
    batch = dg.MultiPartitionsDefinition({"dataset": dg.StaticPartitionsDefinition(["demo"]),
                                          "batch": dg.StaticPartitionsDefinition(["b1"])})
    assert expected_key("demo|register", label) == "demo|register"
    assert expected_key("register|demo", label) == "demo|register"
    assert expected_key("b1|demo", batch) == "b1|demo"
    assert expected_key("demo|b1", batch) == "b1|demo"
    assert expected_key("demo", label) != "demo"
    assert expected_key("demo|covers80", label) != "demo|covers80"
    assert expected_key("demo", dg.StaticPartitionsDefinition(["demo"])) == "demo"
    assert expected_key("register", dg.StaticPartitionsDefinition(["demo"])) != "register"


def test_make_demo_runs_the_registered_dataset_partition() -> None:
    """`make demo` registers the dataset, runs the main job on its partition and each label probe on the
    (dataset, label) key in Dagster's string form."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(r"^demo:.*?\n((?:\t.*\n)+)", makefile, re.M)
    assert recipe, "no demo recipe"
    text = recipe.group(1)
    assert "dataset=$$($(BIN)/python -m csi_assets.partitions)" in text
    assert '--tags "{\\"dagster/partition\\": \\"$$dataset\\"}"' in text
    label_key = str(dg.MultiPartitionKey({"dataset": "$$dataset", "label": "$$label"}))
    assert f'--select label_probe \\\n\t\t\t--partition "{label_key}"' in text
