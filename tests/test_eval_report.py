"""eval_report on a real synthetic project with a tiny registered model: the stored metrics are exactly what
``csi_model.metrics`` computes from the stored distance matrix and labels, and the report files are real."""

from __future__ import annotations

import dataclasses
import json

import dagster as dg
import numpy as np
import pytest
from matplotlib import image

from csi_assets.assets import evaluation
from csi_assets.cli import main as csi
from csi_assets.store import evaluations as evaluation_store
from csi_model import hparams
from csi_model.metrics import retrieval_metrics
from tests.serving_fixtures import project_with_model, random_model, register_model


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    project, _, hp = project_with_model(tmp_path_factory.mktemp("evaluation"), works=6, perfs=3)
    test_txt, full_txt = str(project.dataset_dir / "test.txt"), str(project.dataset_dir / "full.txt")
    hp = dataclasses.replace(hp, bootstrap=50, test_sets={
        "self": hparams.TestSetHParams(query_path=test_txt, ref_path=test_txt),
        "against_all": hparams.TestSetHParams(query_path=test_txt, ref_path=full_txt),
    })
    model_id = register_model(project, random_model(hp, seed=1), hp)
    result = dg.materialize([evaluation.eval_report], resources=project.resources,
                            instance=dg.DagsterInstance.ephemeral())
    assert result.success
    metadata = result.asset_materializations_for_node("eval_report")[0].metadata
    return project, model_id, metadata


@pytest.mark.parametrize("test_set", ["self", "against_all"])
def test_stored_map_equals_metrics_recomputed_from_the_saved_matrix(evaluated, test_set) -> None:
    project, model_id, metadata = evaluated
    records = {r["test_set"]: r for r in evaluation_store.evaluations(project.store, "dataset", model_id)}
    record = records[test_set]
    folder = project.training_dir / "reports" / model_id / test_set
    assert record["report_path"] == str(folder)
    distances = np.load(folder / "distances.npy")
    excluded = np.load(folder / "excluded.npy")
    recomputed = retrieval_metrics(distances, np.load(folder / "query_labels.npy"),
                                   np.load(folder / "ref_labels.npy"), excluded)
    assert record["metrics"]["mean_ap"] == pytest.approx(recomputed.mean_ap, abs=1e-12)
    assert record["metrics"]["mr1"] == pytest.approx(recomputed.mr1, abs=1e-12)
    assert metadata[f"{test_set}/mAP"].value == pytest.approx(recomputed.mean_ap, abs=1e-4)
    assert (distances[excluded] == -1).all() and (distances[~excluded] >= -1e-5).all()
    interval = record["metrics"]["bootstrap"]["mean_ap"]
    assert interval["n_bootstrap"] == 50 and interval["ci_low"] <= recomputed.mean_ap <= interval["ci_high"]
    assert json.loads((folder / "metrics.json").read_text())["mean_ap"] == record["metrics"]["mean_ap"]
    assert "mAP" in (folder / "report.md").read_text()


def test_shapes_exclusions_and_plot(evaluated) -> None:
    project, model_id, metadata = evaluated
    reports = project.training_dir / "reports" / model_id
    self_excluded = np.load(reports / "self" / "excluded.npy")
    assert self_excluded.shape[0] == self_excluded.shape[1] and np.array_equal(self_excluded,
                                                                              np.eye(len(self_excluded)))
    against = np.load(reports / "against_all" / "excluded.npy")
    assert against.shape == (len(self_excluded), 18) and against.sum(axis=1).tolist() == [1] * len(against)
    for test_set in ("self", "against_all"):
        png = reports / test_set / "tsne.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert image.imread(png).shape[:2] == (1000, 1000)
    assert "data:image/png;base64," in metadata["report"].value


def test_csi_eval_prints_the_stored_metrics(evaluated, capsys, monkeypatch) -> None:
    project, model_id, _ = evaluated
    args = ["eval", "--dataset-dir", str(project.dataset_dir), "--store", str(project.store_path)]
    assert csi(args + ["--json"]) == 0
    printed = {r["test_set"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(printed) == {"self", "against_all"} and printed["self"]["model"] == model_id
    assert csi(args) == 0
    table = capsys.readouterr().out
    assert "against_all" in table and "mAP" in table
    assert csi(["eval", "--dataset-dir", str(project.dataset_dir), "--store",
                str(project.root / "nowhere.duckdb")]) == 2
    assert "materialize" in capsys.readouterr().err
