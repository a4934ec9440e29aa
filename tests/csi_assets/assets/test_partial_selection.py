"""A partial selection on a fresh dataset: every asset whose upstream data do not exist fails, naming the
upstream asset to materialize first, instead of computing from nothing and reporting success."""

from __future__ import annotations

import dagster as dg
import pytest

from csi_assets.assets import data
from tests.graph_fixtures import make_project, materialize

DATA_ASSETS = dg.load_assets_from_modules([data])
ROOTS = {"dataset_catalog"}


def _run(tmp_path, selection: dg.AssetSelection) -> dg.ExecuteInJobResult:
    project = make_project(tmp_path, works=2, perfs=2, seconds=3.0)
    return materialize(project, DATA_ASSETS, selection=selection, raise_on_error=False)


def _failures(result: dg.ExecuteInJobResult) -> dict[str, str]:
    """{asset name: failure text} of the failed steps (a graph asset's op steps count for the asset)."""
    return {event.step_key.split(".")[0]: str(event.step_failure_data.user_failure_data.description)
            for event in result.all_events if event.is_step_failure and event.step_failure_data.user_failure_data}


def _ancestors(asset: dg.AssetsDefinition) -> set[str]:
    """Every asset upstream of ``asset`` in the data group (the asset to run first may be further up)."""
    by_key = {a.key: a for a in DATA_ASSETS}
    found, todo = set(), [k for k in asset.dependency_keys if k != asset.key]
    while todo:
        key = todo.pop()
        if key not in found:
            found.add(key)
            todo += [k for k in by_key[key].dependency_keys if k != key] if key in by_key else []
    return {key.to_user_string() for key in found}


@pytest.mark.parametrize("asset", [a for a in DATA_ASSETS if a.key.to_user_string() not in ROOTS],
                         ids=lambda a: a.key.to_user_string())
def test_an_asset_run_alone_on_a_fresh_dataset_names_an_upstream_asset_to_run_first(tmp_path, asset) -> None:
    name = asset.key.to_user_string()
    result = _run(tmp_path, dg.AssetSelection.assets(asset))
    failures = _failures(result)
    assert not result.success and set(failures) == {name}
    assert any(f"materialize {parent} first" in failures[name] for parent in _ancestors(asset)), failures[name]
    assert not result.asset_materializations_for_node(name.split(".")[0])


def test_plus_data_splits_on_a_fresh_dataset_fails_each_step_naming_its_upstream(tmp_path) -> None:
    result = _run(tmp_path, dg.AssetSelection.assets("data_splits").upstream(depth=1))
    failures = _failures(result)
    assert "materialize speed_variants first" in failures["cqt_features"]
    assert "materialize dataset_catalog first" in failures["work_ids"]
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert not result.success and materialized == set()
