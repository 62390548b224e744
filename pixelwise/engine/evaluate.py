"""Evaluation: one dataset-wide confusion matrix over a loader."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from pixelwise.engine.inference import predict_probs
from pixelwise.losses import match_target
from pixelwise.metrics import ConfusionMatrix


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crop: Sequence[int] | None = None,
    stride: Sequence[int] | None = None,
) -> ConfusionMatrix:
    """Accumulate the confusion matrix of ``model`` over ``batches``; the caller's mode is kept."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, device=device)
    try:
        for images, targets in batches:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = targets.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=_amp_dtype(device), enabled=amp):
                probs = predict_probs(model, images, scales=scales, flip=flip, crop=crop, stride=stride)
            matrix.update(probs.argmax(dim=1), match_target(probs, targets))
    finally:
        model.train(was_training)
    matrix.all_reduce()
    return matrix


def _amp_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16
