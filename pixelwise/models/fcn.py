"""FCN-32s, FCN-16s, FCN-8s and FCN-8s at-once on VGG16.

Paper: Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation",
CVPR 2015 / PAMI 2016, arXiv:1411.4038.

Reference code followed: shelhamer/fcn.berkeleyvision.org, ``voc-fcn32s/net.py``,
``voc-fcn16s/net.py``, ``voc-fcn8s/net.py``, ``voc-fcn8s-atonce/net.py`` and ``surgery.py``:

- VGG16's 13 convs with ``conv1_1`` padded by 100 and ceil-mode 2x2 max pools (Caffe rounds pooled
  sizes up); ``fc6`` a 7x7 conv 512->4096 without padding, ``fc7`` a 1x1 conv 4096->4096, each
  followed by ReLU and Dropout(0.5).
- ``score_fr`` (and ``score_pool4`` / ``score_pool3``) are 1x1 convs to the classes, initialised to
  zero as the reference nets are (no weight filler means Caffe's constant 0; the paper's "surgery").
- The upsampling layers are bias-free transposed convs initialised to bilinear interpolation on
  the class diagonal (``surgery.interp``) and kept fixed (``lr_mult: 0``, requires_grad False), as
  in the released models; the README's FAQ notes that learning them made no difference.
- Caffe's ``Crop`` offsets are reproduced exactly (32s: 19; 16s: 5 and 27; 8s: 5, 9 and 31), so the
  logits have the input's size for any input size.
- At-once: pool4 and pool3 are scaled by the fixed factors 0.01 and 0.0001 before their score
  layers.

The VGG16 convs are the shared :class:`~pixelwise.models.backbones.VGGBackbone` (torchvision's
layout, ``backbone.vgg.features.N``; :func:`caffe_conv_names` gives their Caffe names and
:meth:`VGG16FCNBackbone.conv` finds one by it); the other layers keep the Caffe net's names
(``backbone.fc6``, ``backbone.fc7``, ``score_fr``,
``score_pool4``, ``upscore2`` ...), so a converted Caffe model maps one to one.

Deviations:

- Pretrained weights are torchvision's ImageNet VGG16 (RGB input normalised with the ImageNet
  mean/std), converted by :func:`vgg16_to_fcn_state_dict`, instead of the Caffe VGG16 (BGR, 0..255
  minus the mean). Without ``weights_backbone`` the convs get He-normal init (the paper never trains
  from scratch).
- The staged schedule (16s initialised from a trained 32s, 8s from 16s) is a training recipe, not
  part of the builder: every variant here starts from ImageNet VGG16.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from pixelwise.errors import PixelwiseError
from pixelwise.models.backbones import (
    VGG16_STAGES,
    VGGBackbone,
    WeightsSource,
    load_backbone,
    rename_keys_on_load,
)
from pixelwise.models.layers import BilinearConvTranspose2d, crop_like
from pixelwise.models.registry import register_model

PAPER = (
    "Long, Shelhamer, Darrell, Fully Convolutional Networks for Semantic Segmentation "
    "(arXiv:1411.4038)"
)

_FC_CHANNELS = 4096


def caffe_conv_names() -> list[str]:
    """Caffe names of VGG16's 13 convs, in order: ``conv1_1`` ... ``conv5_3``."""
    return [
        f"conv{stage}_{i}"
        for stage, widths in enumerate(VGG16_STAGES, start=1)
        for i in range(1, len(widths) + 1)
    ]


def _vgg16_convs() -> dict[str, tuple[int, ...]]:
    """``{"features.N": weight shape}`` of the shared VGG16's 13 convs, in order (read on meta)."""
    with torch.device("meta"):
        state = VGGBackbone(batch_norm=False).state_dict()
    return {
        k.removesuffix(".weight"): tuple(v.shape) for k, v in state.items() if k.endswith(".weight")
    }


