"""Import of CoverHunterMPS folders, end to end: a reference-style data folder (wavs, tempo copies, full.txt with
feat paths relative to the reference's working directory, float32 cqt_feat/*.npy) and training folder (reference
hparams keys, g_ checkpoints holding {"generator": state_dict}) go into the store as they are; then
reference_embeddings materialises on the imported features and ``csi identify`` finds the imported recordings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from csi_assets.assets import serving
from csi_assets.cli import main as csi
from csi_assets.importer import IMPORT_ORIGIN, ReferenceImportError, best_generator, import_reference
from csi_assets.store import Store
from csi_assets.store import catalog as catalog_store
from csi_assets.store import features as feature_store
from csi_assets.store import models as model_store
from csi_assets.store import splits as split_store
from csi_assets.store.records import FeatureRecord
from csi_model.audio import load_audio
from csi_model.catalog import parse_catalog
from csi_model.checkpoint import model_fingerprint
from csi_model.cqt import CqtSettings, compute_cqt
from csi_model.model import CoverHunter, ModelConfig
from csi_model.synth import generate_covers
from csi_model.tempo import plan_variants, render_variant
from tests.graph_fixtures import Project, materialize

WORK_IDS = {"work_000": 12, "work_001": 10, "work_002": 11}  # not sorted order: ids must be kept as they are
DATA_HPARAMS = {"fmin": 32, "n_bins": 96, "bins_per_octave": 12, "aug_speed_mode": [0.9, 1.0], "device": "mps",
                "val_data_split": 0.1, "val_unseen": 0.02, "test_data_split": 0.1, "test_data_unseen": 0.04}
TRAINING_HPARAMS = {  # the reference's key layout (see docs/reference_tool.md), tiny sizes
    "train_path": "data/covers/train.txt", "val_path": "data/covers/val.txt",
    "covers": {"query_path": "data/covers/full.txt", "ref_path": "data/covers/full.txt",
               "every_n_epoch_to_test": 1},
    "early_stop_metric": "val_loss", "every_n_epoch_to_test": 1, "every_n_epoch_to_save": 1, "data_type": "cqt",
    "chunk_frame": [24, 20, 16], "chunk_s": 2.88, "mode": "random", "mean_size": 3, "m_per_class": 4,
    "cqt": {"hop_size": 0.04}, "device": "mps", "seed": 1234, "num_workers": 1, "num_gpus": 1, "batch_size": 8,
    "learning_rate": 0.001, "adam_b1": 0.8, "adam_b2": 0.99, "lr_decay": 0.9, "min_lr": 0.0001,
    "warmup": False, "warmup_steps": 20000, "early_stopping_patience": 6, "max_epochs": 100,
    "input_dim": 96, "embed_dim": 32, "pool_type": "attention",
    "encoder": {"output_dims": 32, "num_blocks": 1, "attention_dim": 64},
    "foc": {"output_dims": 16, "weight": 1.0, "gamma": 2}, "triplet": {"margin": 0.3, "weight": 0.1},
    "center": {"weight": 0.0},
}


def _reference_model(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    config = ModelConfig(input_dim=96, embed_dim=32, d_model=32, num_blocks=1, ff_dim=64, num_classes=16)
    state = CoverHunter(config).state_dict()
    state["_center_loss.centers"] = torch.randn(16, 32)  # the reference saves centres even with center weight 0
    return state


def make_reference_folders(repo: Path) -> tuple[Path, Path]:
    """``repo/data/covers`` and ``repo/training/covers`` as CoverHunterMPS leaves them; paths inside the files are
    relative to ``repo`` (the reference runs from its repository root)."""
    data = repo / "data" / "covers"
    rows = parse_catalog(generate_covers(data, works=3, perfs=2, seed=1, seconds=6.0)).rows
    (data / "hparams.yaml").write_text(yaml.safe_dump(DATA_HPARAMS))
    variants = plan_variants(rows, [1.0, 0.9], data / "sp_wav")
    for variant in variants:
        if not variant.is_original:
            render_variant(variant)
    features = compute_cqt([load_audio(v.wav) for v in variants], CqtSettings(), torch.device("cpu"))
    work_of = {r.perf: r.work for r in rows}
    lines = []
    for variant, feature in zip(variants, features):
        feat = data / "cqt_feat" / f"{variant.perf}.cqt.npy"
        feat.parent.mkdir(exist_ok=True)
        np.save(feat, feature.astype(np.float32))  # the reference's GPU path writes float32
        work = work_of[variant.original_perf]
        lines.append({"perf": variant.perf, "wav": str(variant.wav.relative_to(repo)), "dur_s": variant.dur_s,
                      "work": work, "version": "v", "feat": str(feat.relative_to(repo)),
                      "feat_len": len(feature), "work_id": WORK_IDS[work]})
    (data / "full.txt").write_text("".join(json.dumps(line) + "\n" for line in lines))
    training = repo / "training" / "covers"
    (training / "config").mkdir(parents=True)
    (training / "config" / "hparams.yaml").write_text(yaml.safe_dump(TRAINING_HPARAMS))
    (training / "checkpoints").mkdir()
    for epoch, seed in ((3, 1), (10, 2), (9, 3)):
        torch.save({"generator": _reference_model(seed)}, training / "checkpoints" / f"g_{epoch:08d}")
    return data, training


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    repo = tmp_path_factory.mktemp("reference_repo")
    data, training = make_reference_folders(repo)
    store_path = repo / "csi.duckdb"
    assert csi(["import", "--data", str(data), "--training", str(training), "--store", str(store_path),
                "--cwd", str(repo)]) == 0
    return repo, data, training, store_path


def test_catalog_variants_features_and_work_ids_are_imported_as_they_are(imported) -> None:
    repo, data, _, store_path = imported
    store = Store(store_path)
    performances = catalog_store.performances(store, "covers")
    assert len(performances) == 6 and not any(p.perf.startswith("sp_") for p in performances)
    variants = feature_store.variants(store, "covers")
    assert len(variants) == 12
    assert {v.speed for v in variants} == {0.9, 1.0}
    assert all(v.variant == f"sp_0.9-{v.perf}" for v in variants if v.speed == 0.9)
    assert split_store.work_ids(store, "covers") == WORK_IDS
    settings_hash = CqtSettings().settings_hash()
    stored = feature_store.features(store, "covers", settings_hash)
    assert len(stored) == 12
    row = stored["w000_p0"]
    assert Path(row.path) == data / "cqt_feat" / "w000_p0.cqt.npy"  # registered in place, not copied
    assert row.n_frames == np.load(row.path, mmap_mode="r").shape[0]
    settings = row.settings
    assert settings["origin"] == IMPORT_ORIGIN and "unknown" in settings["cqt_class"]
    assert settings["dtype"] == ["float32"]
    table = feature_store.feature_table(store, "covers", settings_hash)
    assert len(table) == 12 and {r.work_id for r in table} == set(WORK_IDS.values())


def test_the_highest_epoch_generator_is_registered_and_promoted(imported) -> None:
    _, _, training, store_path = imported
    model = model_store.promoted_model(Store(store_path), "covers")
    assert model is not None and model.epoch == 10
    assert Path(model.checkpoint) == training / "checkpoints" / "g_00000010"
    assert model.fingerprint == model_fingerprint(_reference_model(2))
    assert model.hparams["encoder"]["num_blocks"] == 1 and model.hparams["mean_size"] == 3


def test_identify_finds_imported_recordings_after_reference_embeddings(imported, capsys) -> None:
    repo, data, training, store_path = imported
    result = materialize(Project(repo, data, training, store_path), [serving.reference_embeddings])
    assert result.success
    metadata = result.asset_materializations_for_node("reference_embeddings")[0].metadata
    assert metadata["performances"].value == 6
    capsys.readouterr()
    query = data / "wav" / "w001_p1.wav"
    assert csi(["identify", str(query), "--dataset-dir", str(data), "--store", str(store_path), "--top", "3",
                "--json"]) == 0
    matches = json.loads(capsys.readouterr().out)[0]["matches"]
    assert matches[0]["perf"] == "w001_p1" and matches[0]["distance"] < 1e-3


def test_importing_again_changes_nothing(imported, capsys) -> None:
    repo, data, training, store_path = imported
    store = Store(store_path)
    before = feature_store.features(store, "covers", CqtSettings().settings_hash())
    report = import_reference(store, data, training, repo)
    assert (report.performances, report.features, report.model_id is not None) == (6, 12, True)
    assert feature_store.features(store, "covers", CqtSettings().settings_hash()).keys() == before.keys()
    assert len(model_store.models(store, "covers")) == 1


def test_bad_lines_are_rejected_with_file_and_line(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    data, _ = make_reference_folders(repo)
    full = data / "full.txt"
    lines = full.read_text().splitlines()
    broken = json.loads(lines[1])
    broken["feat"] = "data/covers/cqt_feat/missing.cqt.npy"
    broken["perf"] = "w000_p9"
    full.write_text("\n".join([*lines, json.dumps(broken), "{oops"]) + "\n")
    report = import_reference(Store(tmp_path / "s.duckdb"), data, None, repo)
    assert report.performances == 6 and report.features == 12
    reasons = [r["reason"] for r in report.rejected]
    assert any("full.txt:13" in r and "missing.cqt.npy" in r for r in reasons)
    assert any("full.txt:14" in r and "JSON" in r for r in reasons)
    assert len(catalog_store.rejected(Store(tmp_path / "s.duckdb"), "covers")) == 2


def test_a_tempo_copy_without_its_original_is_rejected_not_taken_for_an_original(tmp_path: Path) -> None:
    """A full.txt line whose id has the tempo-copy form but no original line would put a generated-form id among
    the user's recordings (where it collides with a later copy of ``ghost``): it is rejected with file and line."""
    repo = tmp_path / "repo"
    data, _ = make_reference_folders(repo)
    full = data / "full.txt"
    lines = full.read_text().splitlines()
    orphan = dict(json.loads(lines[1]), perf="sp_0.9-ghost")
    full.write_text("\n".join([*lines, json.dumps(orphan)]) + "\n")
    store = Store(tmp_path / "s.duckdb")
    report = import_reference(store, data, None, repo)
    assert report.performances == 6 and report.features == 12
    assert any("full.txt:13" in r["reason"] and "tempo copy of 'ghost'" in r["reason"] for r in report.rejected)
    assert "sp_0.9-ghost" not in {p.perf for p in catalog_store.performances(store, "covers")}


