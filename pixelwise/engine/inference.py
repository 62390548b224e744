"""Inference: whole image, sliding window, flip and multi-scale test-time augmentation.

Every path returns class *probabilities* summed over the augmentations at the input's resolution,
so the variants combine by averaging. Upsampling always uses ``align_corners=False`` — the same
convention as training — because mixing the two shifts predictions by half a pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.errors import PixelwiseError


def check_tta(
    scales: Sequence[float],
    crop: Sequence[int] | None,
    stride: Sequence[int] | None,
) -> None:
    """Refuse test-time settings that cannot work, in one sentence naming the option and a fix.

    A window moved by more than its own size leaves pixels that no window covers, so ``stride``
    may not exceed ``crop``; a stride without a window would be ignored, so it is refused too.

    Raises:
        PixelwiseError: for a scale that is not a positive finite number, a window or stride
            below 1 pixel, a stride larger than the window, or a stride without a window.
    """
    bad = [s for s in scales if not (math.isfinite(s) and s > 0)]
    if not scales or bad:
        raise PixelwiseError(
            f"--scales {' '.join(map(str, scales))}: every scale must be a number above 0, "
            "e.g. --scales 0.75 1 1.25."
        )
    if crop is not None and min(crop) < 1:
        raise PixelwiseError(
            f"--crop {crop[0]} {crop[1]}: the window must be at least 1x1 pixels, e.g. --crop 512 512."
        )
    if stride is None:
        return
    if crop is None:
        raise PixelwiseError(
            f"--stride {stride[0]} {stride[1]} moves a sliding window, but no --crop H W gives "
            "its size; add --crop or drop --stride."
        )
    if min(stride) < 1 or stride[0] > crop[0] or stride[1] > crop[1]:
        raise PixelwiseError(
            f"--stride {stride[0]} {stride[1]}: each step must be between 1 and the window "
            f"({crop[0]} {crop[1]}), or pixels would be predicted by no window; e.g. --stride "
            f"{max(1, crop[0] // 2)} {max(1, crop[1] // 2)}."
        )


def _logits(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def sliding_window(
    model: nn.Module, x: Tensor, crop: Sequence[int], stride: Sequence[int]
) -> Tensor:
    """Average softmax over overlapping ``crop`` windows moved by ``stride``; N×C×H×W.

    A window larger than the image is clamped to the image (and its step with it): padding the
    image up to the window only added pixels that were cut off again, and made ``--crop 100000
    100000`` allocate tens of gigabytes of zeros.
    """
    n, _, h, w = x.shape
    ch, cw = min(crop[0], h), min(crop[1], w)
    sh, sw = min(stride[0], ch), min(stride[1], cw)
    rows = list(range(0, h - ch + 1, sh))
    cols = list(range(0, w - cw + 1, sw))
    if rows[-1] + ch < h:
        rows.append(h - ch)
    if cols[-1] + cw < w:
        cols.append(w - cw)
    total = None
    count = torch.zeros(1, 1, h, w, device=x.device)
    for top in rows:
        for left in cols:
            probs = _logits(model, x[..., top : top + ch, left : left + cw]).softmax(dim=1)
            if total is None:
                total = torch.zeros(n, probs.shape[1], h, w, device=x.device, dtype=probs.dtype)
            total[..., top : top + ch, left : left + cw] += probs
            count[..., top : top + ch, left : left + cw] += 1
            del probs  # the next window's forward may use its memory
    return total.div_(count)


def _accumulate(total: Tensor, probs: Tensor) -> Tensor:
    """``total + probs``, in place where the sum keeps ``total``'s dtype: a third map of the
    image's size is what tips a large request over."""
    if torch.promote_types(total.dtype, probs.dtype) == total.dtype:
        return total.add_(probs)
    return total + probs


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    x: Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crop: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
) -> Tensor:
    """Class probabilities N×C×H×W averaged over scales (and horizontal flips when ``flip``).

    Raises:
        PixelwiseError: for settings :func:`check_tta` refuses, or a scale that shrinks the
            image below one pixel.
    """
    check_tta(scales, crop, stride)
    h, w = x.shape[-2:]
    if min(round(h * min(scales)), round(w * min(scales))) < 1:
        raise PixelwiseError(
            f"--scales {min(scales)} shrinks the {h}x{w} image below one pixel; use larger scales."
        )
    total: Tensor | None = None
    views = 0
    for scale in scales:
        xs = (
            x
            if scale == 1.0
            else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        )
        for flipped in (False, True) if flip else (False,):
            xi = xs.flip(-1) if flipped else xs
            if crop is not None:
                probs = sliding_window(model, xi, crop, stride or crop)
            else:
                probs = _logits(model, xi).softmax(dim=1)
            if flipped:
                probs = probs.flip(-1)
            if probs.shape[-2:] != (h, w):
                probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            total = probs if total is None else _accumulate(total, probs)
            del probs  # before the next view's forward, which may need its memory
            views += 1
    assert total is not None
    return total.div_(views)
