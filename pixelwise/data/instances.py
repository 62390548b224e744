"""The instance-segmentation contract (Mask R-CNN's targets) shared by the instance datasets.

A sample of ``coco_instances``, ``cityscapes_instances`` and ``voc_instances`` is
``(image, target)``: image ``uint8`` 3xHxW RGB (``tv_tensors.Image``), target a dict in
torchvision's detection format::

    boxes     (N, 4) float32 xyxy in pixels, tv_tensors.BoundingBoxes with canvas_size (H, W);
              a box covers whole pixels: a mask on columns 2..4 gives x1 = 2, x2 = 5
    labels    (N,) int64, contiguous 1..K; 0 is background and is never a target
    masks     (N, H, W) uint8 0/1, tv_tensors.Mask
    iscrowd   (N,) int64; 1 for a crowd region (COCO iscrowd, Cityscapes groups), kept so that
              COCOeval ignores detections on it; the training transforms drop them from the loss
    area      (N,) float32, in pixels of the original image (COCO: the annotation's own area)
    image_id  int; COCO's image id, elsewhere the sample's index in the split

Images without objects are kept, with N = 0 and tensors of shape (0, 4), (0,), (0, H, W).
Instances whose box is degenerate (zero width or height after clamping to the image) are dropped,
as torchvision's detection references do.

``classes`` start with "background" (torchvision's detection class lists do the same), so
``num_classes = K + 1`` is what Mask R-CNN's ``num_classes`` takes and a label indexes ``classes``.
``category_ids[label]`` is the dataset's own id of each class (COCO category id, Cityscapes label
id, VOC class index; 0 for background): results in COCO's JSON format and
:meth:`InstanceDataset.coco_ground_truth` use these ids, never the contiguous labels.

``load_mask`` paints the objects into the semantic contract (class ids, 255 for crowd regions,
pixels claimed by two classes and the annotation's void), which ``datasets check`` walks and the
semantic scores of instance predictions are measured against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors

from pixelwise.data.base import IGNORE_INDEX, SegmentationDataset
from pixelwise.errors import PixelwiseError

#: The target fields with one entry per instance (what a filter of instances must index).
INSTANCE_FIELDS = ("boxes", "labels", "masks", "iscrowd", "area")


@dataclass(frozen=True)
class Objects:
    """The objects of one image as a reader decodes them, before they become a target.

    Attributes:
        masks: (N, H, W) uint8 0/1; its shape gives the image size even when N = 0.
        labels: (N,) contiguous class ids 1..K.
        iscrowd: (N,) 0 or 1.
        boxes: (N, 4) xyxy in pixels, or None for the extents of the masks.
        area: (N,) in pixels, or None for the masks' pixel counts.
        void: (H, W) bool, pixels the annotation leaves unlabelled (VOC's border), or None.
    """

    masks: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    boxes: np.ndarray | None = None
    area: np.ndarray | None = None
    void: np.ndarray | None = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.masks.shape[1]), int(self.masks.shape[2])


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 xyxy boxes around whole pixels of each mask; an empty mask gives zeros.

    The convention is COCO's (``bbox`` = [x, y, w, h] with w = last column - first column + 1), so
    a horizontal flip of the image maps the box exactly onto the box of the flipped mask.
    """
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    if len(masks) == 0:
        return boxes
    rows = masks.any(axis=2)
    cols = masks.any(axis=1)
    present = rows.any(axis=1)
    # argmax finds the first True; on the reversed axis it finds the last one
    boxes[:, 0] = cols.argmax(axis=1)
    boxes[:, 1] = rows.argmax(axis=1)
    boxes[:, 2] = cols.shape[1] - cols[:, ::-1].argmax(axis=1)
    boxes[:, 3] = rows.shape[1] - rows[:, ::-1].argmax(axis=1)
    boxes[~present] = 0
    return boxes


def make_target(objects: Objects, image_id: int) -> dict[str, Any]:
    """The documented target of ``objects`` (see the module docstring), degenerate boxes dropped."""
    height, width = objects.size
    masks = np.ascontiguousarray(objects.masks, dtype=np.uint8)
    boxes = (
        boxes_from_masks(masks)
        if objects.boxes is None
        else np.asarray(objects.boxes, dtype=np.float32).reshape(-1, 4).copy()
    )
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    area = (
        masks.sum(axis=(1, 2), dtype=np.int64) if objects.area is None else np.asarray(objects.area)
    )
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return {
        "boxes": tv_tensors.BoundingBoxes(
            torch.from_numpy(boxes[keep]), format="XYXY", canvas_size=(height, width)
        ),
        "labels": torch.as_tensor(np.asarray(objects.labels)[keep], dtype=torch.int64),
        "masks": tv_tensors.Mask(torch.from_numpy(masks[keep])),
        "iscrowd": torch.as_tensor(np.asarray(objects.iscrowd)[keep], dtype=torch.int64),
        "area": torch.as_tensor(area[keep], dtype=torch.float32),
        "image_id": int(image_id),
    }


def compose_semantic(
    instances: list[tuple[np.ndarray, int, bool]], height: int, width: int
) -> np.ndarray:
    """Paint ``(mask, class, is_crowd)`` instances into an int64 HxW semantic mask.

    Background is 0; a pixel claimed by two different classes, or inside a crowd region, is 255.
    One vectorised pass per instance, no per-pixel Python.
    """
    semantic = np.zeros((height, width), dtype=np.int64)
    conflict = np.zeros((height, width), dtype=bool)
    crowd = np.zeros((height, width), dtype=bool)
    for mask, cls, is_crowd in instances:
        region = mask.astype(bool)
        if is_crowd:
            crowd |= region
            continue
        conflict |= region & (semantic != 0) & (semantic != cls)
        semantic[region & (semantic == 0)] = cls
    semantic[conflict | crowd] = IGNORE_INDEX
    return semantic


def mask_to_rle(mask: np.ndarray | Tensor) -> dict[str, Any]:
    """One HxW binary mask as COCO's compressed RLE, ``counts`` a str (JSON-able)."""
    from pycocotools import mask as mask_utils

    array = mask.cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    rle = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


class InstanceDataset(SegmentationDataset):
    """Base of the instance datasets: ``(image, target)`` samples built from :class:`Objects`.

    Subclasses set ``classes`` (background first), ``palette``, ``category_ids`` and implement
    :meth:`build_index`, :meth:`load_image` and :meth:`load_objects`; :meth:`image_id` defaults
    to the sample's index. ``transforms`` receives and returns ``(image, target)`` (see
    :func:`pixelwise.data.transforms.build_instance_train_transforms`).
    """

    task: ClassVar[str] = "instance"
    #: ``category_ids[label]``: the dataset's own id of each class; 0 for background.
    category_ids: ClassVar[tuple[int, ...]] = ()

    # -- what subclasses provide -------------------------------------------------------------
    def load_objects(self, sample: Any) -> Objects:
        raise NotImplementedError

    def image_id(self, index: int) -> int:
        """The ``image_id`` of sample ``index`` (the index itself unless the format has ids)."""
        return int(index)

    # -- the contract ------------------------------------------------------------------------
    def load_target(self, index: int) -> dict[str, Any]:
        """The target of sample ``index`` at the image's own size, without decoding the image."""
        sample = self.samples[index]
        objects = self.load_objects(sample)
        labels = np.asarray(objects.labels)
        bad = (labels < 1) | (labels >= self.num_classes)
        if bool(bad.any()):
            raise PixelwiseError(
                f"Label {self.describe(sample)} gives class ids {np.unique(labels[bad]).tolist()} "
                f"outside 1..{self.num_classes - 1}; check that the dataset name and root match "
                "the labels."
            )
        return make_target(objects, self.image_id(index))

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:  # type: ignore[override]
        sample = self.samples[index]
        image = self.load_image(sample)
        target = self.load_target(index)
        if tuple(image.shape[-2:]) != tuple(target["masks"].shape[-2:]):
            raise PixelwiseError(
                f"Image and label sizes differ for {self.describe(sample)}: image "
                f"{tuple(image.shape[-2:])}, label {tuple(target['masks'].shape[-2:])}; fix or "
                "remove the pair."
            )
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def load_mask(self, sample: Any) -> Tensor:
        """The objects painted as a semantic class map (see the module docstring)."""
        objects = self.load_objects(sample)
        painted = compose_semantic(
            [
                (mask, int(label), bool(crowd))
                for mask, label, crowd in zip(
                    objects.masks, objects.labels, objects.iscrowd, strict=True
                )
            ],
            *objects.size,
        )
        if objects.void is not None:
            painted[objects.void] = IGNORE_INDEX
        return torch.from_numpy(painted)

    def categories(self) -> list[dict[str, Any]]:
        """COCO's ``categories`` entries: the dataset's own id and the name of each class."""
        return [
            {"id": int(self.category_ids[label]), "name": self.classes[label]}
            for label in range(1, self.num_classes)
        ]

    def coco_ground_truth(self, indices: Sequence[int] | None = None) -> dict[str, Any]:
        """The ground truth of ``indices`` (default: all samples) as a COCO instances document.

        Built from the untransformed targets, so at each image's own size: ``images`` (every image,
        also those without objects), ``annotations`` with ``category_id = category_ids[label]``,
        ``bbox`` [x, y, w, h], ``area``, ``iscrowd`` and a compressed-RLE ``segmentation``, and
        :meth:`categories`. Load it with ``pycocotools.coco.COCO()`` (set ``.dataset``, call
        ``createIndex()``) and evaluate detections whose ``category_id`` went through the same
        ``category_ids`` and whose masks were mapped back to the image's own size.
        """
        images, annotations = [], []
        for index in range(len(self)) if indices is None else indices:
            target = self.load_target(index)
            height, width = target["masks"].shape[-2:]
            image_id = target["image_id"]
            images.append({"id": image_id, "height": int(height), "width": int(width)})
            boxes = target["boxes"].tolist()
            for k, (x1, y1, x2, y2) in enumerate(boxes):
                annotations.append(
                    {
                        "id": len(annotations) + 1,  # COCOeval needs ids, and 0 is not one
                        "image_id": image_id,
                        "category_id": int(self.category_ids[int(target["labels"][k])]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": float(target["area"][k]),
                        "iscrowd": int(target["iscrowd"][k]),
                        "segmentation": mask_to_rle(target["masks"][k]),
                    }
                )
        return {"images": images, "annotations": annotations, "categories": self.categories()}
