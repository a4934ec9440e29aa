"""The training benchmark's reference network (bench/reference_model.py) is the product's architecture: the same
tensor names and shapes as a reference checkpoint, and the same function of the same weights."""

from __future__ import annotations

import sys

import pytest
import torch

from csi_model.model import CoverHunter, ModelConfig
from tests.paths import REPO

sys.path.insert(0, str(REPO / "bench"))
from reference_model import ReferenceNetwork

LAYOUT = REPO / "tests" / "fixtures" / "reference" / "checkpoint_layout.tsv"


def layout() -> dict[str, tuple[int, ...]]:
    rows = [line.split("\t") for line in LAYOUT.read_text().splitlines() if line and not line.startswith("#")]
    return {name: tuple(int(n) for n in shape.strip("()").split(",") if n.strip()) for name, shape, _ in rows}


def shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def test_default_reference_network_has_the_reference_checkpoint_layout() -> None:
    assert shapes(ReferenceNetwork(ModelConfig())) == layout()


def randomised(cfg: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """A product state dict with every float tensor random, running variances positive and away from 1, so no
    BatchNorm is close to the identity and any misplaced tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    state = CoverHunter(cfg).state_dict()
    for name, tensor in state.items():
        if tensor.is_floating_point():
            noise = torch.randn(tensor.shape, generator=gen) * 0.3
            state[name] = noise.abs() + 0.5 if name.endswith("running_var") else tensor + noise
    return state


TINY = [
    ModelConfig(input_dim=24, embed_dim=16, d_model=16, num_blocks=2, ff_dim=32, heads=4, num_classes=7),
    ModelConfig(input_dim=20, embed_dim=12, d_model=24, num_blocks=1, ff_dim=16, heads=2, conv_kernel=5,
                num_classes=5),  # encoder width ≠ embedding width: the _embed_lo projection
]


@pytest.mark.parametrize("cfg", TINY, ids=["d=E", "d!=E"])
@pytest.mark.parametrize("frames", [7, 41])
def test_same_weights_give_the_same_embedding_and_logits(cfg: ModelConfig, frames: int) -> None:
    state = randomised(cfg, seed=frames)
    ours, reference = CoverHunter(cfg), ReferenceNetwork(cfg)
    ours.load_state_dict(state)
    reference.load_state_dict(state)  # strict: every name and shape matches
    ours.eval(), reference.eval()
    x = torch.randn(3, frames, cfg.input_dim, generator=torch.Generator().manual_seed(1)) * 20 - 40
    with torch.no_grad():
        (e_ours, l_ours), (e_ref, l_ref) = ours(x), reference(x)
    assert e_ref.shape == (3, cfg.embed_dim) and l_ref.shape == (3, cfg.num_classes)
    torch.testing.assert_close(e_ours, e_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(l_ours, l_ref, rtol=1e-4, atol=1e-5)


def test_same_weights_train_the_same_in_training_mode() -> None:
    """Batch statistics and dropout included: with one seed per forward both networks draw the same dropout
    masks, give the same losses and the same gradients for every parameter."""
    cfg = TINY[0]
    state = randomised(cfg, seed=3)
    ours, reference = CoverHunter(cfg), ReferenceNetwork(cfg)
    ours.load_state_dict(state)
    reference.load_state_dict(state)
    x = torch.randn(4, 33, cfg.input_dim, generator=torch.Generator().manual_seed(2))
    outputs = []
    for model in (ours, reference):
        model.train()
        torch.manual_seed(5)
        embedding, logits = model(x)
        (embedding.pow(2).sum() + logits.logsumexp(1).sum()).backward()
        outputs.append((embedding, logits, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (e_ours, l_ours, g_ours), (e_ref, l_ref, g_ref) = outputs
    torch.testing.assert_close(e_ours, e_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(l_ours, l_ref, rtol=1e-4, atol=1e-5)
    assert g_ours.keys() == g_ref.keys()
    for name in g_ours:
        torch.testing.assert_close(g_ours[name], g_ref[name], rtol=1e-3, atol=1e-5, msg=name)
    torch.testing.assert_close(ours._global_cmvn.running_mean, reference._global_cmvn.running_mean)


def test_reference_network_refuses_what_the_reference_refuses() -> None:
    cfg = TINY[0]
    with pytest.raises(TypeError, match="float32"):
        ReferenceNetwork(cfg).eval()(torch.zeros(1, 9, cfg.input_dim, dtype=torch.float64))
