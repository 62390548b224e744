"""Pretrained encoder weights: a torchvision weights enum, a path to a state dict, or None.

Nothing downloads unless the caller passes an enum (which downloads through torchvision's cache).
Each model that takes ``weights_backbone`` converts the published layout into its own with a named
pure function and loads strictly, so a wrong file fails with the names of the keys that differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from pixelwise.errors import PixelwiseError

WeightsSource = WeightsEnum | str | Path | Mapping[str, Tensor] | None


def load_backbone_state_dict(source: WeightsSource) -> dict[str, Tensor] | None:
    """Resolve ``source`` to a state dict in the publisher's layout (None stays None)."""
    if source is None:
        return None
    if isinstance(source, WeightsEnum):
        return dict(source.get_state_dict(progress=True))
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise PixelwiseError(
            f"Backbone weights file {path} does not exist; pass a torchvision weights enum, "
            "the path of a saved state dict, or None."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a corrupt file
        raise PixelwiseError(
            f"Backbone weights file {path} could not be read ({error}); save it with "
            "torch.save(model.state_dict(), path)."
        ) from None
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise PixelwiseError(f"Backbone weights file {path} holds no state dict.")
    return dict(state)


def describe_source(source: WeightsSource) -> str:
    """How a weights source is named in error messages."""
    if isinstance(source, WeightsEnum):
        return f"{type(source).__name__}.{source.name}"
    if isinstance(source, str | Path):
        return str(source)
    return "the given state dict"


def load_strict(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``load_state_dict(strict=True)`` whose failure names the keys and shapes that differ."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if wrong:
            parts.append(
                "shape mismatch "
                + ", ".join(f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:5])
            )
        raise PixelwiseError(
            f"Weights from {source} do not fit {type(module).__name__}: {'; '.join(parts)}. "
            "Pass weights of the architecture this model expects."
        )
    module.load_state_dict(state, strict=True)


def vgg16_feature_indices() -> list[int]:
    """Indices of the 13 conv layers inside torchvision's ``vgg16().features``."""
    return [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def vgg16_bn_feature_indices() -> list[int]:
    """Indices of the 13 conv layers inside torchvision's ``vgg16_bn().features`` (BN follows each)."""
    return [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
