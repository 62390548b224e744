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


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (AVX-512 or AMX).

    Without it (an AVX2-only CPU) bf16 autocast falls back to reference kernels: a U-Net training
    step measured 10x slower than fp32 on such a machine, so autocast there is only a cost.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def amp_in_effect(requested: bool, device: torch.device) -> bool:
    """``train.amp`` as it runs: on CUDA as asked; on the CPU only where bf16 is fast."""
    if not requested:
        return False
    return device.type != "cpu" or cpu_has_fast_bf16()