def test_features_computed_here_are_never_mixed_with_imported_ones(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    data, _ = make_reference_folders(repo)
    store = Store(tmp_path / "s.duckdb")
    feature_store.record_features(store, "covers", CqtSettings().settings_hash(), [
        FeatureRecord("w000_p0", path="x.npy", n_frames=10, n_bins=96, audio_hash="h",
                      settings={"cqt_class": "CQT1992v2"})])
    with pytest.raises(ReferenceImportError, match="computed by this project"):
        import_reference(store, data, None, repo)


def test_best_generator_follows_the_reference_epoch_rule(tmp_path: Path) -> None:
    for name in ("g_00000002", "g_00000011", "g_00000009", "do_00000099", "g_best"):
        (tmp_path / name).write_bytes(b"")
    assert best_generator(tmp_path) == (tmp_path / "g_00000011", 11)
    with pytest.raises(ReferenceImportError, match="no g_ checkpoint"):
        best_generator(tmp_path / "nothing")


def test_a_folder_without_catalog_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ReferenceImportError, match="neither full.txt nor dataset.txt"):
        import_reference(Store(tmp_path / "s.duckdb"), tmp_path, None)


def test_a_dataset_txt_alone_fills_the_catalog_for_the_data_assets(tmp_path: Path) -> None:
    data = tmp_path / "plain"
    generate_covers(data, works=2, perfs=2, seed=4, seconds=2.0)
    store = Store(tmp_path / "s.duckdb")
    report = import_reference(store, data, None)
    assert (report.performances, report.works, report.features, report.model_id) == (4, 2, 0, None)
    assert [p.perf for p in catalog_store.performances(store, "plain")] == ["w000_p0", "w000_p1", "w001_p0",
                                                                              "w001_p1"]


