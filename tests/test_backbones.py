"""The shared backbones: declared outputs, dilation, deep stem, and the one weights path."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from pixelwise.cli import main
from pixelwise.errors import PixelwiseError
from pixelwise.models.backbones import (
    ResNetBackbone,
    VGGBackbone,
    load_backbone,
    resolve_weights,
)
from tests.weights import random_torchvision_state

LAYERS = ("stem", "layer1", "layer2", "layer3", "layer4")


@pytest.mark.parametrize(
    ("depth", "output_stride", "strides", "channels"),
    [
        (18, 32, (4, 4, 8, 16, 32), (64, 64, 128, 256, 512)),
        (34, 16, (4, 4, 8, 16, 16), (64, 64, 128, 256, 512)),
        (50, 8, (4, 4, 8, 8, 8), (64, 256, 512, 1024, 2048)),
    ],
)
def test_resnet_outputs_have_the_declared_channels_and_strides(
    depth, output_stride, strides, channels
) -> None:
    with torch.device("meta"):
        backbone = ResNetBackbone(depth, output_stride=output_stride, return_layers=LAYERS)
        outputs = backbone(torch.empty(1, 3, 64, 96))
    assert backbone.strides == strides and backbone.out_channels == channels
    for out, stride, width in zip(outputs, strides, channels, strict=True):
        assert tuple(out.shape) == (1, width, 64 // stride, 96 // stride)


def test_output_stride_8_dilates_every_3x3_conv_of_layer3_and_layer4() -> None:
    with torch.device("meta"):
        backbone = ResNetBackbone(50, output_stride=8)
    for name, dilation in (("layer3", 2), ("layer4", 4)):
        convs = [m for m in getattr(backbone, name).modules() if isinstance(m, nn.Conv2d)]
        threes = [c for c in convs if c.kernel_size == (3, 3)]
        assert len(threes) == len(getattr(backbone, name))  # one per block, the first included
        assert all(c.dilation == (dilation,) * 2 and c.padding == (dilation,) * 2 for c in threes)
        assert all(c.stride == (1, 1) for c in convs)
    assert backbone.layer2[0].conv2.stride == (2, 2)  # layer2 still halves


def test_dilation_is_seen_in_the_receptive_field_of_layer3() -> None:
    # The input rows one layer3 pixel of ResNet-18 depends on. Undilated, at stride 8: the stem
    # (7x7/2 conv, 3x3/2 pool) sees 11 px, layer1's four 3x3 convs at jump 4 add 32 (43), layer2's
    # first conv at jump 4 adds 8 and its other three at jump 8 add 48 (99), layer3's four 3x3
    # convs at jump 8 add 64: 163 rows. Dilated by 2 they add 128: 227 rows.
    def rows_seen(backbone: ResNetBackbone) -> int:
        x = torch.randn(1, 3, 257, 257, generator=torch.Generator().manual_seed(0))
        x.requires_grad_()
        (out,) = backbone(x)
        out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
        rows = x.grad.abs().sum((0, 1)).sum(1).nonzero()
        return int(rows.max() - rows.min()) + 1

    torch.manual_seed(0)
    dilated = ResNetBackbone(18, output_stride=8, return_layers=("layer3",)).eval()
    undilated = ResNetBackbone(18, output_stride=8, return_layers=("layer3",)).eval()
    for conv in undilated.modules():
        if isinstance(conv, nn.Conv2d) and conv.dilation != (1, 1):
            conv.dilation, conv.padding = (1, 1), (1, 1)
    assert rows_seen(dilated) == 227
    assert rows_seen(undilated) == 163


def test_deep_stem_is_three_convs_and_layer1_takes_128_channels() -> None:
    with torch.device("meta"):
        backbone = ResNetBackbone(50, deep_stem=True, return_layers=("stem", "layer1"))
        stem, layer1 = backbone(torch.empty(2, 3, 65, 67))
    assert [backbone.conv1.stride, backbone.conv2.stride, backbone.conv3.stride] == [
        (2, 2),
        (1, 1),
        (1, 1),
    ]
    assert [c.kernel_size for c in (backbone.conv1, backbone.conv2, backbone.conv3)] == [(3, 3)] * 3
    assert tuple(stem.shape) == (2, 128, 17, 17) and backbone.out_channels == (128, 256)
    assert backbone.layer1[0].conv1.in_channels == 128
    assert backbone.layer1[0].downsample[0].in_channels == 128
    assert tuple(layer1.shape) == (2, 256, 17, 17)


@pytest.mark.parametrize(
    ("depth", "build"), [(50, torchvision.models.resnet50), (101, torchvision.models.resnet101)]
)
def test_torchvision_resnet_weights_land_in_place_whatever_the_output_stride(depth, build) -> None:
    state = random_torchvision_state(build)
    for output_stride in (32, 8):
        backbone = ResNetBackbone(depth, output_stride=output_stride)
        load_backbone(backbone, state)
        own = backbone.state_dict()
        assert set(own) == {k for k in state if not k.startswith("fc.")}
        for key, tensor in own.items():
            assert torch.equal(tensor, state[key]), key


def test_torchvision_vgg16_bn_weights_land_in_place() -> None:
    state = random_torchvision_state(torchvision.models.vgg16_bn)
    backbone = VGGBackbone(batch_norm=True, return_layers=("conv1", "conv5", "pool5"))
    load_backbone(backbone, state)
    for key, tensor in backbone.state_dict().items():
        assert torch.equal(tensor, state[key]), key
    assert backbone.strides == (1, 16, 32) and backbone.out_channels == (64, 512, 512)
    with torch.no_grad():
        conv1, conv5, pool5 = backbone.eval()(torch.randn(1, 3, 33, 50))
    assert (
        conv1.shape[-2:] == (33, 50) and conv5.shape[-2:] == (3, 4) and pool5.shape[-2:] == (2, 2)
    )


def test_resnet_weights_for_another_depth_name_the_keys() -> None:
    state = random_torchvision_state(torchvision.models.resnet18)
    with torch.device("meta"):
        backbone = ResNetBackbone(50)
    with pytest.raises(PixelwiseError, match=r"missing \[.layer1\.0\.bn3"):
        load_backbone(backbone, state)


def test_weights_names_resolve_to_torchvision_enums() -> None:
    weights = resolve_weights("ResNet101_Weights.IMAGENET1K_V2")
    assert weights is torchvision.models.ResNet101_Weights.IMAGENET1K_V2
    with pytest.raises(PixelwiseError, match="neither an existing file nor a torchvision"):
        resolve_weights("ResNet101_Weights.NOPE")
    with pytest.raises(PixelwiseError, match="does not exist"):
        resolve_weights("weights/resnet101.pth")


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def test_a_failed_download_is_one_sentence_with_the_way_out(offline) -> None:
    with torch.device("meta"):
        backbone = ResNetBackbone(18)
    with pytest.raises(PixelwiseError) as info:
        load_backbone(backbone, "ResNet18_Weights.IMAGENET1K_V1")
    message = str(info.value)
    assert "ResNet18_Weights.IMAGENET1K_V1" in message
    assert "resnet18-f37072fd.pth" in message  # where torchvision looks for a cached copy
    assert "model.weights_backbone=null" in message and "\n" not in message


def test_training_offline_with_imagenet_weights_exits_2_without_a_traceback(
    offline, tmp_path, capsys
) -> None:
    code = main(
        [
            "train",
            "pixelwise/configs/demo.yaml",
            "model.name=linknet",
            "model.options={}",
            "model.weights_backbone=ResNet18_Weights.IMAGENET1K_V1",
            f"train.out_dir={tmp_path}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "Could not download ResNet18_Weights.IMAGENET1K_V1" in err
    assert "Traceback" not in err
