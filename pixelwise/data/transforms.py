"""Joint image + mask augmentation on ``torchvision.transforms.v2``.

Inputs and outputs follow the sample contract: ``image`` uint8 3xHxW, ``mask`` int64 HxW. The
pair is wrapped as ``tv_tensors.Image`` / ``tv_tensors.Mask`` so that every geometric op moves both
alike, masks are only ever resized with nearest neighbour (v2 dispatches on the Mask type), photo-
metric ops touch only the image, and padding fills the mask with the ignore index.

Instance samples ``(image, target dict)`` go through :class:`InstanceTransform` instead
(:func:`build_instance_train_transforms`, :func:`build_instance_eval_transforms`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from pixelwise.data.base import IGNORE_INDEX, SegmentationDataset, image_size
from pixelwise.data.instances import INSTANCE_FIELDS
from pixelwise.errors import PixelwiseError

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


#: How many training images :func:`crop_size_warning` sizes: from their headers, so the check
#: costs milliseconds on a dataset of any size, at the price of seeing only the first few.
CROP_CHECK_IMAGES = 8


def crop_size_warning(
    dataset: Any,
    crop_size: Sequence[int] | None,
    *,
    resize: Sequence[int] | None = None,
    scale_range: Sequence[float] = (1.0, 1.0),
    count: int = CROP_CHECK_IMAGES,
) -> str | None:
    """One line of warning when ``data.crop_size`` is larger than every training image checked.

    The random crop of :func:`build_train_transforms` pads an image smaller than itself (the mask
    with ignore), so such a crop trains on padding in every sample without any error. Images are
    measured as the crop meets them: after ``data.resize`` and at the top of
    ``data.scale_range``; without a resize, the first ``count`` images (:func:`first_image_sizes`).
    None when one of them holds the crop, or when nothing could be measured.
    """
    if not crop_size:
        return None
    if resize:
        sizes, which = [(int(resize[0]), int(resize[1]))], f"data.resize {list(resize)}"
    else:
        sizes = first_image_sizes(dataset, count)
        which = f"each of the first {len(sizes)} training images"
    factor = max(scale_range)
    crop_h, crop_w = crop_size
    if not sizes or any(h * factor >= crop_h and w * factor >= crop_w for h, w in sizes):
        return None
    high, wide = max(h for h, _ in sizes), max(w for _, w in sizes)
    scaled = f", x{factor:g} at the top of data.scale_range" if factor != 1 else ""
    return (
        f"warning: data.crop_size {list(crop_size)} is larger than {which} (at most "
        f"{high}x{wide}{scaled}), so every crop is padded with ignored pixels; lower "
        "data.crop_size, or set it to null to train on whole images."
    )


def first_image_sizes(dataset: Any, count: int = CROP_CHECK_IMAGES) -> list[tuple[int, int]]:
    """``(height, width)`` of the first ``count`` images of ``dataset`` that can be measured.

    Subset and balancing views are looked through to the dataset that reads the files. A sample
    that names its image file first (``(image, label)``, as most readers index) is measured from
    the file's header (:func:`~pixelwise.data.base.image_size`, no pixels decoded); any other (a
    frame of a .mat file, a rendered image) is decoded with the reader's ``load_image``. A sample
    that fails is left out: the training's own read reports it in its own sentence.
    """
    stored = _stored_dataset(dataset)
    if stored is None:
        return []
    sizes = []
    for sample in stored.samples[:count]:
        try:
            sizes.append(_image_size(stored, sample))
        except Exception:  # noqa: BLE001 - a warning's check never stops training
            continue
    return sizes


def _image_size(dataset: SegmentationDataset, sample: Any) -> tuple[int, int]:
    first = sample[0] if isinstance(sample, tuple | list) and sample else None
    if isinstance(first, Path):
        try:
            return image_size(first)
        except PixelwiseError:
            pass  # not a picture (a .mat file, say): the reader decodes it below
    height, width = dataset.load_image(sample).shape[-2:]
    return int(height), int(width)


def _stored_dataset(dataset: Any) -> SegmentationDataset | None:
    """The :class:`SegmentationDataset` under any views (each keeps it as ``base``)."""
    for _ in range(8):  # views nest a few deep at most; never loop on a strange object
        if isinstance(dataset, SegmentationDataset):
            return dataset
        dataset = getattr(dataset, "base", None)
    return None


class InstanceTransform:
    """Applies a v2 pipeline to an ``(image, target)`` sample of an instance dataset.

    ``target`` is the dict of :mod:`pixelwise.data.instances`; boxes and masks move with the image
    (v2 dispatches on ``BoundingBoxes`` and ``Mask``), ``labels``, ``iscrowd`` and ``area`` are
    filtered with them by ``SanitizeBoundingBoxes``. With ``drop_crowd`` the crowd regions are
    removed first (torchvision's detection training does not learn from them). The result is
    unwrapped to plain tensors: a float image and a target with ``boxes`` (N, 4) float32 and
    ``masks`` (N, H, W) uint8 at the transformed size; ``area`` stays in the original pixels.
    """

    def __init__(self, ops: Sequence[v2.Transform], *, drop_crowd: bool = False) -> None:
        self.pipeline = v2.Compose(list(ops))
        self.drop_crowd = drop_crowd

    def __call__(self, image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        target = dict(target)
        if self.drop_crowd and len(target["iscrowd"]):
            keep = target["iscrowd"] == 0
            for key in INSTANCE_FIELDS:
                target[key] = target[key][keep]
        size = tuple(image.shape[-2:])
        target["boxes"] = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=size)
        target["masks"] = tv_tensors.Mask(target["masks"])
        image_out, target_out = self.pipeline(tv_tensors.Image(image), target)
        for key in ("boxes", "masks"):
            target_out[key] = target_out[key].as_subclass(Tensor)
        return image_out.as_subclass(Tensor), target_out

    def __repr__(self) -> str:
        return f"InstanceTransform({self.pipeline}, drop_crowd={self.drop_crowd})"


def _per_instance(inputs: tuple[Any, dict[str, Any]]) -> tuple[Tensor, ...]:
    """The target tensors ``SanitizeBoundingBoxes`` filters along with the boxes (and masks)."""
    target = inputs[1]
    return tuple(target[key] for key in ("labels", "iscrowd", "area") if key in target)


def _instance_ops(
    resize: Sequence[int] | None, hflip: bool, mean: Sequence[float], std: Sequence[float]
) -> list[v2.Transform]:
    ops = _resize(resize)
    if hflip:
        ops.append(v2.RandomHorizontalFlip(p=0.5))
    # last, so that boxes a resize shrank below one pixel go with their masks and labels
    return ops + _to_normalised(mean, std) + [v2.SanitizeBoundingBoxes(labels_getter=_per_instance)]


def build_instance_train_transforms(
    *,
    resize: Sequence[int] | None = None,
    hflip: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    drop_crowd: bool = True,
) -> InstanceTransform:
    """Crowd regions out, optional resize, random horizontal flip, normalise, drop degenerate boxes.

    Images left without objects stay (Mask R-CNN trains on them as negatives). The model's own
    normalisation is expected to be the identity: the pipeline normalises with ``mean``/``std``
    as it does for every pixelwise network.
    """
    return InstanceTransform(_instance_ops(resize, hflip, mean, std), drop_crowd=drop_crowd)


def build_instance_eval_transforms(
    *,
    resize: Sequence[int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> InstanceTransform:
    """Deterministic: optional resize, normalise, drop degenerate boxes; crowd regions kept."""
    return InstanceTransform(_instance_ops(resize, False, mean, std))
