"""LinkNet: reference parameter count, any input size, ResNet-18 weights.

Reference figures from docs/models.md (e-lab/LinkNet models/model.lua, 11 classes).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor

from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model, model_info
from pixelwise.models.complexity import count_flops, count_parameters
from pixelwise.models.linknet import linknet
from tests.weights import random_torchvision_state

LINKNET_PARAMS = 11_535_659  # REFERENCE.md, 11 classes
LINKNET_MACS = 9.67e9  # REFERENCE.md, 640x360


def _random_resnet18_state() -> dict[str, Tensor]:
    """torchvision resnet18's layout, fc included, random values."""
    return random_torchvision_state(torchvision.models.resnet18)


def test_parameter_count_matches_reference() -> None:
    count = count_parameters(build_model("linknet", 11))
    print(f"linknet: {count:,} learnable parameters (reference {LINKNET_PARAMS:,})")
    assert abs(count - LINKNET_PARAMS) / LINKNET_PARAMS < 0.01


def test_forward_backward_odd_size() -> None:
    torch.manual_seed(0)
    model = build_model("linknet", 11)
    logits = model(torch.randn(2, 3, 250, 333))
    assert logits.shape == (2, 11, 250, 333)
    logits.square().mean().backward()
    assert model.encoder.conv1.weight.grad is not None
    assert model.classifier.weight.grad is not None


@pytest.mark.parametrize("size", [(1, 1), (33, 17), (64, 96)])
def test_output_matches_input_size(size: tuple[int, int]) -> None:
    model = build_model("linknet", 3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)


def test_resnet18_weights_load_from_a_path(tmp_path) -> None:
    state = _random_resnet18_state()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = linknet(num_classes=3, weights_backbone=path)
    encoder = model.encoder.state_dict()
    assert set(encoder) == {k for k in state if not k.startswith("fc.")}
    for key, tensor in encoder.items():
        assert torch.equal(tensor, state[key]), key


def test_resnet18_weights_with_a_wrong_shape_name_the_key() -> None:
    state = _random_resnet18_state()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    with pytest.raises(PixelwiseError, match=r"layer2\.0\.conv1\.weight"):
        linknet(num_classes=3, weights_backbone=state)


@pytest.mark.slow
def test_linknet_flops_at_paper_size() -> None:
    info = model_info("linknet")
    flops = count_flops(build_model("linknet", info.num_classes), info.input_size)
    print(f"linknet: {flops / 2e9:.2f} GMACs at {info.input_size} (reference 9.67)")
    assert abs(flops / 2 - LINKNET_MACS) / LINKNET_MACS < 0.01
