"""label_probe: work-grouped folds never leak a work, the scores match their definitions, and on synthetic covers
an audible category beats its majority baseline while a coin-flip tag does not -- through the real path
(catalog -> store labels, stored embeddings of the promoted model -> probe -> report files)."""

from __future__ import annotations

import dataclasses
import json
import warnings

import dagster as dg
import numpy as np
import pytest
import soundfile as sf
from sklearn.metrics import balanced_accuracy_score, f1_score

from csi_assets.assets import labels, serving
from csi_assets.classify import PROBE_FILE
from csi_assets.store.records import FeatureTableRecord
from csi_model.label_probe import LinearProbe, classification_scores, fit_linear, grouped_folds, probe_label
from tests.graph_fixtures import make_project, materialize
from tests.record_fixtures import table_record
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
        reference = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                                       random_state=0))
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
    assert materialize(project, [serving.reference_embeddings], instance=instance).success
    metadata = {}
    for label in PROBED:
        result = materialize(project, [labels.label_probe, serving.reference_embeddings], instance=instance,
                             selection=["label_probe"], label=label)
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
                                                 "predictions.csv", PROBE_FILE}
    record = json.loads((folder / "metrics.json").read_text())
    assert record["counts"] == {"catalogued": 48, "missing_value": 0, "with_value_not_embedded": 0,
                                "with_value_and_embedding": 48}
    assert set(record["scores"]) == {"logistic", "knn", "majority"}
    assert LinearProbe.load(folder / PROBE_FILE).classes == ["high", "low"]
    assert len((folder / "predictions.csv").read_text().splitlines()) == 49