def test_conflicting_work_ids_stop_the_import_before_anything_is_written(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    data, _ = make_reference_folders(repo)
    lines = [json.loads(line) for line in (data / "full.txt").read_text().splitlines()]
    lines[3]["work_id"] = 99
    (data / "full.txt").write_text("".join(json.dumps(line) + "\n" for line in lines))
    store = Store(tmp_path / "s.duckdb")
    with pytest.raises(ReferenceImportError, match=r"full.txt:\d+: work 'work_00\d' has work_id"):
        import_reference(store, data, None, repo)
    assert catalog_store.performances(store, "covers") == [] and split_store.work_ids(store, "covers") == {}


def test_a_model_trained_on_another_hop_than_the_data_folder_is_refused(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data" / "covers"
    generate_covers(data, works=2, perfs=1, seed=5, seconds=2.0)
    (data / "hparams.yaml").write_text(yaml.safe_dump(DATA_HPARAMS))
    training = tmp_path / "training" / "covers"
    (training / "config").mkdir(parents=True)
    (training / "config" / "hparams.yaml").write_text(yaml.safe_dump({**TRAINING_HPARAMS, "cqt": {"hop_size": 0.02}}))
    (training / "checkpoints").mkdir()
    torch.save({"generator": _reference_model(1)}, training / "checkpoints" / "g_00000001")
    store_path = tmp_path / "csi.duckdb"
    assert csi(["import", "--data", str(data), "--training", str(training), "--store", str(store_path)]) == 2
    err = capsys.readouterr().err
    assert f"expects hop_size 0.02 s (320 samples at 16000 Hz) ({training / 'config' / 'hparams.yaml'})" in err
    assert f"({training / 'config' / 'hparams.yaml'}) but {data / 'hparams.yaml'}, imported from CoverHunterMPS " \
           "says hop_size 0.04 s (640 samples at 16000 Hz)" in err
    assert model_store.models(Store(store_path), "covers") == []


def test_an_imported_model_records_the_data_folders_settings_with_the_cqt_class_unknown(imported) -> None:
    _, data, _, store_path = imported
    contract = model_store.promoted_model(Store(store_path), "covers").input_contract
    assert contract == {"source": f"{data / 'hparams.yaml'}, imported from CoverHunterMPS", "sample_rate": 16000,
                        "hop": 640, "fmin": 32.0, "n_bins": 96, "bins_per_octave": 12, "cqt_class": None}
