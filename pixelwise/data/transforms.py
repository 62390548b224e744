"""Joint image + mask augmentation on ``torchvision.transforms.v2``.

Inputs and outputs follow the sample contract: ``image`` uint8 3xHxW, ``mask`` int64 HxW. The
pair is wrapped as ``tv_tensors.Image`` / ``tv_tensors.Mask`` so that every geometric op moves both
alike, masks are only ever resized with nearest neighbour (v2 dispatches on the Mask type), photo-
metric ops touch only the image, and padding fills the mask with the ignore index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pixelwise.data.base import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomScale(v2.Transform):
    """Resize by a factor drawn uniformly from ``scale_range`` (image bilinear, mask nearest)."""

    def __init__(self, scale_range: tuple[float, float]) -> None:
        super().__init__()
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (float(low), float(high))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        factor = self.scale_range[0] + torch.rand(()).item() * (
            self.scale_range[1] - self.scale_range[0]
        )
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # antialias only matters for the image; v2 resizes a Mask with NEAREST whatever we pass.
        return F.resize(inpt, params["size"], antialias=True)


class JointTransform:
    """Applies a v2 pipeline to an ``(image, mask)`` pair and unwraps the result to plain tensors."""

    def __init__(self, ops: Sequence[v2.Transform]) -> None:
        self.pipeline = v2.Compose(list(ops))

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        image_out, mask_out = self.pipeline(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return image_out.as_subclass(Tensor), mask_out.as_subclass(Tensor).long()

    def __repr__(self) -> str:
        return f"JointTransform({self.pipeline})"


def _to_normalised(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def _resize(size: Sequence[int] | None) -> list[v2.Transform]:
    return [v2.Resize(list(size), antialias=True)] if size else []


def build_train_transforms(
    *,
    crop_size: Sequence[int] | None = None,
    resize: Sequence[int] | None = None,
    scale_range: Sequence[float] = (1.0, 1.0),
    hflip: bool = True,
    color_jitter: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> JointTransform:
    """Resize, random scale, crop (padding the mask with ignore), flip, jitter, normalise."""
    ops: list[v2.Transform] = _resize(resize)
    if tuple(scale_range) != (1.0, 1.0):
        ops.append(RandomScale(tuple(scale_range)))
    if crop_size:
        ops.append(
            v2.RandomCrop(
                list(crop_size),
                pad_if_needed=True,
                fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX},
            )
        )
    if hflip:
        ops.append(v2.RandomHorizontalFlip(p=0.5))
    if color_jitter > 0:
        ops.append(
            v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter)
        )
    return JointTransform(ops + _to_normalised(mean, std))


def build_eval_transforms(
    *,
    resize: Sequence[int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> JointTransform:
    """Deterministic: optional resize, then normalisation."""
    return JointTransform(_resize(resize) + _to_normalised(mean, std))


def normalise_image(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 Nx3xHxW or 3xHxW -> normalised float32, for inference on raw images."""
    x = image.float() / 255.0
    shape = (-1, 1, 1)
    return (x - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