@pytest.mark.parametrize("asset", [labels.label_probe, labels.label_model], ids=lambda a: a.key.path[-1])
def test_a_label_the_dataset_does_not_configure_fails_naming_it_and_the_hparams(probed, asset) -> None:
    """Label partitions are one list across datasets: a (dataset, label) pair whose dataset's hparams do not list
    the label fails with a message saying where to add it, and writes no report folder for it."""
    project, model_id, _ = probed
    result = materialize(project, [asset], label="tempo", raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = str(failure.step_failure_data.user_failure_data.description)
    assert "label 'tempo' is not among the labels of dataset 'dataset'" in message
    assert "mode, register, batch_tag" in message and str(project.dataset_dir / "hparams.yaml") in message
    assert not (project.training_dir / "reports" / model_id / "labels" / "tempo").exists()
    assert not (project.training_dir / "labels" / "tempo").exists()


def test_label_split_keeps_each_work_on_one_side(probed) -> None:
    project, _, _ = probed
    from csi_assets.label_model import label_split
    from csi_assets.store import catalog as catalog_store
    from csi_assets.store import features as feature_store

    settings_hash = project.resources["dataset"].layout(project.dataset).cqt_settings().settings_hash()
    table = feature_store.feature_table(project.store, "dataset", settings_hash)
    work_of = {r.variant: r.work_id for r in table}
    for seed in range(5):
        split = label_split(table, catalog_store.performance_labels(project.store, "dataset", "register"), seed,
                            mean_size=1)
        sides = [{work_of[it.perf] for it in items} for items in (split.train, split.val, split.test)]
        assert all(sides) and not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert split.test_works.tolist() == [work_of[it.perf] for it in split.test]


def test_warm_start_loads_the_embedding_network_and_leaves_the_class_heads(tmp_path) -> None:
    import torch

    from csi_model.checkpoint import CLASS_HEAD_KEYS, load_embedding_network, save_checkpoint

    hp = serving_hparams()
    source, target = random_model(hp, num_classes=8, seed=1), random_model(hp, num_classes=2, seed=2)
    heads_before = {k: v.clone() for k, v in target.state_dict().items() if k in CLASS_HEAD_KEYS}
    pair = save_checkpoint(tmp_path, 0, source, torch.optim.AdamW(source.parameters()), steps=0, early_stopping={})
    load_embedding_network(pair.generator, target)
    for key, value in target.state_dict().items():
        expected = heads_before[key] if key in CLASS_HEAD_KEYS else source.state_dict()[key]
        assert torch.equal(value, expected), key


def _classify(project, capsys, *args: str) -> tuple[int, str, str]:
    from csi_assets.cli import main

    code = main(["classify", *args, "--store", str(project.store_path), "--dataset-dir", str(project.dataset_dir)])
    out, err = capsys.readouterr()
    return code, out, err


def _check_prediction_shape(prediction: dict, label: str, values: set[str]) -> None:
    assert set(prediction) == {"query", "label", "value", "probability", "top", "source", "model"}
    assert prediction["label"] == label and prediction["value"] in values
    top = prediction["top"]
    assert 1 <= len(top) <= 3 and all(set(t) == {"value", "probability"} for t in top)
    assert top[0] == {"value": prediction["value"], "probability": prediction["probability"]}
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    assert 0.0 <= prediction["probability"] <= 1.0 and sum(t["probability"] for t in top) <= 1.0 + 1e-3


def test_classify_json_from_the_probe(probed, capsys) -> None:
    project, model_id, _ = probed
    wavs = sorted(str(p) for p in (project.dataset_dir / "wav").glob("*.wav"))[:2]
    code, out, _ = _classify(project, capsys, *wavs, "--label", "batch_tag", "--json")
    predictions = json.loads(out)
    assert code == 0 and [p["query"] for p in predictions] == wavs
    for prediction in predictions:
        _check_prediction_shape(prediction, "batch_tag", {"A", "B"})
        assert prediction["source"] == "probe" and prediction["model"] == model_id


def test_classify_checks_every_file_before_any_model_loads(probed, capsys, tmp_path) -> None:
    project, _, _ = probed
    good = str(sorted((project.dataset_dir / "wav").glob("*.wav"))[0])
    garbage = tmp_path / "noise.wav"
    garbage.write_bytes(b"not audio at all")
    missing = str(tmp_path / "missing.flac")
    blip = tmp_path / "blip.wav"  # decodable, but too short for the model: listed, the others still answered
    sf.write(blip, np.sin(np.arange(1600) * 0.2).astype(np.float32), 16000)
    code, out, err = _classify(project, capsys, good, missing, str(garbage), str(blip), "--label", "batch_tag",
                               "--json")
    assert code == 1 and [p["query"] for p in json.loads(out)] == [good]
    assert missing in err and str(garbage) in err and f"{blip}: too short to classify" in err
    assert "1 of 4 recordings classified" in err and "Traceback" not in err
    from csi_assets.cli import main

    code = main(["classify", missing, str(garbage), "--label", "batch_tag", "--store", str(tmp_path / "none.duckdb"),
                 "--dataset-dir", str(tmp_path / "nowhere")])
    _, err = capsys.readouterr()
    assert code == 2 and missing in err and "store" not in err  # failed on the audio, before the store or model


def test_label_model_trains_scores_held_out_works_and_serves_classify(probed, capsys) -> None:
    project, _, _ = probed
    config = {"ops": {"label_model": {"config": {"max_epochs": 2, "warm_start": True, "augmentation": False}}}}
    result = materialize(project, [labels.label_model], run_config=config, label="register")
    assert result.success
    metadata = result.asset_materializations_for_node("label_model")[0].metadata
    assert {"label_model/balanced_accuracy", "majority/macro_f1", "verdict", "above_baseline"} <= set(metadata)
    folder = project.training_dir / "labels" / "register"
    record = json.loads((folder / "label_model.json").read_text())
    assert record["classes"] == ["high", "low"] and record["warm_start"]
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["do_00000000", "do_00000001",
                                                                           "g_00000000", "g_00000001"]
    wav = str(sorted((project.dataset_dir / "wav").glob("*.wav"))[0])
    code, out, _ = _classify(project, capsys, wav, "--label", "register", "--json")
    (prediction,) = json.loads(out)
    assert code == 0 and prediction["source"] == "label_model"
    _check_prediction_shape(prediction, "register", {"high", "low"})


def test_trainer_warm_start_applies_to_a_fresh_run_only(tmp_path) -> None:
    import torch

    from csi_model.checkpoint import CLASS_HEAD_KEYS, save_checkpoint
    from csi_model.training import Trainer, WarmStart
    from tests.train_fixtures import synthetic_features, tiny_hparams

    hp = tiny_hparams(max_epochs=0)
    items = synthetic_features(tmp_path / "feat", n_works=2, perfs_per_work=4)
    source = random_model(hp, num_classes=8, seed=3)
    pair = save_checkpoint(tmp_path / "src", 0, source, torch.optim.AdamW(source.parameters()), steps=0,
                           early_stopping={})
    trainer = Trainer(hp, items, tmp_path / "run", warm_start=WarmStart(pair.generator, heads=False))
    trainer.run()
    loaded = trainer.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in source.state_dict().items() if k not in CLASS_HEAD_KEYS)
    trained = Trainer(dataclasses.replace(hp, max_epochs=1), items, tmp_path / "run",
                      warm_start=WarmStart(pair.generator, heads=False))
    trained.run()  # one epoch from the warm start, checkpointed
    other = random_model(hp, num_classes=8, seed=4)
    other_pair = save_checkpoint(tmp_path / "other", 0, other, torch.optim.AdamW(other.parameters()), steps=0,
                                 early_stopping={})
    resumed = Trainer(dataclasses.replace(hp, max_epochs=1), items, tmp_path / "run",
                      warm_start=WarmStart(other_pair.generator, heads=False))
    resumed.run()  # a checkpoint exists: it resumes from it and ignores the warm start
    assert all(torch.equal(resumed.model.state_dict()[k], v) for k, v in trained.model.state_dict().items())


def test_label_split_leaves_out_clips_too_short_for_the_model_and_stored_variants_in_feature_mode() -> None:
    """Whatever the catalog accepts, a label model trains: a clip shorter than the model's minimum is listed in
    ``too_short`` and in no split; with feature-domain tempo, stored tempo copies are not trained on."""
    from csi_assets.label_model import label_split
    from csi_model.model import CoverHunter

    shortest = CoverHunter.min_raw_frames(3)

    def row(perf: str, work: int, n_frames: int, speed: float = 1.0) -> FeatureTableRecord:
        variant = perf if speed == 1.0 else f"sp_{speed}-{perf}"
        return table_record(variant, perf, speed, work, f"/f/{variant}.npy", n_frames)

    table = [row(f"w{w}_p{p}", w, 500) for w in range(8) for p in range(3)]
    table += [row("w0_p0", 0, 550, 0.9), row("blip", 1, shortest - 1)]
    values = {r.perf: "high" if r.work_id % 2 else "low" for r in table}
    for stored_variants in (True, False):
        split = label_split(table, values, seed=0, mean_size=3, stored_variants=stored_variants)
        used = [it.perf for it in (*split.train, *split.val, *split.test)]
        assert [r.perf for r in split.too_short] == ["blip"] and "blip" not in used
        trained_on_w0 = "w0_p0" in [it.perf for it in split.train]  # a copy goes where its original goes
        assert ("sp_0.9-w0_p0" in used) == (stored_variants and trained_on_w0)