class VGG16FCNBackbone(nn.Module):
    """VGG16 made fully convolutional: the shared :class:`VGGBackbone` plus ``fc6``/``fc7``.

    ``forward`` returns ``(pool3, pool4, fc7)``: strides 8, 16 and 32 relative to the padded input,
    with 256, 512 and 4096 channels. ``conv1_1``'s padding of 100 makes ``fc7`` at least 1x1 for any
    input and leaves the margin that the heads' crop offsets remove.
    """

    def __init__(self) -> None:
        super().__init__()
        self.vgg = VGGBackbone(
            batch_norm=False, first_padding=100, return_layers=("pool3", "pool4", "pool5")
        )
        self.fc6 = nn.Conv2d(512, _FC_CHANNELS, 7)
        self.fc7 = nn.Conv2d(_FC_CHANNELS, _FC_CHANNELS, 1)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(0.5)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        pool3, pool4, pool5 = self.vgg(x)
        fc6 = self.drop(self.relu(self.fc6(pool5)))
        fc7 = self.drop(self.relu(self.fc7(fc6)))
        return pool3, pool4, fc7

    def conv(self, caffe_name: str) -> nn.Conv2d:
        """The conv the Caffe net calls ``caffe_name`` (``conv1_1`` ... ``conv5_3``)."""
        convs = [m for m in self.vgg.features if isinstance(m, nn.Conv2d)]
        return convs[caffe_conv_names().index(caffe_name)]

    def convert(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return vgg16_to_fcn_state_dict(state)


def vgg16_to_fcn_state_dict(
    state: Mapping[str, Tensor], *, source: str = "the given state dict"
) -> dict[str, Tensor]:
    """Convert torchvision's VGG16 state dict into :class:`VGG16FCNBackbone`'s layout.

    ``features.N.*`` become ``vgg.features.N.*`` (the shared backbone keeps torchvision's layout);
    ``classifier.0`` (4096x25088) becomes the 7x7 conv ``fc6`` (4096x512x7x7, torchvision flattens
    C, H, W in that order); ``classifier.3`` (4096x4096) becomes the 1x1 conv ``fc7``; the ImageNet
    classifier ``classifier.6`` is dropped. Pure: ``state`` is not modified.

    Raises:
        PixelwiseError: a key is missing, unexpected, or has the wrong shape (the message names
            it), or the classifier holds NaNs as in ``VGG16_Weights.IMAGENET1K_FEATURES``.
    """
    # (torchvision key prefix, our key prefix, torchvision weight shape, our weight shape)
    plan: list[tuple[str, str, tuple[int, ...], tuple[int, ...]]] = []
    for prefix, shape in _vgg16_convs().items():
        plan.append((prefix, f"vgg.{prefix}", shape, shape))
    plan.append(("classifier.0", "fc6", (_FC_CHANNELS, 512 * 7 * 7), (_FC_CHANNELS, 512, 7, 7)))
    plan.append(
        ("classifier.3", "fc7", (_FC_CHANNELS, _FC_CHANNELS), (_FC_CHANNELS, _FC_CHANNELS, 1, 1))
    )

    problems: list[str] = []
    converted: dict[str, Tensor] = {}
    for src, dst, src_shape, dst_shape in plan:
        for suffix, expected, target in (
            ("weight", src_shape, dst_shape),
            ("bias", src_shape[:1], dst_shape[:1]),
        ):
            key = f"{src}.{suffix}"
            if key not in state:
                problems.append(f"missing {key!r}")
            elif tuple(state[key].shape) != expected:
                problems.append(f"{key!r} has shape {tuple(state[key].shape)}, expected {expected}")
            else:
                converted[f"{dst}.{suffix}"] = state[key].reshape(target)
    known = {f"{src}.{suffix}" for src, *_ in plan for suffix in ("weight", "bias")}
    # classifier.6 is ImageNet's 1000-way classifier: FCN replaces it by score_fr.
    unexpected = sorted(k for k in state if k not in known and not k.startswith("classifier.6."))
    if unexpected:
        problems.append(f"unexpected keys {unexpected[:5]}")
    # VGG16_Weights.IMAGENET1K_FEATURES ships NaN classifiers, and fc6/fc7 are made from them.
    # (Meta tensors have no values to check.)
    fc_weights = [state[k] for k in ("classifier.0.weight", "classifier.3.weight") if k in state]
    if any(not w.is_meta and not torch.isfinite(w).all() for w in fc_weights):
        problems.append(
            "classifier.0/classifier.3 hold non-finite values, so fc6/fc7 cannot use them"
        )
    if problems:
        raise PixelwiseError(
            f"VGG16 weights from {source} are not in torchvision's VGG16 layout "
            f"({'; '.join(problems[:5])}); pass VGG16_Weights.IMAGENET1K_V1 or a file saved "
            "from torchvision.models.vgg16().state_dict()."
        )
    return converted


def legacy_fcn_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys of FCN checkpoints written before the shared backbone (Caffe names) -> today's.

    ``backbone.conv1_1.*`` -> ``backbone.vgg.features.0.*`` and so on; ``backbone.fc6/fc7`` keep
    their names. Other keys pass unchanged. Pure.
    """
    renames = {
        f"backbone.{name}.": f"backbone.vgg.{prefix}."
        for name, prefix in zip(caffe_conv_names(), _vgg16_convs(), strict=True)
    }
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        prefix = next((p for p in renames if key.startswith(p)), None)
        out[key if prefix is None else renames[prefix] + key[len(prefix) :]] = value
    return out


def _score(in_channels: int, num_classes: int) -> nn.Conv2d:
    """A 1x1 scoring conv initialised to zero, as in the reference (Caffe's default filler)."""
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _upscore(num_classes: int, kernel_size: int, stride: int) -> BilinearConvTranspose2d:
    """A fixed bilinear upsampler (``lr_mult: 0`` in the released models)."""
    return BilinearConvTranspose2d(num_classes, kernel_size, stride, learnable=False)


class FCN(nn.Module):
    """FCN on VGG16 with 32, 16 or 8 as the stride of its coarsest fused prediction.

    Input N x 3 x H x W (any H, W); output logits N x C x H x W.

    Args:
        num_classes: number of output classes C.
        output_stride: 32, 16 or 8 (FCN-32s, -16s, -8s).
        at_once: scale pool4 by 0.01 and pool3 by 0.0001 (FCN-8s at-once); only with stride 8.
    """

    def __init__(self, num_classes: int, output_stride: int, *, at_once: bool = False) -> None:
        super().__init__()
        if output_stride not in (32, 16, 8):
            raise ValueError(f"output_stride must be 32, 16 or 8, got {output_stride}")
        if at_once and output_stride != 8:
            raise ValueError("at_once exists only for FCN-8s")
        self.output_stride = output_stride
        # Fixed Caffe Scale layers of the at-once net; 1.0 (skipped) in the staged nets.
        self.pool4_scale = 0.01 if at_once else 1.0
        self.pool3_scale = 0.0001 if at_once else 1.0
        self.backbone = VGG16FCNBackbone()
        # Checkpoints written before the shared backbone name the convs by their Caffe names.
        self.register_load_state_dict_pre_hook(rename_keys_on_load(legacy_fcn_keys))
        self.score_fr = _score(_FC_CHANNELS, num_classes)
        if output_stride == 32:
            self.upscore = _upscore(num_classes, 64, 32)
            return
        self.upscore2 = _upscore(num_classes, 4, 2)
        self.score_pool4 = _score(512, num_classes)
        if output_stride == 16:
            self.upscore16 = _upscore(num_classes, 32, 16)
            return
        self.upscore_pool4 = _upscore(num_classes, 4, 2)
        self.score_pool3 = _score(256, num_classes)
        self.upscore8 = _upscore(num_classes, 16, 8)

    def forward(self, x: Tensor) -> Tensor:
        pool3, pool4, fc7 = self.backbone(x)
        score = self.score_fr(fc7)
        if self.output_stride == 32:
            return crop_like(self.upscore(score), 19, x)
        score = self.upscore2(score)
        score = score + crop_like(self.score_pool4(_scaled(pool4, self.pool4_scale)), 5, score)
        if self.output_stride == 16:
            return crop_like(self.upscore16(score), 27, x)
        score = self.upscore_pool4(score)
        score = score + crop_like(self.score_pool3(_scaled(pool3, self.pool3_scale)), 9, score)
        return crop_like(self.upscore8(score), 31, x)


def _scaled(x: Tensor, factor: float) -> Tensor:
    return x if factor == 1.0 else x * factor


def _build_fcn(
    num_classes: int, weights_backbone: WeightsSource, output_stride: int, at_once: bool = False
) -> FCN:
    """Build an FCN and load ImageNet VGG16 into its backbone; the score layers keep zero init."""
    model = FCN(num_classes, output_stride, at_once=at_once)
    load_backbone(model.backbone, weights_backbone)
    return model


_PAPER_SETTING = {"paper": PAPER, "year": 2015, "input_size": (500, 500), "num_classes": 21}


@register_model("fcn32s", **_PAPER_SETTING)
def fcn32s(*, num_classes: int = 21, weights_backbone: WeightsSource = None) -> FCN:
    """FCN-32s: score_fr upsampled 32x in one fixed bilinear step."""
    return _build_fcn(num_classes, weights_backbone, 32)


@register_model("fcn16s", **_PAPER_SETTING)
def fcn16s(*, num_classes: int = 21, weights_backbone: WeightsSource = None) -> FCN:
    """FCN-16s: score_fr fused with pool4's scores at stride 16."""
    return _build_fcn(num_classes, weights_backbone, 16)


@register_model("fcn8s", **_PAPER_SETTING)
def fcn8s(*, num_classes: int = 21, weights_backbone: WeightsSource = None) -> FCN:
    """FCN-8s: score_fr fused with pool4's and pool3's scores at stride 8."""
    return _build_fcn(num_classes, weights_backbone, 8)


@register_model("fcn8s_atonce", **_PAPER_SETTING)
def fcn8s_atonce(*, num_classes: int = 21, weights_backbone: WeightsSource = None) -> FCN:
    """FCN-8s trained all at once: pool4 and pool3 pre-scaled by 0.01 and 0.0001."""
    return _build_fcn(num_classes, weights_backbone, 8, at_once=True)
