"""SegNet / SegNet-Basic: reference parameter counts, odd input sizes, raw logits, VGG16-BN weights.

Reference figures from docs/models.md (SegNet-Tutorial segnet_train.prototxt, 11 classes).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor, nn

from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model, model_info
from pixelwise.models.complexity import count_flops, count_parameters
from pixelwise.models.segnet import SEGNET, SEGNET_BASIC, legacy_segnet_keys, segnet
from tests.weights import random_torchvision_state

SEGNET_PARAMS = 29_449_355  # REFERENCE.md, 11 classes, BN affine included
SEGNET_MACS = 106.7e9  # REFERENCE.md, 360x480
SEGNET_BASIC_PARAMS = 1_425_000  # the paper's table: 1.425M


def _random_vgg16_bn_features() -> dict[str, Tensor]:
    """torchvision vgg16_bn's ``features.*`` layout, random values (fc6-fc8, 120M values, are
    dropped by the conversion anyway)."""
    return random_torchvision_state(
        torchvision.models.vgg16_bn, lambda key: key.startswith("features.")
    )


@pytest.mark.parametrize(
    ("name", "reference"), [("segnet", SEGNET_PARAMS), ("segnet_basic", SEGNET_BASIC_PARAMS)]
)
def test_parameter_count_matches_reference(name: str, reference: int) -> None:
    info = model_info(name)
    count = count_parameters(build_model(name, info.num_classes))
    print(f"{name}: {count:,} learnable parameters (reference {reference:,})")
    assert abs(count - reference) / reference < 0.01


def test_segnet_forward_backward_odd_size() -> None:
    torch.manual_seed(0)
    model = build_model("segnet", 11)
    x = torch.randn(2, 3, 250, 333)
    logits = model(x)
    assert logits.shape == (2, 11, 250, 333)
    logits.square().mean().backward()
    assert model.encoder.features[0].weight.grad is not None
    assert model.classifier.weight.grad is not None


def test_segnet_basic_odd_size() -> None:
    model = build_model("segnet_basic", 5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 37, 45)).shape == (1, 5, 37, 45)


def test_last_layer_is_a_bare_conv_giving_the_logits() -> None:
    model = build_model("segnet", 11).eval()
    assert isinstance(model.classifier, nn.Conv2d)
    assert list(model.modules())[-1] is model.classifier
    seen: list[Tensor] = []
    model.classifier.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 32, 32))
    # Nothing (no BN, no ReLU) runs after conv1_1_D: its output is the model's output.
    assert torch.equal(logits, seen[0])
    assert (logits < 0).any()


def test_vgg16_bn_weights_load_from_a_path(tmp_path) -> None:
    state = _random_vgg16_bn_features()
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)
    model = segnet(num_classes=3, weights_backbone=path)
    # The shared backbone keeps torchvision's layout: every features.* tensor lands under its name.
    encoder = model.encoder.state_dict()
    assert set(encoder) == set(state)
    for key, tensor in state.items():
        assert torch.equal(encoder[key], tensor), key
    # conv5_3 is features.40, its BN features.41.
    assert torch.equal(model.encoder.features[40].weight, state["features.40.weight"])
    assert torch.equal(model.encoder.features[41].running_var, state["features.41.running_var"])


def test_vgg16_bn_classifier_is_dropped_and_old_files_load() -> None:
    state = _random_vgg16_bn_features()
    state["classifier.6.weight"] = torch.zeros(1000, 4096)
    del state["features.1.num_batches_tracked"]  # files saved before PyTorch 0.4.1 lack it
    model = segnet(num_classes=3, weights_backbone=state)
    assert model.encoder.features[1].num_batches_tracked.item() == 0


def test_vgg16_bn_weights_with_a_wrong_shape_name_the_key() -> None:
    state = _random_vgg16_bn_features()
    state["features.10.weight"] = torch.zeros(128, 64, 5, 5)
    with pytest.raises(PixelwiseError, match=r"features\.10\.weight"):
        segnet(num_classes=3, weights_backbone=state)


def test_vgg16_without_bn_is_rejected() -> None:
    state = random_torchvision_state(
        torchvision.models.vgg16, lambda key: key.startswith("features.")
    )
    with pytest.raises(PixelwiseError, match="vgg16_bn"):
        segnet(num_classes=3, weights_backbone=state)


@pytest.mark.parametrize(("name", "config"), [("segnet", SEGNET), ("segnet_basic", SEGNET_BASIC)])
def test_checkpoints_in_the_layout_before_the_shared_backbone_still_load(name, config) -> None:
    torch.manual_seed(0)
    state = build_model(name, 3).state_dict()
    # The earlier layout, written by hand: encoder.{stage}.{layer}.{0 conv | 1 BN}.*, where the
    # shared backbone counts torchvision-style (conv, BN, ReLU per layer, one pool per stage).
    index_of, index = {}, 0
    for stage, widths in enumerate(config.stages):
        for layer in range(len(widths)):
            index_of[(stage, layer)] = index
            index += 3
        index += 1
    old = {}
    for (stage, layer), first in index_of.items():
        for sub in (0, 1):
            for key, value in state.items():
                prefix = f"encoder.features.{first + sub}."
                if key.startswith(prefix):
                    old[f"encoder.{stage}.{layer}.{sub}.{key[len(prefix) :]}"] = value
    old |= {k: v for k, v in state.items() if not k.startswith("encoder.")}
    assert len(old) == len(state)
    assert set(legacy_segnet_keys(old, stages=config.stages)) == set(state)
    fresh = build_model(name, 3)
    fresh.load_state_dict(old)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.slow
def test_segnet_flops_at_paper_size() -> None:
    info = model_info("segnet")
    flops = count_flops(build_model("segnet", info.num_classes), info.input_size)
    print(f"segnet: {flops / 2e9:.2f} GMACs at {info.input_size} (reference 106.7)")
    assert abs(flops / 2 - SEGNET_MACS) / SEGNET_MACS < 0.01
