"""RefineNet: the port's counts, any input size, and the topology a parameter count cannot see.

Reference figures from docs/models.md (DrSleep/refinenet-pytorch ``rf101``, 21
classes): 118.05M parameters; 262.9 GMACs at 512x512, 298.3 at 468x625.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from pixelwise.models import build_model
from pixelwise.models.complexity import count_flops, count_parameters
from pixelwise.models.refinenet import (
    ChainedResidualPooling,
    RefineNet,
    RefineNetBlock,
    ResidualConvUnit,
    refinenet101,
)
from tests.weights import random_torchvision_state

PARAMS_101 = 118.05e6
MACS_101 = {(512, 512): 262.9e9, (468, 625): 298.3e9}


def _meta(name: str = "refinenet101", num_classes: int = 21) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, num_classes)


def _identity_centre_(conv: nn.Conv2d) -> None:
    """A 3x3 conv that copies channel i to channel i (1 at the kernel centre)."""
    with torch.no_grad():
        conv.weight.zero_()
        for i in range(conv.out_channels):
            conv.weight[i, i, 1, 1] = 1.0
        if conv.bias is not None:
            conv.bias.zero_()


# -- counts -------------------------------------------------------------------------------------


def test_parameter_count_matches_the_port() -> None:
    count = count_parameters(_meta())
    print(f"refinenet101: {count:,} parameters (reference {PARAMS_101:,.0f})")
    assert count == pytest.approx(PARAMS_101, rel=0.01)


@pytest.mark.parametrize("size", sorted(MACS_101))
def test_multiply_adds_match_the_port(size: tuple[int, int]) -> None:
    macs = count_flops(_meta(), size) / 2
    print(f"refinenet101: {macs / 1e9:.1f} GMACs at {size}")
    assert macs == pytest.approx(MACS_101[size], rel=0.01)


def test_widths_and_block_counts_are_the_ports() -> None:
    model = _meta()
    assert [b.reduce.out_channels for b in model.refine] == [512, 256, 256, 256]
    assert [b.reduce.in_channels for b in model.refine] == [2048, 1024, 512, 256]
    assert model.refine[0].fuse_coarse is None and model.refine[0].fuse_fine is None
    assert [b.fuse_coarse.in_channels for b in model.refine[1:]] == [512, 256, 256]
    for block in model.refine:
        assert len(block.adapt) == 2 and len(block.output) == 3 and len(block.crp.convs) == 4
        assert block.crp.pool.kernel_size == 5 and block.crp.pool.stride == 1


def test_only_each_rcus_first_conv_and_the_classifier_have_a_bias() -> None:
    model = _meta()
    with_bias = {
        name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.bias is not None
    }
    expected = {"classifier"} | {
        f"refine.{k}.{part}.{i}.conv1"
        for k in range(4)
        for part, n in (("adapt", 2), ("output", 3))
        for i in range(n)
    }
    assert with_bias == expected


# -- sizes and the backbone ---------------------------------------------------------------------


def _layer4_size(model: nn.Module, x: Tensor) -> tuple[torch.Size, Tensor]:
    seen: list[torch.Size] = []
    handle = model.backbone.layer4.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    try:
        out = model(x)
    finally:
        handle.remove()
    return seen[0], out


def test_odd_size_gives_logits_of_the_input_size_through_an_undilated_backbone() -> None:
    """Shapes on the meta device: res5 of a 97x131 input is 4x5 (stride 32, rounding up)."""
    model = _meta().eval()
    layer4, logits = _layer4_size(model, torch.zeros(2, 3, 97, 131, device="meta"))
    assert logits.shape == (2, 21, 97, 131)
    assert layer4 == (2, 2048, 4, 5)
    assert model.backbone.output_stride == 32 and model.backbone.strides == (4, 8, 16, 32)
    assert all(m.dilation == (1, 1) for m in model.modules() if isinstance(m, nn.Conv2d))


def test_dropout_acts_on_res5_res4_and_the_classifier_input() -> None:
    model = _meta().train()
    channels: list[int] = []
    model.dropout.register_forward_hook(lambda m, i, o: channels.append(i[0].shape[1]))
    model(torch.zeros(1, 3, 64, 64, device="meta"))
    assert channels == [2048, 1024, 256]


# -- the blocks ---------------------------------------------------------------------------------


def test_chained_residual_pooling_chains_the_pools_and_sums_every_step() -> None:
    crp = ChainedResidualPooling(3, num_blocks=4)
    for conv in crp.convs:
        _identity_centre_(conv)
    x = torch.randn(2, 3, 11, 13)

    def pool(t: Tensor) -> Tensor:
        return F.max_pool2d(t, 5, stride=1, padding=2)

    expected, step = x.clone(), x
    for _ in range(4):
        step = pool(step)
        expected = expected + step
    got = crp(x)
    torch.testing.assert_close(got, expected)
    # Pooling the input four times in parallel (no chain) gives something else.
    assert not torch.allclose(got, x + 4 * pool(x))


def test_chained_residual_pooling_convolves_each_pooled_map() -> None:
    crp = ChainedResidualPooling(2, num_blocks=2)
    for conv in crp.convs:
        _identity_centre_(conv)
    with torch.no_grad():
        crp.convs[1].weight.mul_(3.0)
    x = torch.randn(1, 2, 9, 9)
    p1 = F.max_pool2d(x, 5, 1, 2)
    torch.testing.assert_close(crp(x), x + p1 + 3 * F.max_pool2d(p1, 5, 1, 2))


def test_residual_conv_unit_is_relu_conv_relu_conv_plus_identity() -> None:
    torch.manual_seed(0)
    rcu = ResidualConvUnit(4)
    x = torch.randn(1, 4, 6, 7)
    original = x.clone()
    expected = x + rcu.conv2(F.relu(rcu.conv1(F.relu(x))))
    torch.testing.assert_close(rcu(x), expected)
    assert torch.equal(x, original), "the identity path must see the input before any ReLU"


def test_fusion_sums_the_paths_after_a_conv_each_and_upsamples_the_coarse_one() -> None:
    torch.manual_seed(0)
    block = RefineNetBlock(in_channels=5, width=4, coarse_channels=6).eval()
    seen: dict[str, Tensor] = {}
    block.fuse_fine.register_forward_hook(lambda m, i, o: seen.__setitem__("fine", o))
    block.fuse_coarse.register_forward_hook(lambda m, i, o: seen.__setitem__("coarse", o))
    block.crp.register_forward_pre_hook(lambda m, i: seen.__setitem__("crp_in", i[0]))
    feature, coarse = torch.randn(1, 5, 7, 9), torch.randn(1, 6, 4, 5)
    block(feature, coarse)
    assert seen["coarse"].shape[-2:] == (4, 5)
    up = F.interpolate(seen["coarse"], size=(7, 9), mode="bilinear", align_corners=False)
    assert seen["crp_in"].shape == (1, 4, 7, 9)  # summed, not concatenated
    torch.testing.assert_close(seen["crp_in"], F.relu(seen["fine"] + up))


def test_the_single_input_block_goes_straight_from_the_adapted_path_to_the_pooling() -> None:
    torch.manual_seed(0)
    block = RefineNetBlock(in_channels=5, width=4).eval()
    seen: dict[str, Tensor] = {}
    block.crp.register_forward_pre_hook(lambda m, i: seen.__setitem__("crp_in", i[0]))
    feature = torch.randn(1, 5, 3, 4)
    block(feature)
    torch.testing.assert_close(seen["crp_in"], F.relu(block.adapt(block.reduce(feature))))


# -- weights ------------------------------------------------------------------------------------


@pytest.mark.slow  # a random ResNet-101 state and a real 118M-parameter model: ~7 s on CPU
def test_resnet101_weights_load_into_the_backbone() -> None:
    state = random_torchvision_state(torchvision.models.resnet101)
    model = refinenet101(num_classes=21, weights_backbone=state)
    backbone = model.backbone.state_dict()
    assert set(backbone) == {k for k in state if not k.startswith("fc.")}
    for key, tensor in backbone.items():
        assert torch.equal(tensor, state[key]), key


def test_checkpoints_that_name_the_backbone_encoder_still_load() -> None:
    # Written before the rename: the ResNet under ``encoder.``. A ResNet-18 keeps the test quick.
    torch.manual_seed(0)
    state = RefineNet(depth=18, num_classes=3).state_dict()
    old = {("encoder." + k.removeprefix("backbone.") if k.startswith("backbone.") else k): v
           for k, v in state.items()}  # fmt: skip
    assert "encoder.conv1.weight" in old and "backbone.conv1.weight" not in old
    torch.manual_seed(1)
    model = RefineNet(depth=18, num_classes=3)
    model.load_state_dict(old)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[key]), key
