"""Blocks that several papers share: conv-BN-ReLU, bilinear-initialised upsampling, cropping."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvBNReLU(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> ReLU``; the conv has no bias because BN's shift replaces it.

    ``bias=True`` keeps the redundant conv bias of reference models that had one (SegNet's Caffe
    prototxt, LinkNet's Torch model), so their parameter counts match; ``eps`` is BN's epsilon.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        bias: bool = False,
        eps: float = 1e-5,
    ) -> None:
        if padding is None:
            padding = dilation * (kernel_size // 2)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=bias),
            nn.BatchNorm2d(out_channels, eps=eps),
            nn.ReLU(inplace=True),
        )


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weights of a transposed conv that upsamples each channel bilinearly and mixes none.

    Shape ``(channels, channels, k, k)``, non-zero on the diagonal only: FCN's ``surgery.interp``.
    """
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt_1d = 1 - (og - center).abs() / factor
    filt = (filt_1d[:, None] * filt_1d[None, :]).float()
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt
    return weight


class BilinearConvTranspose2d(nn.ConvTranspose2d):
    """A bias-free transposed conv initialised to bilinear upsampling by ``stride``.

    With ``learnable=False`` the weight is frozen, as in the released FCN models (lr_mult 0).
    """

    def __init__(self, channels: int, kernel_size: int, stride: int, *, learnable: bool) -> None:
        super().__init__(channels, channels, kernel_size, stride=stride, bias=False)
        with torch.no_grad():
            self.weight.copy_(bilinear_kernel(channels, kernel_size))
        self.weight.requires_grad_(learnable)


def crop_like(x: Tensor, offset: int, reference: Tensor) -> Tensor:
    """Caffe's ``Crop`` layer: take ``reference``'s spatial size from ``x`` starting at ``offset``."""
    h, w = reference.shape[-2:]
    return x[..., offset : offset + h, offset : offset + w]


def center_crop(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The centre ``size`` window of ``x`` (U-Net's skip crop, and the target crop for valid nets)."""
    h, w = x.shape[-2:]
    th, tw = size
    if th > h or tw > w:
        raise ValueError(f"cannot centre-crop {h}x{w} to the larger {th}x{tw}")
    if (th, tw) == (h, w):
        return x
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top : top + th, left : left + tw]
