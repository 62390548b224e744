"""SegNet and SegNet-Basic: encoder-decoder networks that upsample with the encoder's pooling indices.

Paper: Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture
for Image Segmentation", arXiv:1511.00561 (2015; TPAMI 2017). We register the arXiv year, 2015.

Reference code followed: alexgkendall/SegNet-Tutorial ``Models/segnet_train.prototxt`` (SegNet) and
``Models/segnet_basic_train.prototxt`` (SegNet-Basic), Caffe with the caffe-segnet ``Upsample`` layer.

- SegNet: the 13 conv layers of VGG16, each 3x3 conv (with bias, as in the prototxt) + BN + ReLU;
  2x2/2 max pooling that also emits argmax indices. The decoder mirrors the encoder: unpooling with
  those indices, then 13 conv + BN + ReLU whose last layer, ``conv1_1_D`` (64 -> C), is the
  classifier and gives raw logits with neither BN nor ReLU (some ports put BN+ReLU after it, which
  clips the logits at zero).
- SegNet-Basic: LRN on the input, 4 encoders of 7x7 conv 64 + BN + ReLU + pool, 4 decoders of
  unpool + 7x7 conv 64 + BN (no ReLU in the decoder, as in the prototxt), then a 1x1 classifier.

Caffe's pooling rounds the output size up, so we pool with ``ceil_mode=True`` and unpool to the
stored pre-pool size (the prototxt's explicit ``upsample_h/upsample_w`` 23x30, 45x60 at 360x480):
any input size round-trips, e.g. 250x333, and logits always come out at the input's resolution.

Deviations: none in topology. Initialisation follows the prototxt fillers (MSRA weights, zero conv
bias, BN scale 1 and shift 0.001). BN epsilon is PyTorch's 1e-5, which torchvision's VGG16-BN also
uses, so ImageNet weights load unchanged. Pretrained backbone weights come from torchvision's
``vgg16_bn`` (the tutorial started from Caffe VGG16 without BN).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.models.backbones import (
    VGG16_STAGES,
    VGGBackbone,
    WeightsSource,
    load_backbone,
    rename_keys_on_load,
)
from pixelwise.models.layers import ConvBNReLU
from pixelwise.models.registry import register_model

__all__ = ["SegNet", "legacy_segnet_keys", "segnet", "segnet_basic"]

SEGNET_BASIC_STAGES: tuple[tuple[int, ...], ...] = ((64,), (64,), (64,), (64,))


@dataclass(frozen=True)
class SegNetConfig:
    """The knobs in which SegNet and SegNet-Basic differ.

    Attributes:
        stages: output widths of the encoder convs, one tuple per pooling stage.
        kernel_size: conv kernel of every encoder/decoder conv (3 for SegNet, 7 for Basic).
        decoder_relu: whether decoder convs end in ReLU (SegNet yes, Basic no).
        input_lrn: Basic normalises the raw input with LRN (size 5, alpha 1e-4, beta 0.75).
        classifier_kernel: kernel of the conv that produces the logits.
        classifier_is_last_decoder_conv: SegNet's classifier *is* ``conv1_1_D`` (it replaces the
            last mirrored conv); Basic's ``conv_classifier`` is an extra 1x1 after the decoder.
    """

    stages: tuple[tuple[int, ...], ...]
    kernel_size: int
    decoder_relu: bool
    input_lrn: bool
    classifier_kernel: int
    classifier_is_last_decoder_conv: bool


SEGNET = SegNetConfig(
    stages=VGG16_STAGES,
    kernel_size=3,
    decoder_relu=True,
    input_lrn=False,
    classifier_kernel=3,
    classifier_is_last_decoder_conv=True,
)
SEGNET_BASIC = SegNetConfig(
    stages=SEGNET_BASIC_STAGES,
    kernel_size=7,
    decoder_relu=False,
    input_lrn=True,
    classifier_kernel=1,
    classifier_is_last_decoder_conv=False,
)


def _conv_bn(in_channels: int, out_channels: int, kernel_size: int, *, relu: bool) -> nn.Sequential:
    """Conv (with bias, as the prototxt has) + BN, and ReLU when ``relu``."""
    if relu:
        return ConvBNReLU(in_channels, out_channels, kernel_size, bias=True)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(out_channels),
    )


def _encoder(config: SegNetConfig, in_channels: int) -> VGGBackbone:
    """The shared VGG-style backbone: conv (with bias) + BN + ReLU per layer, ceil-mode pools."""
    return VGGBackbone(
        stages=config.stages,
        batch_norm=True,
        in_channels=in_channels,
        kernel_size=config.kernel_size,
        return_layers=(f"pool{len(config.stages)}",),
    )


def legacy_segnet_keys(
    state: Mapping[str, Tensor], *, stages: tuple[tuple[int, ...], ...] = VGG16_STAGES
) -> dict[str, Tensor]:
    """Keys of SegNet checkpoints written before the shared backbone -> today's.

    ``encoder.{stage}.{layer}.{0 conv | 1 BN}.*`` -> ``encoder.features.{i}.*``, ``i`` counted in
    torchvision's layout (conv, BN, ReLU per layer; a pool per stage). Other keys pass. Pure.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) >= 5 and parts[0] == "encoder" and parts[1].isdigit() and parts[2].isdigit():
            stage, layer, sub = int(parts[1]), int(parts[2]), int(parts[3])
            index = _features_index(stage, layer, stages) + sub
            key = f"encoder.features.{index}." + ".".join(parts[4:])
        out[key] = value
    return out


