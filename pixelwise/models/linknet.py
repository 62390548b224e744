"""LinkNet: a ResNet-18 encoder whose features are added back into a light decoder.

Paper: Chaurasia, Culurciello, "LinkNet: Exploiting Encoder Representations for Efficient Semantic
Segmentation", arXiv:1707.03718 (2017).

Reference code followed: e-lab/LinkNet ``models/model.lua`` (Torch7):

- Encoder: ResNet-18's stem (7x7/2 conv 64, BN, ReLU, 3x3/2 max pool) and ``layer1..layer4``
  (64, 128, 256, 512 channels at strides 4, 4, 8, 16, 32); torchvision's modules, fc dropped.
- Decoder block (m, n): 1x1 conv m -> m/4, BN, ReLU; 3x3 full (transposed) conv m/4 -> m/4 with
  the block's stride, BN, ReLU; 1x1 conv m/4 -> n, BN, ReLU. Blocks (m, n) = (512, 256), (256, 128),
  (128, 64) upsample by 2; (64, 64) keeps the size.
- Each block's output is added to the *input* of the matching encoder block (the max-pool output
  for block 1, ``layer{k-1}``'s output for block k) and ``model.lua`` applies a ReLU after the sum.
- Head: 3x3/2 full conv 64 -> 32, BN, ReLU; 3x3 conv 32 -> 32, BN, ReLU; 2x2/2 full conv 32 -> C.

All convs and full convs of the decoder and head carry a bias (Torch's default), and the decoder's
BN use ``eps=1e-3`` as in ``model.lua`` (the head's first BN uses Torch's default 1e-5); with these
the parameter count is the reference's 11,535,659 at 11 classes.

Deviation for sizes the network's strides do not divide (the paper and reference use multiples of
32): each transposed conv is told the exact size of the map it is added to (``output_size``, which
picks output padding 0 or 1), and the final 2x2/2 full conv, which can only produce an even size,
is cropped to the input's size by dropping its last row/column. No interpolation is involved (so
``align_corners`` does not arise); for sizes divisible by 32 nothing is cropped and the network is
exactly the reference's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.models.backbones import ResNetBackbone, WeightsSource, load_backbone
from pixelwise.models.layers import ConvBNReLU
from pixelwise.models.registry import register_model

__all__ = ["LinkNet", "LinkNetDecoder", "linknet"]

# (in, out, stride) of decoder blocks 1..4, as in model.lua's bypass2dec/decode calls.
DECODER_BLOCKS: tuple[tuple[int, int, int], ...] = (
    (64, 64, 1),
    (128, 64, 2),
    (256, 128, 2),
    (512, 256, 2),
)
# model.lua builds the decoder's SpatialBatchNormalization with eps 1e-3.
DECODER_BN_EPS = 1e-3


class LinkNetDecoder(nn.Module):
    """Decoder block (m, n): 1x1 m -> m/4, 3x3 full conv (stride s) m/4 -> m/4, 1x1 m/4 -> n.

    Each conv is followed by BN and ReLU. ``forward(x, size)`` returns an n x ``size`` map.
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int) -> None:
        super().__init__()
        mid = in_channels // 4
        self.reduce = ConvBNReLU(in_channels, mid, 1, bias=True, eps=DECODER_BN_EPS)
        self.up = nn.ConvTranspose2d(mid, mid, 3, stride=stride, padding=1)
        self.up_bn = nn.BatchNorm2d(mid, eps=DECODER_BN_EPS)
        self.expand = ConvBNReLU(mid, out_channels, 1, bias=True, eps=DECODER_BN_EPS)

    def forward(self, x: Tensor, size: torch.Size) -> Tensor:
        x = self.reduce(x)
        # output_size picks output padding 0 or 1 so the result matches the encoder map it is
        # added to (model.lua's fixed adjS=1 is right only for even sizes).
        x = F.relu(self.up_bn(self.up(x, output_size=list(size))), inplace=True)
        return self.expand(x)


class LinkNet(nn.Module):
    """LinkNet with a ResNet-18 encoder; logits N x C x H x W for any input N x 3 x H x W.

    Attributes:
        encoder: the shared ``ResNetBackbone(18)`` (keys as torchvision's ``resnet18`` without
            ``fc``), returning the stem's max-pool output and ``layer1``..``layer4``.
        decoder: blocks 1..4 (block k undoes encoder block k).
        head_up, head_bn, head_conv: the 3x3/2 full conv + BN + ReLU and 3x3 conv + BN + ReLU.
        classifier: the final 2x2/2 full conv 32 -> C (raw logits).
    """

    def __init__(self, *, num_classes: int) -> None:
        super().__init__()
        # The stem's max-pool output and layer1..4: 64/64/128/256/512 ch at strides 4/4/8/16/32.
        self.encoder = ResNetBackbone(
            18, return_layers=("stem", "layer1", "layer2", "layer3", "layer4")
        )
        self.decoder = nn.ModuleList(LinkNetDecoder(m, n, stride=s) for m, n, s in DECODER_BLOCKS)
        self.head_up = nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1)
        self.head_bn = nn.BatchNorm2d(32)
        self.head_conv = ConvBNReLU(32, 32, 3, bias=True, eps=DECODER_BN_EPS)
        self.classifier = nn.ConvTranspose2d(32, num_classes, 2, stride=2)
        _init_like_model_lua(self)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        features = self.encoder(x)
        y = features[-1]
        for block, skip in zip(reversed(self.decoder), reversed(features[:-1]), strict=True):
            y = F.relu(skip + block(y, skip.shape[-2:]), inplace=True)
        # The stem's conv output is ceil(H/2) x ceil(W/2); the head's first full conv returns to it.
        stem_size = [(height + 1) // 2, (width + 1) // 2]
        y = F.relu(self.head_bn(self.head_up(y, output_size=stem_size)), inplace=True)
        y = self.classifier(self.head_conv(y))
        # A 2x2/2 full conv doubles the size; for an odd side that is one pixel too many, so the
        # last row/column is dropped (a crop, no interpolation).
        return y[..., :height, :width]


def _init_like_model_lua(model: LinkNet) -> None:
    """model.lua's ``ConvInit`` (normal, std sqrt(2 / (k*k*out))) and ``BNInit`` (1, 0).

    Applied to the decoder and head only; the encoder keeps torchvision's (or pretrained) values.
    Biases keep PyTorch's default, as Torch's did.
    """
    for name, module in model.named_modules():
        if name.startswith("encoder"):
            continue
        if isinstance(module, nn.ConvTranspose2d):
            # A transposed conv's weight is (in, out, k, k): PyTorch's "fan_in" is out*k*k here.
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def _build_linknet(*, num_classes: int, weights_backbone: WeightsSource) -> LinkNet:
    model = LinkNet(num_classes=num_classes)
    load_backbone(model.encoder, weights_backbone)
    return model


@register_model(
    "linknet",
    paper="Chaurasia, Culurciello, LinkNet (arXiv:1707.03718)",
    year=2017,
    input_size=(360, 640),
    num_classes=11,
)
def linknet(*, num_classes: int, weights_backbone: WeightsSource = None) -> LinkNet:
    """LinkNet (ResNet-18 encoder) of e-lab/LinkNet ``models/model.lua``.

    Args:
        num_classes: output classes (CamVid: 11).
        weights_backbone: torchvision ``ResNet18_Weights``, a path to a saved ``resnet18`` state
            dict, the state dict itself, or None (random backbone). ``fc`` is dropped.
    """
    return _build_linknet(num_classes=num_classes, weights_backbone=weights_backbone)
