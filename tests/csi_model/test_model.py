"""CoverHunter model: block shapes, reference sizes, gradient flow, learning, and padding invariance."""

import math

import pytest
import torch

from csi_model.hparams import training_hparams_from_dict
from csi_model.losses import CoverHunterLoss, LossWeights
from csi_model.model import (
    AttentiveStatisticsPooling,
    ConformerBlock,
    Conv2dSubsampling4,
    ConvolutionModule,
    CoverHunter,
    InputNorm,
    MaskedBatchNorm1d,
    ModelConfig,
    RelativePositionalEncoding,
    RelPositionMultiHeadedAttention,
    padding_mask,
    parameter_counts,
)

TINY = ModelConfig(input_dim=24, embed_dim=32, d_model=32, num_blocks=2, ff_dim=64, num_classes=4)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_input_norm_normalises_each_frequency_bin() -> None:
    x = torch.randn(2, 50, 96) * 5 + 3
    y = InputNorm(96)(x)
    assert y.shape == (2, 50, 96)
    assert torch.allclose(y.mean(dim=(0, 1)), torch.zeros(96), atol=1e-4)


@pytest.mark.parametrize(("frames", "encoder_frames"), [(1125, 280), (900, 224), (675, 168)])
def test_subsampling_lengths(frames: int, encoder_frames: int) -> None:
    assert Conv2dSubsampling4.output_length(frames) == encoder_frames
    assert Conv2dSubsampling4.output_length(torch.tensor([frames])).item() == encoder_frames
    out = Conv2dSubsampling4(96, 128)(torch.randn(1, frames, 96))
    assert out.shape == (1, encoder_frames, 128)


def test_positional_encoding_scales_input_and_grows_its_table() -> None:
    enc = RelativePositionalEncoding(16, dropout=0.1, initial_len=8).eval()
    x = torch.randn(2, 20, 16)
    y, pos = enc(x)
    assert torch.allclose(y, x * 4.0)
    assert pos.shape == (1, 20, 16)
    assert enc.table.shape[0] >= 20
    assert torch.allclose(pos[0], RelativePositionalEncoding.sinusoids(20, 16))
    assert pos[0, 3, 2].item() == pytest.approx(math.sin(3 / 10000 ** (2 / 16)), abs=1e-6)
    assert pos[0, 3, 3].item() == pytest.approx(math.cos(3 / 10000 ** (2 / 16)), abs=1e-6)
    assert "table" not in enc.state_dict()


def test_attention_shape_and_padded_keys_are_ignored() -> None:
    attn = RelPositionMultiHeadedAttention(32, heads=4)
    x = torch.randn(2, 10, 32)
    pos = RelativePositionalEncoding.sinusoids(10, 32)[None]
    mask = padding_mask(torch.tensor([10, 6]), 10)
    out = attn(x, pos, mask)
    assert out.shape == (2, 10, 32)
    garbage = x.clone()
    garbage[1, 6:] = 1e3 * torch.randn(4, 32)
    assert torch.allclose(attn(garbage, pos, mask)[1, :6], out[1, :6], atol=1e-5)


def test_conv_module_shape_and_padding_is_zeroed() -> None:
    conv = ConvolutionModule(32, kernel=15).eval()
    x = torch.randn(2, 30, 32)
    mask = padding_mask(torch.tensor([30, 12]), 30)
    out = conv(x, mask)
    assert out.shape == (2, 30, 32)
    alone = conv(x[1:, :12], None)
    assert torch.allclose(out[1, :12], alone[0], atol=1e-5)


def test_conformer_block_shape() -> None:
    block = ConformerBlock(ModelConfig())
    x = torch.randn(2, 17, 128)
    pos = RelativePositionalEncoding.sinusoids(17, 128)[None]
    assert block(x, pos, None).shape == (2, 17, 128)


def test_pooling_shape_and_mask() -> None:
    pool = AttentiveStatisticsPooling(32, 48)
    h = torch.randn(2, 15, 32)
    out = pool(h, padding_mask(torch.tensor([15, 9]), 15))
    assert out.shape == (2, 48)
    assert torch.allclose(out[1], pool(h[1:, :9], None)[0], atol=1e-5)


def test_full_model_shapes() -> None:
    model = CoverHunter(ModelConfig(num_classes=10))
    embedding, logits = model(torch.randn(2, 60, 96))
    assert embedding.shape == (2, 128)
    assert logits.shape == (2, 10)
    assert model.embed(torch.randn(2, 60, 96)).shape == (2, 128)


def test_projection_when_widths_differ() -> None:
    model = CoverHunter(ModelConfig(input_dim=24, d_model=32, embed_dim=16, num_blocks=1, ff_dim=32, num_classes=3))
    assert model._embed_lo is not None
    assert model.embed(torch.randn(2, 40, 24)).shape == (2, 16)


def test_reference_parameter_counts() -> None:
    counts = parameter_counts(CoverHunter(ModelConfig(num_classes=30000)))
    assert counts["embedding_network"] == 2_230_720
    assert counts["bn_neck"] == 256
    assert counts["classifier"] == counts["centres"] == 3_840_000
    assert counts["total"] == 9_910_976


