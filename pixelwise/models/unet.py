"""U-Net.

Paper: Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015, arXiv:1505.04597.

Reference followed: the paper's text and Fig. 1 (we did not have the released Caffe model):

- Contracting path: 5 levels of two 3x3 convs + ReLU, 64 channels doubling to 1024, with a 2x2 max
  pool (stride 2) between levels.
- Expanding path: a 2x2 "up-convolution" (transposed conv, stride 2) halving the channels, the
  contracting path's map of that level centre-cropped and concatenated, then two 3x3 convs + ReLU;
  a final 1x1 conv to the classes. 23 conv layers in all.
- ``padding="valid"`` is the paper: unpadded convs, so a 572x572 tile gives the 388x388 centre of
  its segmentation. The input must keep every pooled map even (the paper's tiling rule); these sizes
  are 124 + 16k (k >= 4), see :meth:`UNet.output_size`.
- Drop-out "at the end of the contracting path", without a rate or exact place; we apply
  Dropout(0.5) to the outputs of the two deepest encoder levels, as common reimplementations do.
- Init: Gaussian with std sqrt(2 / N), N the incoming nodes of a unit, as the paper says (He normal
  from fan-in; for the up-convs N is their input channels).

Additions that are not in the paper:

- ``padding="same"`` pads each 3x3 conv by 1 and returns logits at the input size for any H and W:
  odd sizes are pooled in ceil mode, and each up-conv's output (one row/column too many after an odd
  size) is cropped to its skip's size, keeping the top-left alignment that ceil pooling implies.
- ``batch_norm=True`` puts BatchNorm after every 3x3 conv (whose bias then goes).

The paper's overlap-tile inference (mirror-padding a large image into 572-tiles) and its weighted
loss belong to the engine and the losses, not to the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pixelwise.errors import PixelwiseError
from pixelwise.models.layers import ConvBNReLU, center_crop
from pixelwise.models.registry import register_model

PAPER = (
    "Ronneberger, Fischer, Brox, U-Net: Convolutional Networks for Biomedical Image Segmentation "
    "(MICCAI 2015, arXiv:1505.04597)"
)

PADDINGS = ("valid", "same")
_LEVELS = 5  # contracting levels, i.e. four poolings


def _conv(in_channels: int, out_channels: int, *, padding: int, batch_norm: bool) -> nn.Sequential:
    """One 3x3 conv + ReLU, with BatchNorm between them when asked."""
    if batch_norm:
        return ConvBNReLU(in_channels, out_channels, 3, padding=padding)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=padding), nn.ReLU(inplace=True)
    )


class DoubleConv(nn.Sequential):
    """The two 3x3 conv + ReLU layers of every U-Net level."""

    def __init__(
        self, in_channels: int, out_channels: int, *, padding: int, batch_norm: bool
    ) -> None:
        super().__init__(
            _conv(in_channels, out_channels, padding=padding, batch_norm=batch_norm),
            _conv(out_channels, out_channels, padding=padding, batch_norm=batch_norm),
        )


class UpBlock(nn.Module):
    """2x2 up-conv halving the channels, match the skip's size, concatenate, two 3x3 convs.

    With valid convs (``padding=0``) the skip is larger by the border the deeper path lost, and is
    centre-cropped (paper Fig. 1). With same convs the up-conv's output is the skip's size, or one
    row/column larger after a ceil-mode pool of an odd size; the extra last row/column goes.
    """

    def __init__(self, in_channels: int, *, padding: int, batch_norm: bool) -> None:
        super().__init__()
        out_channels = in_channels // 2
        self.crop_skip = padding == 0
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(in_channels, out_channels, padding=padding, batch_norm=batch_norm)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        if self.crop_skip:
            skip = center_crop(skip, (x.shape[-2], x.shape[-1]))
        else:
            x = x[..., : skip.shape[-2], : skip.shape[-1]]
        # Skip first, then the upsampled map: the order of the paper's Fig. 1.
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """U-Net with five levels of ``base_channels * 2**i`` channels.

    Input N x in_channels x H x W. Output N x num_classes x h x w where ``(h, w) =
    self.output_size((H, W))``: the input size for ``padding="same"``, the paper's centre crop for
    ``"valid"`` (``crops_output`` is True then, so the loss and metrics crop the target to match).

    Args:
        num_classes: output classes.
        in_channels: input channels (1 in the paper's grey-level microscopy).
        base_channels: channels of the first level; doubled at each of the 4 poolings.
        padding: ``"valid"`` (the paper) or ``"same"``.
        batch_norm: BatchNorm after every 3x3 conv.
        dropout: dropout rate after the two deepest encoder levels (0 turns it off).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        base_channels: int = 64,
        padding: str = "valid",
        batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise PixelwiseError(
                f"U-Net padding {padding!r} is not supported; use one of: {', '.join(PADDINGS)}."
            )
        self.padding = padding
        self.crops_output = padding == "valid"
        conv_pad = 0 if padding == "valid" else 1
        widths = [base_channels * 2**i for i in range(_LEVELS)]
        self.encoders = nn.ModuleList()
        for cin, cout in zip([in_channels, *widths[:-1]], widths, strict=True):
            self.encoders.append(DoubleConv(cin, cout, padding=conv_pad, batch_norm=batch_norm))
        # ceil_mode only matters for "same" on odd sizes; "valid" sizes are checked to be even.
        self.pool = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.dropout = nn.Dropout(dropout)
        self.decoders = nn.ModuleList(
            UpBlock(width, padding=conv_pad, batch_norm=batch_norm) for width in widths[:0:-1]
        )
        self.classifier = nn.Conv2d(base_channels, num_classes, 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # The paper: Gaussian with std sqrt(2/N), N = the incoming nodes of one unit (3*3*64 for a
        # 3x3 conv over 64 channels). A 2x2 stride-2 up-conv reaches each output pixel with one tap
        # per input channel, so there N = in_channels (torch's fan-in would count out_channels*4).
        for module in self.modules():
            if isinstance(module, nn.ConvTranspose2d):
                nn.init.normal_(module.weight, std=(2 / module.in_channels) ** 0.5)
            elif isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            else:
                continue
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def output_size(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """The logits' (h, w) for an input of ``input_hw``.

        Raises:
            PixelwiseError: ``padding="valid"`` and a side is not 124 + 16k (k >= 4), i.e. some
                pooled map would be odd or the output empty; the message names the nearest sizes.
        """
        h, w = (int(s) for s in input_hw)
        if self.padding == "same":
            return h, w
        advice = [
            f"{what} {side} to {' or '.join(map(str, _nearest_valid_sides(side)))}"
            for what, side in (("height", h), ("width", w))
            if not _is_valid_side(side)
        ]
        if advice:
            raise PixelwiseError(
                f"U-Net with padding='valid' cannot take a {h}x{w} input: every pooled map must "
                "be even, so each side must be 124 + 16k with k >= 4 (188, 204, ..., 572, ...); "
                f"pad or crop {' and '.join(advice)}, or build it with padding='same'."
            )
        return _valid_output_side(h), _valid_output_side(w)

    def forward(self, x: Tensor) -> Tensor:
        if self.padding == "valid":
            self.output_size(tuple(x.shape[-2:]))  # fail with the nearest sizes, not in a conv
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = self.pool(x)
            x = encoder(x)
            if level >= _LEVELS - 2:
                x = self.dropout(x)
            skips.append(x)
        for decoder, skip in zip(self.decoders, reversed(skips[:-1]), strict=True):
            x = decoder(x, skip)
        return self.classifier(x)


# Each level's two valid 3x3 convs take 4 pixels off a side and the poolings halve it between
# levels, so with b the side of the bottom level's output, an input side is 16 * b + 124 and the
# output side is 16 * b - 60 = input - 184, which is positive only for b >= 4.
_VALID_OFFSET, _VALID_STEP, _MIN_BOTTOM, _VALID_BORDER = 124, 16, 4, 184


def _is_valid_side(side: int) -> bool:
    bottom, rest = divmod(side - _VALID_OFFSET, _VALID_STEP)
    return rest == 0 and bottom >= _MIN_BOTTOM


def _valid_output_side(side: int) -> int:
    """Output side of a valid U-Net for a valid input side (see :func:`_is_valid_side`)."""
    return side - _VALID_BORDER


def _nearest_valid_sides(side: int) -> list[int]:
    """The valid sides just below and just above ``side`` (only the one above if none is below)."""
    bottom = max((side - _VALID_OFFSET) // _VALID_STEP, _MIN_BOTTOM - 1)
    sides = [_VALID_OFFSET + _VALID_STEP * b for b in (bottom, bottom + 1)]
    return [s for s in sides if _is_valid_side(s)]


@register_model("unet", paper=PAPER, year=2015, input_size=(572, 572), num_classes=2, in_channels=1)
def unet(
    *,
    num_classes: int = 2,
    in_channels: int = 3,
    base_channels: int = 64,
    padding: str = "valid",
    batch_norm: bool = False,
    dropout: float = 0.5,
) -> UNet:
    """U-Net; the paper's setting is ``in_channels=1, num_classes=2``, valid padding, 572x572."""
    return UNet(
        num_classes,
        in_channels=in_channels,
        base_channels=base_channels,
        padding=padding,
        batch_norm=batch_norm,
        dropout=dropout,
    )
