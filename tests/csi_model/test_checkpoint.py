"""Checkpoint files: the reference's g_ layout loads bit-exactly; mismatches name every tensor; exact resume."""

import hashlib
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from csi_model.checkpoint import (
    PARALLEL_PREFIX,
    CheckpointError,
    capture_rng_state,
    checkpoint_epoch,
    checkpoint_paths,
    latest_checkpoint,
    latest_generator,
    list_checkpoints,
    load_generator,
    load_training_state,
    model_fingerprint,
    restore_rng_state,
    save_checkpoint,
    state_file_for,
    strip_parallel_prefix,
)
from csi_model.loading import classes_in, model_from_checkpoint
from csi_model.model import CoverHunter, ModelConfig
from tests.paths import FIXTURES
from tests.train_fixtures import tiny_hparams

LAYOUT = FIXTURES / "reference" / "checkpoint_layout.tsv"
TINY = ModelConfig(input_dim=24, embed_dim=32, d_model=32, num_blocks=1, ff_dim=64, num_classes=4)


def reference_state_dict(layout: Path = LAYOUT) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the names, shapes and dtypes of a CoverHunterMPS g_ file."""
    generator = torch.Generator().manual_seed(7)
    state = {}
    for line in layout.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, shape, dtype = line.split("\t")
        size = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        kind = getattr(torch, dtype.removeprefix("torch."))
        if kind.is_floating_point:
            state[name] = torch.randn(size, generator=generator, dtype=kind)
        else:
            state[name] = torch.randint(0, 1000, size, generator=generator, dtype=kind)
    return state


def test_reference_layout_loads_bit_exactly(tmp_path: Path) -> None:
    state = reference_state_dict()
    assert len(state) == 265
    path = tmp_path / "g_00000011"
    torch.save({"generator": state}, path)
    model = CoverHunter(ModelConfig(num_classes=30000))
    report = load_generator(path, model)
    assert report.tensors == 265 and report.ignored == ()
    assert report.fingerprint == model_fingerprint(state)
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor), name


def test_reference_centres_are_ignored_by_a_model_without_centres(tmp_path: Path) -> None:
    path = tmp_path / "g_00000001"
    torch.save({"generator": reference_state_dict()}, path)
    report = load_generator(path, CoverHunter(ModelConfig(num_classes=30000, with_centres=False)))
    assert report.ignored == ("_center_loss.centers",) and report.tensors == 264


def test_mismatched_file_names_every_tensor(tmp_path: Path) -> None:
    path = tmp_path / "g_00000003"
    torch.save({"generator": CoverHunter(ModelConfig(input_dim=84, num_classes=30)).state_dict()}, path)
    with pytest.raises(CheckpointError) as error:
        load_generator(path, CoverHunter(ModelConfig(num_classes=30)))
    message = str(error.value)
    assert str(path) in message
    assert "wrong shape: _global_cmvn.weight file (84,) vs model (96,)" in message
    assert "wrong shape: _encoder.embed.out.0.weight file (128, 2560) vs model (128, 2944)" in message
    assert "_global_cmvn.running_var" in message


def test_missing_and_unexpected_tensors_are_listed(tmp_path: Path) -> None:
    state = CoverHunter(TINY).state_dict()
    state["_extra.weight"] = state.pop("_ce_layer.weight")
    path = tmp_path / "g_00000001"
    torch.save({"generator": state}, path)
    with pytest.raises(CheckpointError, match=r"missing: _ce_layer.weight \(4, 32\)[\s\S]*unexpected: _extra.weight"):
        load_generator(path, CoverHunter(TINY))


def test_not_a_generator_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "g_00000001"
    torch.save({"weights": {}}, path)
    with pytest.raises(CheckpointError, match="no 'generator' entry"):
        load_generator(path, CoverHunter(TINY))
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_generator(path, CoverHunter(TINY))


def test_fingerprint_follows_the_spec_recipe() -> None:
    state = {"b": torch.arange(3, dtype=torch.int64), "a": torch.ones(2, 2), "c": torch.tensor(5)}
    digest = hashlib.sha256()
    for name in ["a", "b", "c"]:
        array = state[name].numpy()
        digest.update(name.encode() + str(array.shape).encode() + str(state[name].dtype).encode() + array.tobytes())
    assert model_fingerprint(state) == digest.hexdigest()[:16]
    assert model_fingerprint(dict(reversed(list(state.items())))) == model_fingerprint(state)
    changed = {**state, "a": torch.ones(2, 2) * 1.0000001}
    assert model_fingerprint(changed) != model_fingerprint(state)


def _train_step(model: CoverHunter, optimiser: torch.optim.Optimizer) -> None:
    optimiser.zero_grad()
    embedding, logits = model(torch.randn(4, 30, 24))
    (logits.logsumexp(dim=1).mean() + embedding.pow(2).mean()).backward()
    optimiser.step()


def test_save_and_resume_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CoverHunter(TINY)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimiser, step_size=1, gamma=0.5)
    _train_step(model, optimiser)
    scheduler.step()
    early_stopping = {"best_validation_loss": 1.5, "early_stopping_counter": 2, "best_raw_map": np.float64(0.25)}
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    pair = save_checkpoint(tmp_path, 4, model, optimiser, steps=17, early_stopping=early_stopping,
                           scheduler=scheduler, extra={"sampler_seed": 99})
    expected_draws = (random.random(), np.random.rand(), torch.rand(1))
    assert pair == checkpoint_paths(tmp_path, 4) and pair.generator.name == "g_00000004"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["do_00000004", "g_00000004"]

    restored = CoverHunter(TINY)
    restored_optimiser = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    restored_scheduler = torch.optim.lr_scheduler.StepLR(restored_optimiser, step_size=1, gamma=0.5)
    load_generator(pair.generator, restored)
    state = load_training_state(pair.state)
    restored_optimiser.load_state_dict(state["optim_g"])
    restored_scheduler.load_state_dict(state["scheduler"])
    restore_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected_draws
    assert (state["steps"], state["epoch"], state["sampler_seed"]) == (17, 4, 99)
    assert state["early_stopping"] == early_stopping
    assert restored_scheduler.get_last_lr() == scheduler.get_last_lr()

    torch.manual_seed(5)
    _train_step(model, optimiser)
    torch.manual_seed(5)
    _train_step(restored, restored_optimiser)
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values()):
        assert torch.equal(a, b), name


def test_latest_pair_is_by_epoch_number_and_complete(tmp_path: Path) -> None:
    model = CoverHunter(TINY)
    optimiser = torch.optim.AdamW(model.parameters())
    assert latest_checkpoint(tmp_path) is None and latest_generator(tmp_path) is None
    for epoch in (9, 10, 2):
        save_checkpoint(tmp_path, epoch, model, optimiser, steps=epoch, early_stopping={})
    torch.save({"generator": model.state_dict()}, tmp_path / "g_00000011")  # interrupted: no do_
    (tmp_path / ".g_00000012.tmp").write_bytes(b"")
    assert [p.epoch for p in list_checkpoints(tmp_path)] == [2, 9, 10]
    assert latest_checkpoint(tmp_path) == checkpoint_paths(tmp_path, 10)
    assert latest_generator(tmp_path) == tmp_path / "g_00000011"


def test_rng_state_round_trip_without_files() -> None:
    state = capture_rng_state()
    first = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1)) == first


def test_extra_state_cannot_replace_core_keys(tmp_path: Path) -> None:
    model = CoverHunter(TINY)
    with pytest.raises(ValueError, match="steps"):
        save_checkpoint(tmp_path, 1, model, torch.optim.AdamW(model.parameters()), steps=1, early_stopping={},
                        extra={"steps": 5})
    assert list(tmp_path.iterdir()) == []


# -- checkpoints saved from a wrapped model (nn.DataParallel) -------------------------------------------------------

def _random_names(rng: random.Random) -> list[str]:
    parts = ["_encoder", "encoders", "0", "module", "w_1", "weight", "bias", "_ce_layer", "modules", "x"]
    return sorted({".".join(rng.choice(parts) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 12))})


def test_a_uniform_module_prefix_is_stripped_and_anything_else_round_trips() -> None:
    rng = random.Random(11)
    for _ in range(200):
        state = {name: torch.tensor(float(i)) for i, name in enumerate(_random_names(rng))}
        if any(k.startswith(PARALLEL_PREFIX) for k in state):
            continue  # a plain model never has a top-level attribute called "module"
        assert strip_parallel_prefix(state) == state
        wrapped = {PARALLEL_PREFIX + k: v for k, v in state.items()}
        assert strip_parallel_prefix(wrapped) == state
        if len(state) > 1:
            mixed = dict(wrapped)
            name = rng.choice(sorted(state))
            mixed[name] = mixed.pop(PARALLEL_PREFIX + name)
            with pytest.raises(CheckpointError, match=rf"1 do not \(e\.g\. .*but {re.escape(name)}\)"):
                strip_parallel_prefix(mixed)


def test_a_dataparallel_checkpoint_loads_with_the_same_fingerprint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CoverHunter(TINY)
    path = tmp_path / "g_00000001"
    torch.save({"generator": torch.nn.DataParallel(model).state_dict()}, path)
    fresh = CoverHunter(TINY)
    report = load_generator(path, fresh)
    assert report.fingerprint == model_fingerprint(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_a_mixed_prefix_is_an_error_naming_the_file_and_examples(tmp_path: Path) -> None:
    state = CoverHunter(TINY).state_dict()
    state = {(PARALLEL_PREFIX + k if i % 2 else k): v for i, (k, v) in enumerate(state.items())}
    path = tmp_path / "g_00000002"
    torch.save({"generator": state}, path)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: \d+ of \d+ tensor names start with "
                                              r"'module\.' and \d+ do not \(e\.g\. module\._"):
        load_generator(path, CoverHunter(TINY))


@pytest.mark.parametrize(("name", "epoch"), [("g_00000012", 12), ("g_12", 12), ("g_00000012.pt", 12),
                                             ("g_00000012-old", 12), ("do_00000003", None), ("g_best", None),
                                             (".g_00000012.tmp", None), ("g_", None), ("g_\u00b2", None)])
def test_one_epoch_rule_for_generator_names(name: str, epoch: int | None) -> None:
    assert checkpoint_epoch(name, "g_") == epoch


def test_latest_generator_reads_reference_names_and_the_state_file_pairs_it(tmp_path: Path) -> None:
    for name in ("g_00000002", "g_00000011.pt", "g_00000009", "do_00000099", "g_best"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "g_00000030").mkdir()  # a folder is no checkpoint
    assert latest_generator(tmp_path) == tmp_path / "g_00000011.pt"
    assert state_file_for(tmp_path / "g_00000011") == tmp_path / "do_00000011"


def test_model_from_checkpoint_sizes_the_classifier_from_the_file(tmp_path: Path) -> None:
    hp = tiny_hparams()
    torch.manual_seed(1)
    saved = CoverHunter(ModelConfig.from_hparams(hp, 5))
    path = save_checkpoint(tmp_path, 0, saved, torch.optim.AdamW(saved.parameters()), steps=0,
                           early_stopping={}).generator
    model, report = model_from_checkpoint(path, hp)
    assert classes_in(saved.state_dict()) == model.config.num_classes == 5 and not model.training
    assert report.fingerprint == model_fingerprint(saved.state_dict())
    with pytest.raises(CheckpointError, match="wrong shape: _ce_layer.weight"):
        model_from_checkpoint(path, hp, num_classes=3)