def test_model_without_centres() -> None:
    model = CoverHunter(ModelConfig(num_classes=5, with_centres=False))
    assert model.centres is None
    assert parameter_counts(model)["centres"] == 0
    assert not any(k.startswith("_center_loss") for k in model.state_dict())


def test_gradient_reaches_every_trainable_parameter() -> None:
    model = CoverHunter(ModelConfig(num_classes=2))
    loss_fn = CoverHunterLoss(LossWeights(triplet=0.1, center=0.001))
    labels = torch.tensor([0, 0, 1, 1])
    embedding, logits = model(torch.randn(4, 40, 96), torch.tensor([40, 40, 33, 40]))
    loss, terms = loss_fn(embedding, logits, labels, model.centres)
    loss.backward()
    assert set(terms) == {"foc_loss", "tri_loss", "cen_loss"}
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.pow(2).sum())]
    assert dead == []
    assert not model._bottleneck.bias.requires_grad


def test_loss_decreases_on_a_fixed_batch() -> None:
    model = CoverHunter(TINY)
    loss_fn = CoverHunterLoss(LossWeights(triplet=0.1, center=0.01))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.99))
    x, labels = torch.randn(8, 40, 24), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss, _ = loss_fn(*model(x), labels, model.centres)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_padding_with_garbage_gives_the_unpadded_embedding() -> None:
    model = CoverHunter(ModelConfig(num_classes=3)).eval()
    short, full = torch.randn(1, 45, 96), torch.randn(1, 70, 96)
    padded = torch.cat([short, 100 * torch.randn(1, 25, 96)], dim=1)
    with torch.no_grad():
        batched = model.embed(torch.cat([padded, full]), torch.tensor([45, 70]))
        assert torch.allclose(batched[0], model.embed(short)[0], atol=1e-5)
        assert torch.allclose(batched[1], model.embed(full)[0], atol=1e-5)


def test_padding_content_does_not_reach_training_batch_statistics() -> None:
    model = CoverHunter(ModelConfig(input_dim=24, d_model=32, embed_dim=32, num_blocks=1, ff_dim=64, num_classes=3,
                                    dropout=0.0)).train()
    x, lengths = torch.randn(2, 40, 24), torch.tensor([26, 40])
    first, second = x.clone(), x.clone()
    first[0, 26:], second[0, 26:] = -100.0, 50 * torch.randn(14, 24)
    assert torch.allclose(model.embed(first, lengths), model.embed(second, lengths), atol=1e-5)


def test_too_short_input_is_rejected() -> None:
    model = CoverHunter(TINY)
    with pytest.raises(ValueError, match="needs at least 7"):
        model.embed(torch.randn(1, 6, 24))
    with pytest.raises(ValueError, match="needs at least 7"):
        model.embed(torch.randn(2, 20, 24), torch.tensor([20, 5]))


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(d_model=30, heads=4)


def test_config_from_hparams() -> None:
    raw = {"input_dim": 84, "embed_dim": 64, "encoder": {"output_dims": 96, "num_blocks": 3, "attention_dim": 192}}
    cfg = ModelConfig.from_hparams(training_hparams_from_dict(raw), num_classes=17)
    assert cfg == ModelConfig(
        input_dim=84, embed_dim=64, d_model=96, num_blocks=3, ff_dim=192, num_classes=17, with_centres=False
    )
    sized = {**raw, "foc": {"output_dims": 30000}, "center": {"weight": 0.001}}
    cfg = ModelConfig.from_hparams(training_hparams_from_dict(sized), num_classes=17)
    assert (cfg.num_classes, cfg.with_centres) == (30000, True)


def test_masked_batch_norm_takes_training_statistics_from_real_frames_only() -> None:
    x, lengths = torch.randn(3, 8, 20), torch.tensor([20, 12, 5])
    mask = padding_mask(lengths, 20)
    x = x.masked_fill(~mask[:, None, :], -100.0)  # the dataset's padding value
    masked, plain = MaskedBatchNorm1d(8), torch.nn.BatchNorm1d(8)
    out = masked(x, mask)
    real = torch.cat([x[i, :, :n] for i, n in enumerate(lengths.tolist())], dim=1)[None]  # [1, 8, 37]
    expected = plain(real)
    assert torch.allclose(torch.cat([out[i, :, :n] for i, n in enumerate(lengths.tolist())], dim=1), expected[0],
                          atol=1e-5)
    assert torch.allclose(masked.running_mean, plain.running_mean, atol=1e-6)
    assert torch.allclose(masked.running_var, plain.running_var, atol=1e-5)
    assert masked.num_batches_tracked.item() == 1


def test_masked_batch_norm_with_nothing_padded_is_batch_norm() -> None:
    x = torch.randn(2, 8, 10)
    masked, plain = MaskedBatchNorm1d(8), torch.nn.BatchNorm1d(8)
    assert torch.allclose(masked(x, torch.ones(2, 10, dtype=torch.bool)), plain(x), atol=1e-5)
    assert torch.allclose(masked.running_var, plain.running_var, atol=1e-6)
