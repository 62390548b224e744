"""PSPNet: a dilated ResNet whose last feature map is pooled at four scales and concatenated back.

Paper: Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017, arXiv:1612.01105.

Reference code followed: the authors' released inference nets hszhao/PSPNet
``evaluation/prototxt/pspnet{50_ADE20K,101_VOC2012,101_cityscapes}_473/713.prototxt`` for the
topology and the counts, and the authors' PyTorch port hszhao/semseg ``model/pspnet.py`` (the
trainable version of the same net) for the training-time parts (auxiliary head, dropout):

- Backbone: ResNet-50/101 with the "deep stem" (3x3/2 conv 64, 3x3 conv 64, 3x3 conv 128, each
  BN + ReLU, then the 3x3/2 max pool); ``layer3`` and ``layer4`` keep stride 1 and dilate every 3x3
  conv by 2 and 4, so ``layer4`` (res5, 2048 channels) is at 1/8 of the input (output stride 8).
  This is the shared :class:`~pixelwise.models.backbones.ResNetBackbone`.
- Pyramid pooling module on res5 (prototxt ``conv5_3_pool{1,2,3,6}`` ... ``conv5_3_concat``): bins
  1, 2, 3 and 6, each an average pool to bin x bin, a 1x1 conv 2048 -> 512 (no bias) + BN + ReLU,
  bilinearly upsampled to the res5 size with the corners aligned; concatenated after res5 itself
  finest bin first, [res5, bin 6, bin 3, bin 2, bin 1] (4096 channels), the bottom order of the
  prototxts' ``conv5_3_concat``. ``ppm.branches.0..3`` are bins 1, 2, 3, 6 (``conv5_3_pool1_conv``
  .. ``conv5_3_pool6_conv``), so the order matters only to the head's first conv, whose input
  channels 2048-2559 meet bin 6 and 3584-4095 bin 1.
- Head: 3x3 conv 4096 -> 512 (no bias) + BN + ReLU (``conv5_4``), dropout 0.1
  (``conv5_4/dropout``), 1x1 conv 512 -> C with bias (``conv6``), bilinearly upsampled to the
  input size.
- Auxiliary head (training only, ``aux=True``): on res4 (``layer3``, 1024 channels; the paper's
  res4b22 in ResNet-101, res4f in ResNet-50) a 3x3 conv 1024 -> 256 + BN + ReLU, dropout 0.1, 1x1
  conv 256 -> C, upsampled to the input size; the recipes weight its loss by 0.4
  (``loss.aux_weights: [0.4]``). The released prototxts are inference nets and do not have it;
  its shape is hszhao/semseg's.

With 150 classes and no auxiliary head ``pspnet50`` has 46.78M parameters and ``pspnet101`` with
21 classes 65.71M, the counts of the released prototxts (docs/models.md).

Deviations and choices:

- Pooling. The prototxts average-pool with fixed kernels, kernel = stride = map / bin: 60/30/20/10
  on the 60x60 res5 of a 473 input, 90/45/30/15 on the 90x90 of a 713 input. Here the bins are
  adaptive average pools (as hszhao/semseg): bin i of b spans rows floor(i h / b) up to
  ceil((i + 1) h / b), which for h divisible by b is exactly the release's window, so at 473 and
  713 the two are the same function (tests/test_pspnet.py checks it). At other sizes they differ,
  and only the adaptive pool still has a meaning: on a 64x64 map (a 505 input) the adaptive bin 6
  averages windows of 11 or 12 rows, some sharing a row (0-10, 10-21, 21-31, 32-42, ...), where
  Caffe's kernel-10 pool would give a 7x7 map whose last row averages 4 rows, and the release's
  fixed ``Interp`` sizes (60 or 90) would then no longer match res5. The release never meets this:
  its evaluation (``evaluation/scale_process.m``) pads every image or tile to the crop size before
  the net.
- ``align_corners``. Caffe's ``Interp`` layer (from DeepLab) interpolates with the corner pixels
  aligned (PyTorch ``align_corners=True``), as hszhao/semseg does. The pyramid's upsampling is
  internal to the net and follows the release: ``align_corners=True`` (for bin 1, a constant, the
  mode does not matter). The final upsampling of the logits to the input size keeps pixelwise's
  convention, ``align_corners=False``, like the loss and the sliding-window inference; the
  release's ``conv6_interp`` (zoom 8, corners aligned) gives 8 (h - 1) + 1 pixels, the input's size
  only for 8k + 1 inputs (473, 713). At 473 ours samples the 60x60 logits up to 0.43 of a res5
  pixel (3.4 input pixels) away from the release's near the borders and at the same place at the
  centre.
- Dropout. The main head's is the prototxts' Caffe ``Dropout`` layer (ratio 0.1 after
  ``conv5_4``'s ReLU), which drops single activations: :class:`~torch.nn.Dropout`.
  hszhao/semseg drops whole channels (``Dropout2d``) in both heads; the auxiliary head, which only
  hszhao/semseg describes, keeps its :class:`~torch.nn.Dropout2d`.
- Released weights. Caffe's ``conv5_4`` sees [res5, bin 6, bin 3, bin 2, bin 1], as ``head.0``
  here; hszhao/semseg's trained models concatenate [res5, bin 1, bin 2, bin 3, bin 6], so their
  ``cls.0.weight`` needs its input channels 2048-4095 reversed in blocks of 512 before it fits.
- The auxiliary head is built only with ``aux=True`` (the released counts have none); calling
  ``model(x, return_aux=True)`` without it raises. The released nets' ``param`` blocks train the
  new layers (pyramid, head) at 10x the trunk's rate and the classifier's bias at 20x; the recipes
  say so with ``optim.param_groups`` (configs/base/pspnet_semseg.yaml).
- Batch 1 in training: BatchNorm after the 1x1 bin would normalise one value per channel, which
  PyTorch refuses with a bare ``ValueError``; here it is a :class:`PixelwiseError` that names the
  fix (a batch of 2 or more, as every recipe has, or ``model.eval()``). Evaluation at batch 1 works.

The authors' Caffe weights (``caffe=True``, ``pixelwise convert``, docs/model-zoo.md): the released
nets differ from the trainable port in three places, and a model built with ``caffe=True``
computes the release's function exactly at its 8k+1 input sizes: the stride 2 of res3 sits on the
first 1x1 conv of ``conv3_1`` (``conv3_1_1x1_reduce``, stride 2; torchvision puts it on the 3x3),
the stem's max pool rounds up (Caffe's pooling), and the logits are upsampled with the corners
aligned (``conv6_interp``, zoom 8: 8 (h - 1) + 1 pixels, the input size for an 8k + 1 input). The
parameters are the same; the default (False) keeps the layout hszhao/semseg's ImageNet ResNets
were trained in.

Pretrained backbone (``weights_backbone``): the deep stem's keys are ``conv1..3``/``bn1..3`` plus
``layer1..4`` (and ``fc``, dropped), the layout of hszhao/semseg's ImageNet ResNets
(``resnet50_v2.pth``, ``resnet101_v2.pth``), which load as they are. torchvision's ImageNet
ResNets have the 7x7 stem and fit only a model built with ``deep_stem=False`` (then
``ResNet50_Weights.IMAGENET1K_V1`` etc. load directly); that variant is not the paper's.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.errors import PixelwiseError
from pixelwise.models.backbones import (
    ResNetBackbone,
    WeightsSource,
    load_backbone,
    rename_keys_on_load,
)
from pixelwise.models.layers import ConvBNReLU
from pixelwise.models.registry import register_model

__all__ = ["PSPNet", "PyramidPooling", "pspnet50", "pspnet101"]

PAPER = "Zhao et al., Pyramid Scene Parsing Network (arXiv:1612.01105)"
BINS: tuple[int, ...] = (1, 2, 3, 6)
HEAD_CHANNELS = 512
AUX_CHANNELS = 256
DROPOUT = 0.1


def legacy_pspnet_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys of PSPNet checkpoints written before the backbone was named so -> today's.

    ``encoder.*`` -> ``backbone.*``; other keys pass unchanged. Pure.
    """
    return {
        "backbone." + key.removeprefix("encoder.") if key.startswith("encoder.") else key: value
        for key, value in state.items()
    }


