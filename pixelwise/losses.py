"""Losses: cross entropy with ignore and class weights, bootstrapped CE, auxiliary-head weighting.

Every loss takes logits N×C×H×W and a target N×H×W with 255 = ignore. A model that returns a centre
crop (U-Net's valid variant) gets its target centre-cropped here, in one place.

A class-weighted average has two conventions, and the releases of this era use both
(``loss.normalize``):

- ``weights``: the weighted sum divided by the summed weights of the counted pixels — PyTorch's
  ``cross_entropy`` and torch7's ``ClassNLLCriterion`` (ENet, LinkNet);
- ``valid``: the weighted sum divided by the number of counted pixels — Caffe's
  ``SoftmaxWithLoss`` with its default ``normalize: true`` (SegNet, G-FRNet, with their
  ``class_weighting``).

The two differ by the mean weight of a batch's labelled pixels, an effective learning-rate factor.
With SegNet's median-frequency weights on CamVid's train split that mean is 0.47 (0.25-1.13 for
single images), so a Caffe recipe trained under ``weights`` would move at about 2.1x (0.9-4x) its
paper's step. Without class weights the two are the same.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.data.base import IGNORE_INDEX
from pixelwise.models.layers import center_crop

#: How a class-weighted loss is averaged (see the module's docstring).
NORMALIZATIONS = ("weights", "valid")


def match_target(logits: Tensor, target: Tensor) -> Tensor:
    """Centre-crop ``target`` to the logits' size when the model returned a smaller, valid crop."""
    return center_crop(target, tuple(logits.shape[-2:]))


class CrossEntropy(nn.Module):
    """Pixel-wise cross entropy averaged over the non-ignored pixels of the batch.

    With ``class_weights`` each pixel's loss is scaled by its class's weight, and the sum is
    divided by the summed weights (``normalize="weights"``) or by the number of counted pixels
    (``"valid"``), as the module's docstring explains.
    """

    def __init__(
        self,
        class_weights: Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        normalize: str = "weights",
    ) -> None:
        super().__init__()
        _check_normalize(normalize)
        self.ignore_index, self.normalize = ignore_index, normalize
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = match_target(logits, target)
        valid = target != self.ignore_index
        if not bool(valid.any()):
            return logits.sum() * 0.0  # an all-ignore batch contributes nothing (not NaN)
        if self.normalize == "valid" and self.class_weights is not None:
            total = F.cross_entropy(
                logits, target, weight=self.class_weights, ignore_index=self.ignore_index,
                reduction="sum",
            )  # fmt: skip
            return total / valid.sum()
        return F.cross_entropy(
            logits, target, weight=self.class_weights, ignore_index=self.ignore_index
        )


class BootstrappedCrossEntropy(nn.Module):
    """Mean cross entropy of the K hardest pixels of each image (Wu, Shen, van den Hengel 2016).

    Args:
        top_k: K, the pixels kept per image (fewer when an image has fewer valid pixels).
        class_weights: optional per-class weights applied to each pixel's loss before ranking.
        normalize: the kept pixels' weighted sum divided by their summed weights (``weights``)
            or by their number (``valid``).
    """

    def __init__(
        self,
        top_k: int = 512,
        class_weights: Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        normalize: str = "weights",
    ) -> None:
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        _check_normalize(normalize)
        self.top_k, self.normalize = top_k, normalize
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = match_target(logits, target)
        pixel_loss = F.cross_entropy(
            logits,
            target,
            weight=self.class_weights,
            ignore_index=self.ignore_index,
            reduction="none",
        ).flatten(1)
        # Ignored pixels have loss 0 but must not be chosen either: rank them below everything.
        valid = (target != self.ignore_index).flatten(1)
        ranked = pixel_loss.masked_fill(~valid, -1.0)
        k = min(self.top_k, ranked.shape[1])
        top, chosen = ranked.topk(k, dim=1)
        keep = top >= 0
        if not bool(keep.any()):
            return logits.sum() * 0.0
        if self.normalize == "valid" or self.class_weights is None:
            return top[keep].mean()
        classes = target.flatten(1).gather(1, chosen)
        classes = classes.masked_fill(~keep, 0)  # an ignored pixel's 255 indexes no weight
        weights = self.class_weights[classes].masked_fill(~keep, 0.0)
        return top[keep].sum() / weights.sum()


class WithAuxiliary(nn.Module):
    """``loss(main) + Σ w_i · loss(aux_i)`` for models called with ``return_aux=True``.

    Auxiliary logits of a lower resolution are upsampled bilinearly (align_corners=False, the
    convention used everywhere in pixelwise) to the target's size before the loss.
    """

    def __init__(self, criterion: nn.Module, aux_weights: Sequence[float]) -> None:
        super().__init__()
        self.criterion = criterion
        self.aux_weights = list(aux_weights)

    def forward(self, output: Tensor | tuple[Tensor, list[Tensor]], target: Tensor) -> Tensor:
        if isinstance(output, Tensor):
            return self.criterion(output, target)
        logits, aux = output
        if len(aux) != len(self.aux_weights):
            raise ValueError(
                f"the model returned {len(aux)} auxiliary outputs but loss.aux_weights has "
                f"{len(self.aux_weights)} weights; give one weight per auxiliary output"
            )
        loss = self.criterion(logits, target)
        for weight, aux_logits in zip(self.aux_weights, aux, strict=True):
            if aux_logits.shape[-2:] != logits.shape[-2:]:
                aux_logits = F.interpolate(
                    aux_logits, size=logits.shape[-2:], mode="bilinear", align_corners=False
                )
            loss = loss + weight * self.criterion(aux_logits, target)
        return loss


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize is {normalize!r}; valid: {', '.join(NORMALIZATIONS)}")


def build_loss(
    name: str,
    *,
    class_weights: Tensor | None = None,
    top_k: int = 512,
    aux_weights: Sequence[float] = (),
    ignore_index: int = IGNORE_INDEX,
    normalize: str = "weights",
) -> nn.Module:
    """The loss named in a config: ``ce`` or ``bootstrap_ce``, wrapped for auxiliary outputs."""
    if name == "ce":
        criterion: nn.Module = CrossEntropy(class_weights, ignore_index, normalize)
    elif name == "bootstrap_ce":
        criterion = BootstrappedCrossEntropy(top_k, class_weights, ignore_index, normalize)
    else:
        raise ValueError(f"unknown loss {name!r}; valid: ce, bootstrap_ce")
    return WithAuxiliary(criterion, aux_weights)
