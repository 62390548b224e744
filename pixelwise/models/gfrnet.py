"""G-FRNet: a coarse prediction refined stage by stage through gates on the encoder's features.

Paper: Islam, Rochan, Bruce, Wang, "Gated Feedback Refinement Network for Dense Image Labeling",
CVPR 2017 (no arXiv version; the extended journal version is arXiv:1806.11266).

Reference code followed: mrochan/gfrnet ``models/camvid/train_camvid_gate.prototxt`` and
``test_camvid_gate.prototxt`` (Caffe; 11 CamVid classes, 360x480 input):

- Encoder: the 13 convs of VGG16, each 3x3 conv (with bias) + BN + ReLU, 2x2/2 max pools (Caffe's
  pooling rounds up, so ``ceil_mode=True``), dropout 0.5 on pool3, pool4 and pool5.
- ``conv6`` 3x3 512 -> 1024 and ``conv7`` 3x3 1024 -> 1024 on pool5 (1/32), each + BN + ReLU +
  dropout 0.5; ``pred_1`` = 3x3 conv 1024 -> C: the coarse prediction at 1/32.
- Five refinement stages (the prototxt's stages 2..6) at 1/16, 1/8, 1/4, 1/2 and 1/1 take, in this
  order, ``conv5_3``, ``conv4_3``, ``conv3_3``, ``conv2_2``, ``conv1_2`` (each stage's last ReLU
  output, before its pool). Each stage has:

  - a gate unit: the encoder map -> 3x3 conv to C + BN (``conv5_3_feature_s2`` and the like); the
    deeper side, bilinearly resized to the encoder map's size; their element-wise PRODUCT; BN. The
    deeper side of the first stage is a 3x3 conv pool5 -> C (no BN, ``pool5_feature_s2``); every
    later stage reuses the previous stage's projected encoder map (the conv + BN output; Caffe's
    BN runs in place on that blob), so only the first stage has a conv on the deeper feature.
    There is no ReLU anywhere in the gates or the refinement.
  - a gated refinement unit: the previous prediction, bilinearly resized to the gate's size, is
    concatenated with the gate and a 3x3 conv 2C -> C (bias, no BN, no ReLU) predicts again.
    The concatenation is [gate, prediction] at every stage except the prototxt's stage 5 (the 1/2
    stage on ``conv2_2``), whose ``s5_fusion`` lists [prediction, gate]; both are kept, since the
    order decides which input channels a released weight belongs to.

- Deep supervision: a softmax loss on every prediction (``pred_1`` .. ``pred_5``, ``prediction``),
  each upsampled to the label's size, with Caffe's default loss weight 1: equal weights.

With these the parameter count at 11 classes is 29,194,090 (REFERENCE.md: 29.19M).

Outputs: ``model(x)`` is the last stage's prediction, which is computed at ``conv1_2``'s size, the
input's. ``model(x, return_aux=True)`` returns ``(logits, [pred_1, pred_2, pred_3, pred_4,
pred_5])``, the coarser predictions from the coarsest (1/32) to the 1/2 stage, each bilinearly
upsampled to the input's size: N x C x H x W, as the prototxt's ``pred_k_u`` before its loss.

Released weights (``caffe=True``): the resizes align the corners as caffe-gfrnet's ``Interp``, so
the authors' converted CamVid weights compute their function at 360x480 (docs/model-zoo.md).

Deviations: the prototxt's ``Interp`` layers resize to fixed sizes (23x30, 45x60) or by a zoom of 2,
with Caffe's corner-aligned interpolation. Here every resize goes to the exact size of the encoder
map it meets, with ``align_corners=False`` (the convention of every pixelwise model), so any input
size works, e.g. 97x131. Initialisation follows the prototxt's fillers (MSRA weights, zero biases,
BN scale 1, BN shift 0 in the encoder and 0.001 after it) except that ``conv6``/``conv7`` also get
MSRA: the prototxt gives them no filler, i.e. Caffe's constant 0. Pretrained backbone weights come
from torchvision's ``vgg16_bn`` (the authors started from Caffe's VGG16 without BN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.models.backbones import VGGBackbone, WeightsSource, load_backbone
from pixelwise.models.layers import ConvBNReLU
from pixelwise.models.registry import register_model

__all__ = ["GFRNet", "GateUnit", "GatedRefinement", "gfrnet"]

# The refinement stages, coarse to fine: (encoder output, its channels, prediction first in the
# concatenation). Only the 1/2 stage (the prototxt's s5_fusion on conv2_2) puts the prediction first.
STAGES: tuple[tuple[str, int, bool], ...] = (
    ("conv5", 512, False),
    ("conv4", 512, False),
    ("conv3", 256, False),
    ("conv2", 128, True),
    ("conv1", 64, False),
)
DEEP_WIDTH = 1024  # conv6 and conv7
DROPOUT = 0.5
# The prototxt's shift_filler of every BN after the encoder (the encoder's BN shifts start at 0).
BN_SHIFT_INIT = 0.001


def _resize(x: Tensor, size: tuple[int, int], align_corners: bool = False) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class GateUnit(nn.Module):
    """Gate of one stage: BN(BN(conv(encoder map)) * resize(deeper side)).

    Args:
        in_channels: channels of the encoder map (``conv{k}``) this stage gates.
        num_classes: C, the width of every gate.
        deeper_channels: channels of the deeper feature when it still needs its own 3x3 conv to C
            (pool5, first stage only); None when the deeper side is the previous stage's
            projected encoder map, already C channels.
        align_corners: resize as the release's ``Interp`` (corners aligned), see ``caffe``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        deeper_channels: int | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.project = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.project_bn = nn.BatchNorm2d(num_classes)
        self.deeper = (
            nn.Conv2d(deeper_channels, num_classes, 3, padding=1) if deeper_channels else None
        )
        self.bn = nn.BatchNorm2d(num_classes)

    def forward(self, feature: Tensor, deeper: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the gate and the projected encoder map (the next stage's deeper side)."""
        projected = self.project_bn(self.project(feature))
        if self.deeper is not None:
            deeper = self.deeper(deeper)
        gate = projected * _resize(deeper, projected.shape[-2:], self.align_corners)
        return self.bn(gate), projected


class GatedRefinement(nn.Module):
    """Refinement of one stage: 3x3 conv 2C -> C on the gate and the resized previous prediction.

    Args:
        num_classes: C.
        prediction_first: concatenate [prediction, gate] instead of [gate, prediction].
        align_corners: resize as the release's ``Interp`` (corners aligned), see ``caffe``.
    """

    def __init__(
        self, num_classes: int, *, prediction_first: bool = False, align_corners: bool = False
    ) -> None:
        super().__init__()
        self.prediction_first = prediction_first
        self.align_corners = align_corners
        self.conv = nn.Conv2d(2 * num_classes, num_classes, 3, padding=1)

    def forward(self, gate: Tensor, prediction: Tensor) -> Tensor:
        prediction = _resize(prediction, gate.shape[-2:], self.align_corners)
        parts = (prediction, gate) if self.prediction_first else (gate, prediction)
        return self.conv(torch.cat(parts, dim=1))


class GFRNet(nn.Module):
    """G-FRNet on VGG16-BN; logits N x C x H x W for any input N x 3 x H x W.

    Attributes:
        encoder: the shared ``VGGBackbone`` (torchvision ``vgg16_bn().features`` keys) returning
            ``conv1`` .. ``conv5`` (the stages' last ReLU outputs) and ``pool5`` (after dropout).
        conv6, conv7: 3x3 conv + BN + ReLU at 1/32 (each followed by ``dropout``).
        coarse: ``pred_1``, the 3x3 conv 1024 -> C at 1/32.
        gates, refinements: the five stages, coarse (1/16) to fine (1/1).

    Args:
        num_classes: C.
        caffe: resize inside the net with the corners aligned, as the release's ``Interp`` of
            caffe-gfrnet (``src/caffe/util/interp.cpp``: ratio (in - 1) / (out - 1)); at 360x480
            its fixed sizes (23x30, 45x60) and zoom 2 (out = 2 in in that fork) are the encoder
            maps' sizes, which is where this resizes to. For the authors' converted weights.
    """

    def __init__(self, *, num_classes: int, caffe: bool = False) -> None:
        super().__init__()
        self.encoder = VGGBackbone(
            batch_norm=True,
            return_layers=(*(name for name, _, _ in STAGES), "pool5"),
            dropout_after=(3, 4, 5),
            dropout=DROPOUT,
        )
        pool5_channels = self.encoder.out_channels[-1]
        self.conv6 = ConvBNReLU(pool5_channels, DEEP_WIDTH, 3, bias=True)
        self.conv7 = ConvBNReLU(DEEP_WIDTH, DEEP_WIDTH, 3, bias=True)
        self.dropout = nn.Dropout(DROPOUT)
        self.coarse = nn.Conv2d(DEEP_WIDTH, num_classes, 3, padding=1)
        self.gates = nn.ModuleList(
            GateUnit(
                channels,
                num_classes,
                deeper_channels=pool5_channels if i == 0 else None,
                align_corners=caffe,
            )
            for i, (_, channels, _) in enumerate(STAGES)
        )
        self.refinements = nn.ModuleList(
            GatedRefinement(num_classes, prediction_first=first, align_corners=caffe)
            for _, _, first in STAGES
        )
        _init_like_prototxt(self)

    def forward(
        self, x: Tensor, *, return_aux: bool = False
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        *features, deeper = self.encoder(x)
        y = self.dropout(self.conv7(self.dropout(self.conv6(deeper))))
        predictions = [self.coarse(y)]
        for gate_unit, refine, feature in zip(self.gates, self.refinements, features, strict=True):
            gate, deeper = gate_unit(feature, deeper)
            predictions.append(refine(gate, predictions[-1]))
        # conv1_2 keeps the input's size, so the last prediction needs no resize.
        logits = predictions[-1]
        if not return_aux:
            return logits
        size = tuple(x.shape[-2:])
        return logits, [_resize(p, size) for p in predictions[:-1]]


def _init_like_prototxt(model: GFRNet) -> None:
    """The prototxt's fillers: MSRA convs with zero bias; BN scale 1, shift 0 in the encoder and
    0.001 after it."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            shift = 0.0 if name.startswith("encoder.") else BN_SHIFT_INIT
            nn.init.constant_(module.bias, shift)


def _build_gfrnet(*, num_classes: int, caffe: bool, weights_backbone: WeightsSource) -> GFRNet:
    model = GFRNet(num_classes=num_classes, caffe=caffe)
    load_backbone(model.encoder, weights_backbone)
    return model


@register_model(
    "gfrnet",
    paper="Islam, Rochan, Bruce, Wang, G-FRNet (CVPR 2017; arXiv:1806.11266)",
    year=2017,
    input_size=(360, 480),
    num_classes=11,
)
def gfrnet(
    *, num_classes: int, caffe: bool = False, weights_backbone: WeightsSource = None
) -> GFRNet:
    """G-FRNet (VGG16-BN encoder) of mrochan/gfrnet ``models/camvid/train_camvid_gate.prototxt``.

    Args:
        num_classes: output classes (CamVid: 11).
        caffe: resize with the corners aligned, as the authors' released Caffe net (for their
            converted weights, ``pixelwise convert --model gfrnet-camvid``).
        weights_backbone: torchvision ``VGG16_BN_Weights``, a path to a saved ``vgg16_bn`` state
            dict, the state dict itself, or None (random backbone). The classifier is dropped.
    """
    return _build_gfrnet(num_classes=num_classes, caffe=caffe, weights_backbone=weights_backbone)