class PyramidPooling(nn.Module):
    """Pool the map to each ``bins`` size, 1x1 conv + BN + ReLU, upsample, concatenate after ``x``.

    ``forward`` maps N x C x h x w to N x (C + len(bins) * C / len(bins)) x h x w; branch i's
    ``pool`` (an adaptive average pool) gives N x C x bins[i] x bins[i] for any h, w >= 1. The
    branches are listed in the order of ``bins`` (coarsest first, the release's pool1..pool6) and
    concatenated after ``x`` in the reverse order, finest first, as the release's
    ``conv5_3_concat``. Upsampling aligns the corners, as the release's ``Interp``.
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = BINS) -> None:
        super().__init__()
        branch_channels = in_channels // len(bins)
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(
            nn.Sequential(
                OrderedDict(
                    pool=nn.AdaptiveAvgPool2d(b),
                    conv=ConvBNReLU(in_channels, branch_channels, 1),
                )
            )
            for b in self.bins
        )
        self.out_channels = in_channels + branch_channels * len(self.bins)

    def forward(self, x: Tensor) -> Tensor:
        if self.training and x.shape[0] == 1:
            self._refuse_one_value_per_channel()
        size = x.shape[-2:]
        pooled = [
            F.interpolate(branch(x), size=size, mode="bilinear", align_corners=True)
            for branch in reversed(self.branches)
        ]
        return torch.cat([x, *pooled], dim=1)

    def _refuse_one_value_per_channel(self) -> None:
        # SyncBatchNorm pools the statistics of every rank, so one sample per rank is fine there.
        if 1 not in self.bins:
            return
        if isinstance(self.branches[self.bins.index(1)].conv[1], nn.BatchNorm2d):
            raise PixelwiseError(
                "PSPNet cannot train on a batch of 1: the BatchNorm after its 1x1 pyramid bin "
                "would see one value per channel; set data.batch_size to 2 or more (the PSPNet "
                "recipes use 16), or call model.eval() to run a single image."
            )


def _classifier(
    in_channels: int, mid_channels: int, num_classes: int, dropout: type[nn.Module]
) -> nn.Sequential:
    """3x3 conv + BN + ReLU, dropout, 1x1 conv to the classes (the main and auxiliary heads)."""
    return nn.Sequential(
        ConvBNReLU(in_channels, mid_channels, 3),
        dropout(DROPOUT),
        nn.Conv2d(mid_channels, num_classes, 1),
    )


class PSPNet(nn.Module):
    """PSPNet; logits N x C x H x W for any input N x 3 x H x W.

    ``forward(x, return_aux=True)`` returns ``(logits, [aux])`` where ``aux`` is the auxiliary
    head's N x C x H x W prediction from res4 (needs ``aux=True``).

    Args:
        depth: the ResNet's depth (50 or 101 in the paper).
        num_classes: output classes.
        aux: build the auxiliary head on res4.
        deep_stem: the paper's three-conv stem; False gives torchvision's 7x7 stem, so that
            torchvision's ImageNet ResNets load.
        caffe: compute the authors' Caffe release (stride on the 1x1 reduce conv, ceil-mode
            stem pool, logits upsampled with the corners aligned); see the module docstring.

    Attributes:
        backbone: ``ResNetBackbone(depth, output_stride=8, deep_stem=...)`` returning ``layer3``
            (res4, 1024 ch) and ``layer4`` (res5, 2048 ch), both at 1/8.
        ppm: the :class:`PyramidPooling` module on res5 (2048 -> 4096 channels).
        head: 3x3 conv 4096 -> 512 + BN + ReLU, dropout, 1x1 conv -> C.
        aux_head: the same shape on res4, 1024 -> 256 -> C; None unless ``aux``.
    """

    def __init__(
        self,
        *,
        depth: int,
        num_classes: int,
        aux: bool = False,
        deep_stem: bool = True,
        caffe: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(
            depth,
            output_stride=8,
            deep_stem=deep_stem,
            return_layers=("layer3", "layer4"),
            caffe=caffe,
        )
        # The release's conv6_interp aligns the corners; pixelwise's convention does not.
        self.align_logits = caffe
        # Checkpoints written before the rename name the backbone ``encoder``.
        self.register_load_state_dict_pre_hook(rename_keys_on_load(legacy_pspnet_keys))
        res4_channels, res5_channels = self.backbone.out_channels
        self.ppm = PyramidPooling(res5_channels, BINS)
        # The release's Caffe Dropout drops activations; hszhao/semseg's aux head drops channels.
        self.head = _classifier(self.ppm.out_channels, HEAD_CHANNELS, num_classes, nn.Dropout)
        self.aux_head = (
            _classifier(res4_channels, AUX_CHANNELS, num_classes, nn.Dropout2d) if aux else None
        )

    def forward(self, x: Tensor, return_aux: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        size = x.shape[-2:]
        res4, res5 = self.backbone(x)
        logits = _upsample(self.head(self.ppm(res5)), size, self.align_logits)
        if not return_aux:
            return logits
        if self.aux_head is None:
            raise PixelwiseError(
                "This PSPNet was built without its auxiliary head, so return_aux=True has nothing "
                "to return; build it with aux=True (model.options: {aux: true}) or leave "
                "loss.aux_weights empty."
            )
        return logits, [_upsample(self.aux_head(res4), size, self.align_logits)]


def _upsample(x: Tensor, size: torch.Size, align_corners: bool = False) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


def _build_pspnet(
    *,
    depth: int,
    num_classes: int,
    aux: bool,
    deep_stem: bool,
    caffe: bool,
    weights_backbone: WeightsSource,
) -> PSPNet:
    model = PSPNet(depth=depth, num_classes=num_classes, aux=aux, deep_stem=deep_stem, caffe=caffe)
    load_backbone(model.backbone, weights_backbone)
    return model


@register_model("pspnet50", paper=PAPER, year=2017, input_size=(473, 473), num_classes=150)
def pspnet50(
    *,
    num_classes: int,
    aux: bool = False,
    deep_stem: bool = True,
    caffe: bool = False,
    weights_backbone: WeightsSource = None,
) -> PSPNet:
    """PSPNet on a dilated ResNet-50: the authors' ADE20K model (150 classes, 473x473 crops).

    Args:
        num_classes: output classes.
        aux: build the auxiliary head on res4 (train with ``loss.aux_weights: [0.4]``).
        deep_stem: the paper's three-conv stem (default); False gives torchvision's 7x7 stem.
        caffe: compute the authors' Caffe release exactly (for converted weights; see the
            module docstring).
        weights_backbone: ImageNet weights for the backbone, or None (random). With the deep stem:
            a state dict (or its file) in hszhao/semseg's layout (``resnet50_v2.pth``: ``conv1..3``,
            ``bn1..3``, ``layer1..4``; ``fc`` is dropped). With ``deep_stem=False``: torchvision's
            ``ResNet50_Weights`` (or its name) or a saved torchvision ``resnet50`` state dict.
    """
    return _build_pspnet(
        depth=50,
        num_classes=num_classes,
        aux=aux,
        deep_stem=deep_stem,
        caffe=caffe,
        weights_backbone=weights_backbone,
    )


@register_model("pspnet101", paper=PAPER, year=2017, input_size=(713, 713), num_classes=21)
def pspnet101(
    *,
    num_classes: int,
    aux: bool = False,
    deep_stem: bool = True,
    caffe: bool = False,
    weights_backbone: WeightsSource = None,
) -> PSPNet:
    """PSPNet on a dilated ResNet-101: the authors' VOC (21 classes, 473x473) and Cityscapes
    (19 classes, 713x713) models. Arguments as :func:`pspnet50` (``resnet101_v2.pth``,
    ``ResNet101_Weights``)."""
    return _build_pspnet(
        depth=101,
        num_classes=num_classes,
        aux=aux,
        deep_stem=deep_stem,
        caffe=caffe,
        weights_backbone=weights_backbone,
    )
