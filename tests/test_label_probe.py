"""label_probe: work-grouped folds never leak a work, the scores match their definitions, and on synthetic covers
an audible category beats its majority baseline while a coin-flip tag does not -- through the real path
(catalog -> store labels, stored embeddings of the promoted model -> probe -> report files)."""

from __future__ import annotations

import json
import warnings

import dagster as dg
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from csi_assets.assets import labels, serving
from csi_model.label_probe import LinearProbe, classification_scores, fit_linear, grouped_folds, probe_label
from tests.graph_fixtures import make_project
from tests.serving_fixtures import ORIGINALS_ONLY, materialize_data, random_model, register_model, serving_hparams

PROBED = ("register", "batch_tag")


def test_work_grouped_folds_never_share_a_work_and_test_every_performance_once() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_works = int(rng.integers(2, 30))
        groups = rng.integers(0, n_works, size=int(rng.integers(n_works, 120)))
        groups[:n_works] = np.arange(n_works)  # every work present
        y = rng.integers(0, int(rng.integers(2, 5)), size=len(groups))
        folds = grouped_folds(y, groups, seed=int(rng.integers(1000)))
        for train, test in folds:
            assert not set(groups[train]) & set(groups[test])
        tested = np.concatenate([test for _, test in folds])
        assert sorted(tested.tolist()) == list(range(len(groups)))


def test_scores_equal_scikit_learn_definitions() -> None:
    rng = np.random.default_rng(1)
    warnings.simplefilter("ignore")
    for _ in range(300):
        k, n = int(rng.integers(2, 5)), int(rng.integers(1, 40))
        y_true, y_pred = rng.integers(0, k, n), rng.integers(0, k, n)
        scores = classification_scores(y_true, y_pred, k)
        assert scores["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
        assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
        assert scores["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=np.arange(k), average="macro",
                                                            zero_division=0))


def test_saved_linear_probe_predicts_as_scikit_learn_for_two_and_three_classes(tmp_path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(2)
    for k in (2, 3):
        x, y = rng.normal(size=(60, 8)), rng.integers(0, k, 60)
        probe = fit_linear(x, y, [f"c{i}" for i in range(k)])
        probe.save(tmp_path / f"p{k}.npz")
        loaded = LinearProbe.load(tmp_path / f"p{k}.npz")
        reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=0))
        expected = reference.fit(x, y).predict_proba(x)
        assert np.allclose(loaded.predict_proba(x), expected, atol=1e-6)


def test_a_value_of_a_single_work_is_left_out_and_reported() -> None:
    rng = np.random.default_rng(3)
    groups = np.repeat(np.arange(8), 3)
    values = np.where(groups % 2 == 0, "even", "odd").astype(object)
    values[groups == 7] = "rare"
    result = probe_label(rng.normal(size=(24, 4)), values, groups, n_bootstrap=10)
    assert result.left_out == {"rare": 3} and result.classes == ["even", "odd"]


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """12 works x 4 performances of 6 s, an untrained tiny CoverHunter promoted, its reference embeddings
    stored, then label_probe materialised for both labels."""
    root = tmp_path_factory.mktemp("label_probe")
    project = make_project(root, works=12, perfs=4, seconds=6.0,
                           data_hparams={**ORIGINALS_ONLY, "labels": ["mode", *PROBED]})
    materialize_data(project)
    hp = serving_hparams()
    model_id = register_model(project, random_model(hp), hp)
    instance = dg.DagsterInstance.ephemeral()
    assert dg.materialize([serving.reference_embeddings], resources=project.resources, instance=instance).success
    probe_assets = labels.label_assets(["mode", *PROBED])
    metadata = {}
    for label in PROBED:
        result = dg.materialize([*probe_assets, serving.reference_embeddings], selection=["label_probe"],
                                partition_key=label, resources=project.resources, instance=instance)
        assert result.success
        metadata[label] = result.asset_materializations_for_node("label_probe")[0].metadata
    return project, model_id, metadata


def test_audible_label_beats_its_baseline_and_random_tag_does_not(probed) -> None:
    _, _, metadata = probed
    audible, tag = metadata["register"], metadata["batch_tag"]
    assert audible["above_baseline"].value is True
    assert audible["logistic/balanced_accuracy"].value >= audible["majority/balanced_accuracy"].value + 0.2
    assert tag["above_baseline"].value is False
    assert abs(tag["logistic/balanced_accuracy"].value - 0.5) < 0.2
    assert "Not evidenced" in tag["verdict"].value and "no proof" in tag["verdict"].value


def test_probe_report_files_and_counts(probed) -> None:
    project, model_id, metadata = probed
    folder = project.training_dir / "reports" / model_id / "labels" / "register"
    assert {p.name for p in folder.iterdir()} == {"metrics.json", "report.md", "confusion.png", "tsne.png",
                                                 "predictions.csv", labels.PROBE_FILE}
    record = json.loads((folder / "metrics.json").read_text())
    assert record["counts"] == {"catalogued": 48, "missing_value": 0, "with_value_not_embedded": 0, "probed": 48}
    assert set(record["scores"]) == {"logistic", "knn", "majority"}
    assert LinearProbe.load(folder / labels.PROBE_FILE).classes == ["high", "low"]
    assert len((folder / "predictions.csv").read_text().splitlines()) == 49
