"""State dicts in a torchvision model's published layout, filled with seeded random values."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def random_torchvision_state(
    build: Callable[..., nn.Module], keep: Callable[[str], bool] = lambda key: True
) -> dict[str, Tensor]:
    """The keys and shapes of ``build(weights=None)`` (read on the meta device), random values.

    Integer buffers (BN's ``num_batches_tracked``) get random integers, everything else normals.
    """
    with torch.device("meta"):
        reference = build(weights=None).state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, tensor in reference.items():
        if not keep(key):
            continue
        if tensor.dtype == torch.long:
            state[key] = torch.randint(0, 1000, tensor.shape, generator=generator)
        else:
            state[key] = torch.randn(tensor.shape, generator=generator)
    return state
