"""Parameter and FLOP counts, the figures that say whether a model is faithful to its paper."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, *, trainable_only: bool = True) -> int:
    """Learnable parameters (``requires_grad``); fixed layers such as FCN's bilinear deconvs are
    left out unless ``trainable_only=False``. Buffers (BN running stats) never count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, input_size: tuple[int, int], in_channels: int = 3) -> int:
    """FLOPs of one forward pass at batch 1, counted by ``torch.utils.flop_counter``.

    torch counts a multiply-add as 2 FLOPs, so MACs = FLOPs / 2. The model is put in eval mode for
    the count and its previous mode is restored. A model built under ``torch.device("meta")`` is
    counted without computing anything (the input follows the model's device).
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        x = torch.zeros(1, in_channels, *input_size, device=device)
        with FlopCounterMode(display=False) as counter:
            model(x)
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)
