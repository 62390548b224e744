"""Losses: cross entropy with ignore and class weights, bootstrapped CE, auxiliary-head weighting.

Every loss takes logits N×C×H×W and a target N×H×W with 255 = ignore. A model that returns a centre
crop (U-Net's valid variant) gets its target centre-cropped here, in one place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.data.base import IGNORE_INDEX
from pixelwise.models.layers import center_crop


def match_target(logits: Tensor, target: Tensor) -> Tensor:
    """Centre-crop ``target`` to the logits' size when the model returned a smaller, valid crop."""
    return center_crop(target, tuple(logits.shape[-2:]))


class CrossEntropy(nn.Module):
    """Pixel-wise cross entropy averaged over the non-ignored pixels of the batch.

    With ``class_weights`` the average is weighted (PyTorch's convention: divided by the summed
    weights of the counted pixels), as in SegNet's and ENet's class balancing.
    """

    def __init__(
        self, class_weights: Tensor | None = None, ignore_index: int = IGNORE_INDEX
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.register_buffer("class_weights", class_weights, persistent=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target = match_target(logits, target)
        if not bool((target != self.ignore_index).any()):
            return logits.sum() * 0.0  # an all-ignore batch contributes nothing (not NaN)
        return F.cross_entropy(
            logits, target, weight=self.class_weights, ignore_index=self.ignore_index
        )


class BootstrappedCrossEntropy(nn.Module):
    """Mean cross entropy of the K hardest pixels of each image (Wu, Shen, van den Hengel 2016).

    Args:
        top_k: K, the pixels kept per image (fewer when an image has fewer valid pixels).
        class_weights: optional per-class weights applied to each pixel's loss before ranking.
    """

    def __init__(
        self,
        top_k: int = 512,
        class_weights: Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        self.top_k = top_k
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
        top, _ = ranked.topk(k, dim=1)
        keep = top >= 0
        if not bool(keep.any()):
            return logits.sum() * 0.0
        return top[keep].mean()


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


def build_loss(
    name: str,
    *,
    class_weights: Tensor | None = None,
    top_k: int = 512,
    aux_weights: Sequence[float] = (),
    ignore_index: int = IGNORE_INDEX,
) -> nn.Module:
    """The loss named in a config: ``ce`` or ``bootstrap_ce``, wrapped for auxiliary outputs."""
    if name == "ce":
        criterion: nn.Module = CrossEntropy(class_weights, ignore_index)
    elif name == "bootstrap_ce":
        criterion = BootstrappedCrossEntropy(top_k, class_weights, ignore_index)
    else:
        raise ValueError(f"unknown loss {name!r}; valid: ce, bootstrap_ce")
    return WithAuxiliary(criterion, aux_weights)
