"""``csi model-info``: reference parameter counts, a reference-layout g_ file loads, a mismatched file is exit 2."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import yaml

from csi_assets.cli import main
from csi_model.checkpoint import model_fingerprint
from csi_model.model import CoverHunter, ModelConfig
from tests.csi_model.test_checkpoint import reference_state_dict

TINY_HPARAMS = {"input_dim": 24, "embed_dim": 32, "encoder": {"output_dims": 32, "num_blocks": 1, "attention_dim": 64},
                "foc": {"output_dims": 7}}


def _json(capsys, *argv: str) -> dict:
    assert main(["model-info", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_reference_defaults_have_the_reference_counts(capsys) -> None:
    info = _json(capsys)
    assert info["parameters"] == {"embedding_network": 2_230_720, "bn_neck": 256, "classifier": 3_840_000,
                                  "centres": 3_840_000, "total": 9_910_976}
    assert main(["model-info"]) == 0
    table = capsys.readouterr().out
    assert "embedding network" in table and "2,230,720" in table and "9,910,976" in table


def test_reference_layout_checkpoint_loads_and_reports_its_fingerprint(tmp_path: Path, capsys) -> None:
    state = reference_state_dict()
    path = tmp_path / "g_00000011"
    torch.save({"generator": state}, path)
    info = _json(capsys, "--checkpoint", str(path))
    assert info["checkpoint"]["tensors"] == 265
    assert info["checkpoint"]["fingerprint"] == model_fingerprint(state)
    assert info["config"]["num_classes"] == 30000 and info["config"]["with_centres"]


def test_hparams_and_a_checkpoint_of_ours_without_centres(tmp_path: Path, capsys) -> None:
    hparams = tmp_path / "hparams.yaml"
    hparams.write_text(yaml.safe_dump(TINY_HPARAMS))
    config = ModelConfig(input_dim=24, embed_dim=32, d_model=32, num_blocks=1, ff_dim=64, num_classes=5,
                         with_centres=False)
    path = tmp_path / "g_00000003"
    torch.save({"generator": CoverHunter(config).state_dict()}, path)
    sized = _json(capsys, "--hparams", str(hparams))
    assert sized["config"]["num_classes"] == 7 and sized["parameters"]["classifier"] == 7 * 32
    loaded = _json(capsys, "--hparams", str(hparams), "--checkpoint", str(path))  # 5 classes, read from the file
    assert loaded["config"]["num_classes"] == 5 and loaded["parameters"]["centres"] == 0
    assert loaded["checkpoint"]["tensors"] == len(CoverHunter(config).state_dict())


def test_a_file_that_does_not_fit_is_exit_2_naming_the_tensors(tmp_path: Path, capsys) -> None:
    hparams = tmp_path / "hparams.yaml"
    hparams.write_text(yaml.safe_dump(TINY_HPARAMS))
    wider = ModelConfig(input_dim=24, embed_dim=32, d_model=32, num_blocks=1, ff_dim=48, num_classes=7,
                        with_centres=False)
    path = tmp_path / "g_00000001"
    torch.save({"generator": CoverHunter(wider).state_dict()}, path)
    assert main(["model-info", "--hparams", str(hparams), "--checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} does not fit the model" in err
    assert "wrong shape: _encoder.encoders.0.feed_forward.w_1.weight file (48, 32) vs model (64, 32)" in err


def test_unsized_classifier_and_missing_file_are_clear_errors(tmp_path: Path, capsys) -> None:
    hparams = tmp_path / "hparams.yaml"
    hparams.write_text(yaml.safe_dump({k: v for k, v in TINY_HPARAMS.items() if k != "foc"}))
    assert main(["model-info", "--hparams", str(hparams)]) == 2
    assert "pass --num-classes N" in capsys.readouterr().err
    assert main(["model-info", "--checkpoint", str(tmp_path / "g_nothing")]) == 2
    assert "g_nothing: no such file" in capsys.readouterr().err


def test_our_own_checkpoint_is_sized_from_the_hparams_stored_with_it(tmp_path: Path, capsys) -> None:
    """A training folder in the reference layout: ``config/hparams.yaml`` next to ``checkpoints/g_…``."""
    run = tmp_path / "training" / "demo"
    (run / "config").mkdir(parents=True)
    (run / "config" / "hparams.yaml").write_text(yaml.safe_dump({**TINY_HPARAMS, "foc": {}}))
    config = ModelConfig(input_dim=24, embed_dim=32, d_model=32, num_blocks=1, ff_dim=64, num_classes=5,
                         with_centres=False)
    state = CoverHunter(config).state_dict()
    path = run / "checkpoints" / "g_00000004"
    path.parent.mkdir()
    torch.save({"generator": state}, path)
    info = _json(capsys, "--checkpoint", str(path))
    assert info["checkpoint"]["tensors"] == len(state) and info["checkpoint"]["fingerprint"] == model_fingerprint(state)
    assert info["config"] == dataclasses.asdict(config)
    stored = run / "config" / "hparams.yaml"
    assert info["sized_from"] == f"sized from {stored} (the hparams stored with the checkpoint)"


def test_a_lone_checkpoint_is_sized_from_its_tensor_shapes(tmp_path: Path, capsys) -> None:
    config = ModelConfig(input_dim=84, embed_dim=48, d_model=64, num_blocks=3, ff_dim=96, heads=8, conv_kernel=7,
                         num_classes=11, with_centres=True)
    state = CoverHunter(config).state_dict()
    path = tmp_path / "g_00000009"
    torch.save({"generator": {f"module.{k}": v for k, v in state.items()}}, path)  # saved from nn.DataParallel
    info = _json(capsys, "--checkpoint", str(path))
    assert info["config"] == dataclasses.asdict(config)
    assert info["checkpoint"]["fingerprint"] == model_fingerprint(state)
    assert info["sized_from"] == ("no hparams: conv_kernel, d_model, embed_dim, ff_dim, heads, input_dim, "
                                  "num_blocks, num_classes, with_centres read from the checkpoint's tensor shapes; "
                                  "reference defaults for dropout")
    assert main(["model-info", "--checkpoint", str(path)]) == 0
    assert "read from the checkpoint's tensor shapes" in capsys.readouterr().out
