"""ENet: an encoder-decoder built for real-time segmentation on embedded GPUs.

Paper: Paszke, Chaurasia, Kim, Culurciello, "ENet: A Deep Neural Network Architecture for
Real-Time Semantic Segmentation", arXiv:1606.02147 (2016).

Reference code followed: the authors' Torch7 release e-lab/ENet-training,
``train/models/encoder.lua`` (initial block, stages 1-3) and ``train/models/decoder.lua``
(stages 4-5, which replace the encoder's 1x1 classifier). With 11 classes the network has 363,791
learnable parameters, the paper's "0.37 M", and costs 1.69 GMACs at 360x640 (1.27 at 360x480,
3.85 at 512x1024) as counted by ``torch.utils.flop_counter``.

What the released code fixes that the paper text leaves open:

- Internal width of every bottleneck is ``out_channels / 4``, also when downsampling (16->64 has
  16 internal channels, 64->128 has 32). davidtvs/PyTorch-ENet uses ``in_channels / 4`` for the
  downsampling bottlenecks and so has 350,652 parameters; we follow the authors.
- Biases: the 1x1 projection/expansion convs and the first conv of an asymmetric pair have none;
  the 3x3 regular, dilated and transposed convs, the second asymmetric conv, the initial conv and
  the final transposed conv keep theirs (the paper says "no bias in projections").
- The paper's asymmetric "5x1 then 1x5" is, in encoder.lua, ``SpatialConvolution(kW=5, kH=1)``
  then ``(kW=1, kH=5)`` (Torch writes width first), i.e. PyTorch kernels ``(1, 5)`` then ``(5, 1)``.
- Batch norm uses ``eps=1e-3`` as in the Torch code.
- The decoder uses ReLU, not PReLU, and has no spatial dropout. Its upsampling bottleneck's skip
  branch is ``1x1 conv -> BN -> MaxUnpool`` with the pooling indices of the matching encoder
  downsampling bottleneck; its main branch has a 3x3 stride-2 transposed conv.

Deviations from the reference:

- Any input size works. Torch's floor-mode pooling drops the last row/column of an odd-sized map,
  after which no transposed conv can return to the input size. Here every downsampling rounds
  *up* instead: the initial block's pool and the bottlenecks' pools use ``ceil_mode=True``, and the
  2x2 stride-2 projection sees the map zero-padded by one row/column when it is odd. Unpooling and
  the 3x3 transposed convs then receive the encoder's exact sizes through ``output_size``, and the
  final 2x2 stride-2 transposed conv (which can only double) is cropped by the padded row/column.
  For sizes divisible by 8 this is the reference computation exactly.
- Batch-norm initialisation. The reference's ``nn.SpatialBatchNormalization`` (torch/nn
  ``BatchNormalization:reset``) draws every gamma from U(0, 1) and sets beta to 0; here PyTorch's
  default gamma = 1, beta = 0 is kept (PyTorch itself drew gamma from U(0, 1) before version 1.2,
  so ports written before then started from the reference's gammas). The non-transposed convs and
  PReLU start as in Torch: weights and biases from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), slopes 0.25.
- The paper's two-stage training (encoder first, with a 1x1 classifier on 1/8-resolution labels,
  then the whole network) is a training recipe and is not part of this module; the encoder-only
  classifier is not built.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.errors import PixelwiseError
from pixelwise.models.registry import register_model

Activation = Literal["prelu", "relu"]

_BN_EPS = 1e-3  # encoder.lua / decoder.lua: nn.SpatialBatchNormalization(n, 1e-3)
_INTERNAL_RATIO = 4  # internal width = out_channels / 4 in both Torch files
_ASYMMETRIC_KERNEL = 5  # encoder.lua's ``wbottleneck``
# Stages 2 and 3 (paper Table 1), as (dilation, asymmetric): regular, dilated 2, asymmetric 5,
# dilated 4, regular, dilated 8, asymmetric 5, dilated 16.
_STAGE23_BLOCKS = (
    (1, False),
    (2, False),
    (1, True),
    (4, False),
    (1, False),
    (8, False),
    (1, True),
    (16, False),
)
_EARLY_DROPOUT = 0.01  # bottleneck 1.0-1.4 (encoder.lua: ``ct < 5``)
_LATE_DROPOUT = 0.1  # from bottleneck 2.0 on


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


def _activation(kind: Activation, channels: int) -> nn.Module:
    """PReLU with one slope per channel (Torch's ``nn.PReLU(n)``) in the encoder, ReLU after it."""
    if kind == "prelu":
        return nn.PReLU(channels)
    return nn.ReLU(inplace=True)


def _dropout(p: float) -> nn.Module:
    """Spatial dropout drops whole channels; the decoder has none (``p == 0``)."""
    return nn.Dropout2d(p) if p > 0 else nn.Identity()


def _conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    # Projections carry no bias: the BN that follows has its own shift (paper Sec. 3).
    return nn.Conv2d(in_channels, out_channels, 1, bias=False)


def _middle_conv(channels: int, *, dilation: int, asymmetric: bool) -> nn.Module:
    """The bottleneck's spatial conv: 3x3 (dilated or not) or the factorised 5x5."""
    if asymmetric:
        k, pad = _ASYMMETRIC_KERNEL, _ASYMMETRIC_KERNEL // 2
        return nn.Sequential(
            nn.Conv2d(channels, channels, (1, k), padding=(0, pad), bias=False),
            nn.Conv2d(channels, channels, (k, 1), padding=(pad, 0)),
        )
    return nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)


