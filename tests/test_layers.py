"""The repository keeps its three layers apart: ``csi_model`` (the PyTorch library: no Dagster, no DuckDB), the
application layer in ``csi_assets`` (no Dagster: the CLI, ``bench/`` and tests use it without loading the
orchestrator) and the Dagster layer (assets, checks, sensors, schedules, jobs, definitions, resources, partitions).

Modules are found by walking the packages, so a new module is covered the day it is added: everything in
``csi_assets`` is application code unless it is listed in ``DAGSTER_LAYER``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DAGSTER_LAYER = ("csi_assets.assets", "csi_assets.sensors", "csi_assets.schedules", "csi_assets.jobs",
                 "csi_assets.definitions", "csi_assets.resources", "csi_assets.run_health", "csi_assets.dask_execution",
                 "csi_assets.partitions")
"""Modules (and packages) of ``csi_assets`` that define or run Dagster objects; everything else is application."""


def _modules(package: str) -> list[str]:
    root = REPO / package
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _in_dagster_layer(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in DAGSTER_LAYER)


def application_modules() -> list[str]:
    return [m for m in _modules("csi_assets") if not _in_dagster_layer(m)]


def _imported_names(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` statement of the file names, at any depth (lazy imports inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.lineno, node.module)]
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _forbidden_imports(path: Path) -> list[str]:
    """``file:line module`` for each import statement of Dagster or of a Dagster-layer module."""
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    found: dict[int, str] = {}
    for line, name in _imported_names(path):
        if name == "dagster" or name.startswith("dagster.") or _in_dagster_layer(name):
            found.setdefault(line, name)
    return [f"{shown}:{line} {name}" for line, name in sorted(found.items())]


def _file_of(module: str) -> Path:
    path = REPO / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _first_importer(modules: list[str], heavy: tuple[str, ...]) -> dict[str, str]:
    """Import ``modules`` one after another in a fresh interpreter; for each heavy package, the first module after
    whose import it was in ``sys.modules``."""
    code = (f"import importlib, json, sys\nfirst = {{}}\nfor name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            f"    for heavy in {heavy!r}:\n"
            "        if heavy in sys.modules and heavy not in first:\n"
            "            first[heavy] = name\n"
            "print(json.dumps(first))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_rule_finds_the_layers() -> None:
    """The walk sees the modules it must judge: the rule cannot pass by finding nothing."""
    app = application_modules()
    assert {"csi_assets.training_runs", "csi_assets.eval_reports", "csi_assets.cli", "csi_assets.store.schema",
            "csi_assets.layouts", "csi_assets.identify"} <= set(app)
    assert not any(m.startswith("csi_assets.assets") for m in app)
    assert "csi_assets.jobs" in _modules("csi_assets") and "csi_model.model" in _modules("csi_model")


def test_the_import_check_sees_lazy_imports(tmp_path: Path) -> None:
    """Dagster imports hidden inside a function are reported with their lines; the library's own are not."""
    module = tmp_path / "lazy.py"
    module.write_text("import numpy\nfrom csi_assets import layouts\n\n\ndef f():\n"
                      "    from csi_assets.assets.training import trained_model\n    import dagster as dg\n"
                      "    from csi_assets import resources\n")
    assert [entry.split(":", 1)[1] for entry in _forbidden_imports(module)] == [
        "6 csi_assets.assets.training", "7 dagster", "8 csi_assets.resources"]


def test_csi_model_imports_neither_dagster_nor_duckdb() -> None:
    assert _first_importer(_modules("csi_model"), ("dagster", "duckdb")) == {}


def test_application_layer_imports_no_dagster_at_load() -> None:
    assert _first_importer(application_modules(), ("dagster",)) == {}


@pytest.mark.parametrize("module", application_modules())
def test_application_module_never_imports_the_dagster_layer(module: str) -> None:
    """Not even lazily inside a function: the CLI and ``bench/`` must run without the orchestrator."""
    assert _forbidden_imports(_file_of(module)) == []


@pytest.mark.parametrize("script", [p.name for p in sorted((REPO / "bench").glob("*.py"))])
def test_bench_uses_only_the_application_layer(script: str) -> None:
    assert _forbidden_imports(REPO / "bench" / script) == []


def test_the_tree_is_clean_under_the_projects_ruff_configuration() -> None:
    """``ruff check`` with the settings in pyproject.toml finds nothing (pinned in the dev extra)."""
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise",
                             str(REPO)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
