"""eval_report on a real synthetic project with a tiny registered model: the stored metrics are exactly what
``csi_model.metrics`` computes from the stored distance matrix and labels, the report files are real, and queries
that cannot be answered are counted, never scored."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from matplotlib import image

from csi_assets.assets import evaluation
from csi_assets.cli import main as csi
from csi_assets.store import evaluations as evaluation_store
from csi_model import hparams
from csi_model.metrics import answerable_queries, retrieval_metrics
from tests.graph_fixtures import materialize
from tests.serving_fixtures import project_with_model, random_model, register_model


def _perf_list(path, perfs) -> str:
    path.write_text("".join(json.dumps({"perf": perf}) + "\n" for perf in perfs))
    return str(path)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A run that must fail (a test set of single performances), then the real one; returns its metadata and
    the failed run's message."""
    project, _, hp = project_with_model(tmp_path_factory.mktemp("evaluation"), works=6, perfs=3)
    test_txt, full_txt = str(project.dataset_dir / "test.txt"), str(project.dataset_dir / "full.txt")
    singles = _perf_list(project.root / "singles.txt", ["w000_p0", "w001_p0"])
    register_model(project, random_model(hp, seed=2), dataclasses.replace(hp, test_sets={
        "singles": hparams.TestSetHParams(query_path=singles, ref_path=singles)}))
    failed = materialize(project, [evaluation.eval_report], raise_on_error=False)
    failure = next(e for e in failed.all_events if e.is_step_failure).step_failure_data.error.message
    with_single = _perf_list(project.root / "with_single.txt", ["w000_p0", "w000_p1", "w000_p2", "w001_p0"])
    hp = dataclasses.replace(hp, bootstrap=50, test_sets={
        "self": hparams.TestSetHParams(query_path=test_txt, ref_path=test_txt),
        "against_all": hparams.TestSetHParams(query_path=test_txt, ref_path=full_txt),
        "with_single": hparams.TestSetHParams(query_path=with_single, ref_path=with_single),
    })
    model_id = register_model(project, random_model(hp, seed=1), hp)
    result = materialize(project, [evaluation.eval_report])
    assert result.success
    metadata = result.asset_materializations_for_node("eval_report")[0].metadata
    return project, model_id, metadata, failure


@pytest.mark.parametrize("test_set", ["self", "against_all", "with_single"])
def test_stored_map_equals_metrics_recomputed_from_the_saved_matrix(evaluated, test_set) -> None:
    project, model_id, metadata, _ = evaluated
    records = {r.test_set: r for r in evaluation_store.evaluations(project.store, "dataset", model_id)}
    record = records[test_set]
    folder = project.training_dir / "reports" / model_id / test_set
    assert record.report_path == str(folder)
    distances = np.load(folder / "distances.npy")
    excluded = np.load(folder / "excluded.npy")
    recomputed = retrieval_metrics(distances, np.load(folder / "query_labels.npy"),
                                   np.load(folder / "ref_labels.npy"), excluded)
    assert record.metrics["mean_ap"] == pytest.approx(recomputed.mean_ap, abs=1e-12)
    assert record.metrics["mr1"] == pytest.approx(recomputed.mr1, abs=1e-12)
    assert metadata[f"{test_set}/mAP"].value == pytest.approx(recomputed.mean_ap, abs=1e-4)
    assert (distances[excluded] == -1).all() and (distances[~excluded] >= -1e-5).all()
    interval = record.metrics["bootstrap"]["mean_ap"]
    assert interval["n_bootstrap"] == 50 and interval["ci_low"] <= recomputed.mean_ap <= interval["ci_high"]
    assert json.loads((folder / "metrics.json").read_text())["mean_ap"] == record.metrics["mean_ap"]
    assert "mAP" in (folder / "report.md").read_text()


@pytest.mark.parametrize("test_set", ["self", "against_all", "with_single"])
def test_unanswerable_queries_are_counted_everywhere_and_scored_nowhere(evaluated, test_set) -> None:
    project, model_id, metadata, _ = evaluated
    folder = project.training_dir / "reports" / model_id / test_set
    labels = np.load(folder / "query_labels.npy")
    unanswerable = int((~answerable_queries(labels, np.load(folder / "ref_labels.npy"),
                                            np.load(folder / "excluded.npy"))).sum())
    if test_set == "with_single":
        assert unanswerable == 1
    stored = {r.test_set: r for r in evaluation_store.evaluations(project.store, "dataset", model_id)}
    for record in (stored[test_set].metrics, json.loads((folder / "metrics.json").read_text())):
        assert record["n_unanswerable"] == unanswerable and record["n_queries"] == len(labels)
        assert record["mr1"] >= 1.0 and record["bootstrap"]["mr1"]["ci_low"] >= 1.0
    assert metadata[f"{test_set}/unanswerable"].value == unanswerable
    if unanswerable:
        assert f"{unanswerable} are unanswerable" in (folder / "report.md").read_text()


def test_a_test_set_without_answerable_queries_fails_naming_it(evaluated) -> None:
    *_, failure = evaluated
    assert "test set 'singles': none of its 2 queries has another performance of its work" in failure


def test_shapes_exclusions_and_plot(evaluated) -> None:
    project, model_id, metadata, _ = evaluated
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
    project, model_id, _, _ = evaluated
    args = ["eval", "--dataset-dir", str(project.dataset_dir), "--store", str(project.store_path)]
    assert csi(args + ["--json"]) == 0
    printed = {r["test_set"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(printed) == {"self", "against_all", "with_single"} and printed["self"]["model"] == model_id
    assert printed["with_single"]["metrics"]["n_unanswerable"] == 1
    assert csi(args) == 0
    table = capsys.readouterr().out
    assert "against_all" in table and "mAP" in table and "unanswerable" in table
    assert csi(["eval", "--dataset-dir", str(project.dataset_dir), "--store",
                str(project.root / "nowhere.duckdb")]) == 2
    assert "materialize" in capsys.readouterr().err


def test_csi_eval_flags_records_stored_before_unanswerable_queries_were_counted(evaluated, capsys) -> None:
    project, *_ = evaluated
    old = {"mean_ap": 0.8, "mr1": 0.8, "hit_rate": 0.8, "precision_at_10": 0.08, "n_queries": 5}
    evaluation_store.record_evaluation(project.store, "dataset", "old-model", "self", old, "/nowhere")
    assert csi(["eval", "--model", "old-model", "--dataset-dir", str(project.dataset_dir), "--store",
                str(project.store_path)]) == 0
    printed = capsys.readouterr().out
    assert "?" in printed and "materialize eval_report again" in printed