class InitialBlock(nn.Module):
    """``[3x3/2 conv 3->13 || 2x2/2 max pool of the input]`` -> concat (16) -> BN -> PReLU.

    Output is ``ceil(H/2) x ceil(W/2)``: the conv rounds up, so the pool does too.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.bn = _bn(out_channels)
        self.act = _activation("prelu", out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class Bottleneck(nn.Module):
    """Residual bottleneck that keeps size and width: regular, dilated or asymmetric.

    ``act(x + dropout(BN(1x1(act(BN(conv(act(BN(1x1(x)))))))))`` with ``channels / 4`` inside.
    """

    def __init__(
        self,
        channels: int,
        *,
        dilation: int = 1,
        asymmetric: bool = False,
        activation: Activation,
        dropout: float,
    ) -> None:
        super().__init__()
        if asymmetric and dilation != 1:
            raise ValueError("an asymmetric bottleneck is not dilated in ENet")
        internal = channels // _INTERNAL_RATIO
        self.main = nn.Sequential(
            _conv1x1(channels, internal),
            _bn(internal),
            _activation(activation, internal),
            _middle_conv(internal, dilation=dilation, asymmetric=asymmetric),
            _bn(internal),
            _activation(activation, internal),
            _conv1x1(internal, channels),
            _bn(channels),
            _dropout(dropout),
        )
        self.act = _activation(activation, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.main(x))


class DownsamplingBottleneck(nn.Module):
    """Halves the size and widens: main branch starts with a 2x2/2 conv, skip is a max pool
    (whose indices the decoder reuses) padded with zero channels. Encoder only, so PReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, dropout: float) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("a downsampling bottleneck cannot reduce the channel count")
        internal = out_channels // _INTERNAL_RATIO  # authors' out/4, not davidtvs's in/4
        self.extra_channels = out_channels - in_channels
        self.main = nn.Sequential(
            nn.Conv2d(in_channels, internal, 2, stride=2, bias=False),
            _bn(internal),
            _activation("prelu", internal),
            _middle_conv(internal, dilation=1, asymmetric=False),
            _bn(internal),
            _activation("prelu", internal),
            _conv1x1(internal, out_channels),
            _bn(out_channels),
            _dropout(dropout),
        )
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
        self.act = _activation("prelu", out_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the ``ceil(H/2) x ceil(W/2)`` output and the pooling indices into ``x``."""
        h, w = x.shape[-2:]
        # Pad odd sizes by one zero row/column so the 2x2/2 conv rounds up like the ceil pool.
        main = self.main(F.pad(x, (0, w % 2, 0, h % 2)))
        skip, indices = self.pool(x)
        skip = F.pad(skip, (0, 0, 0, 0, 0, self.extra_channels))
        return self.act(main + skip), indices


class UpsamplingBottleneck(nn.Module):
    """Doubles the size and narrows (decoder, ReLU): main branch has a 3x3/2 transposed conv,
    skip is ``1x1 conv -> BN -> MaxUnpool`` with the encoder's pooling indices."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        internal = out_channels // _INTERNAL_RATIO
        self.reduce = nn.Sequential(
            _conv1x1(in_channels, internal), _bn(internal), _activation("relu", internal)
        )
        # output_padding=1 is Torch's adjW/adjH=1; forward overrides it through output_size.
        self.upconv = nn.ConvTranspose2d(
            internal, internal, 3, stride=2, padding=1, output_padding=1
        )
        self.expand = nn.Sequential(
            _bn(internal),
            _activation("relu", internal),
            _conv1x1(internal, out_channels),
            _bn(out_channels),
        )
        self.skip = nn.Sequential(_conv1x1(in_channels, out_channels), _bn(out_channels))
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.act = _activation("relu", out_channels)

    def forward(self, x: Tensor, indices: Tensor, output_size: tuple[int, int]) -> Tensor:
        """Upsample ``x`` to ``output_size``, the size of the map the encoder pooled."""
        main = self.expand(self.upconv(self.reduce(x), output_size=output_size))
        skip = self.unpool(self.skip(x), indices, output_size)
        return self.act(main + skip)


class ENet(nn.Module):
    """ENet for ``num_classes`` classes; takes N x 3 x H x W and returns N x C x H x W logits.

    Stages (paper Table 1): initial (1/2); stage 1 = downsampling 16->64 + 4 regular (1/4);
    stage 2 = downsampling 64->128 + 8 mixed; stage 3 = the same 8 without downsampling (1/8);
    stage 4 = upsampling 128->64 + 2 regular (1/4); stage 5 = upsampling 64->16 + 1 regular (1/2);
    then a 2x2/2 transposed conv to ``num_classes``.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise PixelwiseError(
                f"ENet needs at least one class, got num_classes={num_classes}; "
                "set model.num_classes to the dataset's class count (or null)."
            )
        # Dropout is 0.01 for the first five bottlenecks (1.0-1.4) and 0.1 after.
        self.initial = InitialBlock(3, 16)
        self.down1 = DownsamplingBottleneck(16, 64, dropout=_EARLY_DROPOUT)
        self.stage1 = nn.Sequential(
            *(Bottleneck(64, activation="prelu", dropout=_EARLY_DROPOUT) for _ in range(4))
        )
        self.down2 = DownsamplingBottleneck(64, 128, dropout=_LATE_DROPOUT)
        self.stage2 = _dilated_stage(128)
        self.stage3 = _dilated_stage(128)
        self.up4 = UpsamplingBottleneck(128, 64)
        self.stage4 = nn.Sequential(
            *(Bottleneck(64, activation="relu", dropout=0.0) for _ in range(2))
        )
        self.up5 = UpsamplingBottleneck(64, 16)
        self.stage5 = Bottleneck(16, activation="relu", dropout=0.0)
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 2, stride=2)

    def encoder_modules(self) -> list[nn.Module]:
        """Initial block and stages 1-3, in order (PReLU, spatial dropout)."""
        return [self.initial, self.down1, *self.stage1, self.down2, *self.stage2, *self.stage3]

    def decoder_modules(self) -> list[nn.Module]:
        """Stages 4-5 and the final transposed conv, in order (ReLU, no dropout)."""
        return [self.up4, *self.stage4, self.up5, self.stage5, self.fullconv]

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = self.initial(x)
        size1 = (x.shape[-2], x.shape[-1])  # pooled by down1, restored by up5
        x, indices1 = self.down1(x)
        x = self.stage1(x)
        size2 = (x.shape[-2], x.shape[-1])  # pooled by down2, restored by up4
        x, indices2 = self.down2(x)
        x = self.stage3(self.stage2(x))
        x = self.stage4(self.up4(x, indices2, size2))
        x = self.stage5(self.up5(x, indices1, size1))
        # A 2x2/2 transposed conv can only double; for odd inputs drop the row/column that
        # corresponds to the initial block's rounding up.
        return self.fullconv(x)[..., :h, :w]


def _dilated_stage(channels: int) -> nn.Sequential:
    """Stage 2 (after its downsampling) and stage 3: regular, dil 2, asym 5, dil 4, regular,
    dil 8, asym 5, dil 16 - all with dropout 0.1 and PReLU."""
    blocks = [
        Bottleneck(
            channels,
            dilation=dilation,
            asymmetric=asymmetric,
            activation="prelu",
            dropout=_LATE_DROPOUT,
        )
        for dilation, asymmetric in _STAGE23_BLOCKS
    ]
    return nn.Sequential(*blocks)


@register_model(
    "enet",
    paper=(
        "Paszke et al., ENet: A Deep Neural Network Architecture for Real-Time Semantic "
        "Segmentation (arXiv:1606.02147)"
    ),
    year=2016,
    input_size=(360, 640),  # the paper's 640x360 timing/FLOP comparison with SegNet
    num_classes=11,  # CamVid, the setting of the 0.37 M parameter count
)
def enet(*, num_classes: int) -> ENet:
    """ENet as released by the authors (e-lab/ENet-training), 363,791 parameters at 11 classes."""
    return ENet(num_classes)
