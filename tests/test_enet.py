"""ENet: faithful to the authors' Torch model, any input size, wired through the pooling indices."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model, model_info
from pixelwise.models.complexity import count_flops, count_parameters
from pixelwise.models.enet import ENet

# docs/models.md, ENet: official architecture (e-lab/ENet-training) at 11 classes.
REFERENCE_PARAMS = 363_791
REFERENCE_GMACS = {(360, 640): 1.69, (360, 480): 1.27}


def _enet(num_classes: int = 11, seed: int = 0) -> ENet:
    torch.manual_seed(seed)
    model = build_model("enet", num_classes)
    assert isinstance(model, ENet)
    return model


def test_metadata_is_the_papers_setting():
    info = model_info("enet")
    assert (info.year, info.num_classes, info.input_size) == (2016, 11, (360, 640))
    assert "1606.02147" in info.paper


def test_parameter_count_matches_the_official_model():
    n = count_parameters(_enet(11))
    print(f"ENet learnable parameters at 11 classes: {n:,} (reference {REFERENCE_PARAMS:,})")
    assert abs(n - REFERENCE_PARAMS) / REFERENCE_PARAMS < 0.01


def test_forward_backward_keeps_an_odd_input_size():
    model = _enet(5)
    x = torch.randn(2, 3, 250, 333)
    logits = model(x)
    assert logits.shape == (2, 5, 250, 333)
    logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (9, 7), (17, 31), (64, 48)])
def test_output_matches_input_size(size):
    model = _enet(3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)


def _modules_of(
    blocks: list[nn.Module], kind: type[nn.Module] | tuple[type[nn.Module], ...]
) -> list[nn.Module]:
    return [m for block in blocks for m in block.modules() if isinstance(m, kind)]


def test_encoder_uses_prelu_and_decoder_only_relu():
    model = _enet()
    encoder, decoder = model.encoder_modules(), model.decoder_modules()
    # Every activation of the encoder is a per-channel PReLU (initial: 1, bottlenecks: 3 each).
    assert len(_modules_of(encoder, nn.PReLU)) == 1 + 3 * 22
    assert not _modules_of(encoder, nn.ReLU)
    assert len(_modules_of(decoder, nn.ReLU)) == 3 * 5
    assert not _modules_of(decoder, nn.PReLU)
    # Together the two lists cover the whole network.
    covered = {id(p) for block in encoder + decoder for p in block.parameters()}
    assert covered == {id(p) for p in model.parameters()}


def test_spatial_dropout_is_001_for_the_first_five_bottlenecks_then_01():
    model = _enet()
    encoder_bottlenecks = model.encoder_modules()[1:]  # skip the initial block
    probabilities = []
    for block in encoder_bottlenecks:
        dropouts = _modules_of([block], nn.Dropout2d)
        assert len(dropouts) == 1
        probabilities.append(dropouts[0].p)
    assert probabilities == [0.01] * 5 + [0.1] * 17
    assert not _modules_of(model.decoder_modules(), (nn.Dropout, nn.Dropout2d))


def test_unpooling_uses_the_encoders_pooling_indices():
    model = _enet().eval()
    pooled: dict[str, torch.Tensor] = {}
    unpooled: dict[str, torch.Tensor] = {}

    def save_pool(name):
        return lambda _m, _inputs, output: pooled.__setitem__(name, output[1])

    def save_unpool(name):
        return lambda _m, inputs: unpooled.__setitem__(name, inputs[1])

    model.down1.pool.register_forward_hook(save_pool("stage1"))
    model.down2.pool.register_forward_hook(save_pool("stage2"))
    model.up5.unpool.register_forward_pre_hook(save_unpool("stage1"))
    model.up4.unpool.register_forward_pre_hook(save_unpool("stage2"))
    with torch.no_grad():
        model(torch.randn(1, 3, 36, 52))
    # up4 undoes stage 2's pooling and up5 stage 1's; the two have different shapes.
    assert pooled["stage1"].shape != pooled["stage2"].shape
    for stage in ("stage1", "stage2"):
        assert unpooled[stage] is pooled[stage] or torch.equal(unpooled[stage], pooled[stage])


def test_unpooled_skip_is_nonzero_only_at_the_pooled_positions():
    block = _enet().up4.eval()
    x = torch.randn(1, 128, 5, 7)
    indices = torch.randint(0, 4, (1, 64, 5, 7))  # one position inside each 2x2 window
    rows = torch.arange(5).view(5, 1) * 2 + indices // 2
    cols = torch.arange(7).view(1, 7) * 2 + indices % 2
    indices = rows * 14 + cols
    with torch.no_grad():
        skip = block.unpool(block.skip(x), indices, (10, 14))
    mask = torch.zeros(1, 64, 10 * 14, dtype=torch.bool)
    mask.scatter_(2, indices.flatten(2), True)
    assert not skip.flatten(2)[~mask].any()


def test_bad_class_count_raises_a_clear_error():
    with pytest.raises(PixelwiseError, match="num_classes"):
        build_model("enet", 0)


@pytest.mark.slow
@pytest.mark.parametrize("size", sorted(REFERENCE_GMACS))
def test_flops_match_the_reference(size):
    gmacs = count_flops(_enet(11), size) / 2e9  # torch counts a multiply-add as 2 FLOPs
    print(f"ENet at {size[0]}x{size[1]}: {gmacs:.4f} GMACs (reference {REFERENCE_GMACS[size]})")
    assert gmacs == pytest.approx(REFERENCE_GMACS[size], rel=0.03)