def _features_index(stage: int, layer: int, widths: tuple[tuple[int, ...], ...]) -> int:
    """Index of a conv in a VGG-BN ``features`` list: 3 modules per conv, 1 pool per stage."""
    return sum(3 * len(w) + 1 for w in widths[:stage]) + 3 * layer


def _decoder(config: SegNetConfig) -> nn.ModuleList:
    """Mirror of the encoder, deepest stage first; each stage runs after one unpooling.

    A decoder stage has as many convs as its encoder stage; all keep the stage's width except the
    last, which narrows to the previous stage's width (e.g. ``conv4_1_D`` 512 -> 256). In SegNet the
    last conv of the shallowest stage is the classifier and is built separately.
    """
    stages = []
    for index in reversed(range(len(config.stages))):
        widths = config.stages[index]
        out_width = config.stages[index - 1][-1] if index > 0 else widths[0]
        n_convs = len(widths)
        if index == 0 and config.classifier_is_last_decoder_conv:
            n_convs -= 1
        layers = []
        for position in range(n_convs):
            out = out_width if position == len(widths) - 1 else widths[-1]
            layers.append(_conv_bn(widths[-1], out, config.kernel_size, relu=config.decoder_relu))
        stages.append(nn.Sequential(*layers))
    return nn.ModuleList(stages)


class SegNet(nn.Module):
    """SegNet: VGG-style encoder, pooling-index decoder, per-pixel classifier.

    Input N x ``in_channels`` x H x W (any H, W >= 1); output logits N x C x H x W. Pooling rounds
    up (Caffe's convention) and unpooling restores each stage's exact pre-pool size.

    Attributes:
        lrn: ``LocalResponseNorm`` on the input (SegNet-Basic) or None.
        encoder: the paper's encoder, a :class:`~pixelwise.models.backbones.VGGBackbone` whose
            pools also return their indices (SegNet: VGG16's 5 stages, 13 convs).
        decoder: mirrored stages, deepest first, each run after an unpooling.
        classifier: the conv that gives the logits; nothing (no BN, no ReLU) follows it.
    """

    def __init__(self, config: SegNetConfig, *, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.lrn = (
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) if config.input_lrn else None
        )
        self.encoder = _encoder(config, in_channels)
        # Checkpoints written before the shared backbone used per-stage keys.
        self.register_load_state_dict_pre_hook(
            rename_keys_on_load(partial(legacy_segnet_keys, stages=config.stages))
        )
        self.decoder = _decoder(config)
        width = config.stages[0][0]
        self.classifier = nn.Conv2d(
            width, num_classes, config.classifier_kernel, padding=config.classifier_kernel // 2
        )
        _init_like_prototxt(self)

    def forward(self, x: Tensor) -> Tensor:
        if self.lrn is not None:
            x = self.lrn(x)
        # The decoder's "Upsample" needs the argmax masks (pool*_mask in Caffe).
        x, indices, sizes = self.encoder.forward_with_indices(x)
        for stage, index, size in zip(
            self.decoder, reversed(indices), reversed(sizes), strict=True
        ):
            # output_size = the pre-pool size: with ceil pooling an odd side would otherwise
            # come back one pixel too large.
            x = F.max_unpool2d(x, index, 2, 2, output_size=size)
            x = stage(x)
        return self.classifier(x)


def _init_like_prototxt(model: nn.Module) -> None:
    """The prototxt's fillers: MSRA (He, fan-in) conv weights, zero bias, BN scale 1, shift 0.001."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.constant_(module.bias, 0.001)


def _build_segnet(
    config: SegNetConfig, *, num_classes: int, weights_backbone: WeightsSource
) -> SegNet:
    model = SegNet(config, num_classes=num_classes)
    load_backbone(model.encoder, weights_backbone)
    return model


@register_model(
    "segnet",
    paper="Badrinarayanan, Kendall, Cipolla, SegNet (arXiv:1511.00561)",
    year=2015,
    input_size=(360, 480),
    num_classes=11,
)
def segnet(*, num_classes: int, weights_backbone: WeightsSource = None) -> SegNet:
    """SegNet (VGG16 encoder) of SegNet-Tutorial's ``segnet_train.prototxt``.

    Args:
        num_classes: output classes (CamVid: 11).
        weights_backbone: torchvision ``VGG16_BN_Weights``, a path to a saved ``vgg16_bn`` state
            dict, the state dict itself, or None (random backbone).
    """
    return _build_segnet(SEGNET, num_classes=num_classes, weights_backbone=weights_backbone)


@register_model(
    "segnet_basic",
    paper="Badrinarayanan, Kendall, Cipolla, SegNet-Basic (arXiv:1511.00561)",
    year=2015,
    input_size=(360, 480),
    num_classes=11,
)
def segnet_basic(*, num_classes: int) -> SegNet:
    """SegNet-Basic of SegNet-Tutorial's ``segnet_basic_train.prototxt`` (trained from scratch).

    Args:
        num_classes: output classes (CamVid: 11).
    """
    return _build_segnet(SEGNET_BASIC, num_classes=num_classes, weights_backbone=None)
