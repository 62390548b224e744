"""Scores for instance segmentation: COCO box and mask AP, and painted semantic maps.

- :func:`paint_instances` turns one image's detections into an HxW class map in the *semantic*
  label space, so that an instance network is scored with the same confusion matrix
  (:class:`pixelwise.metrics.ConfusionMatrix`) as the semantic networks: instance label ``l``
  paints class ``l`` and uncovered pixels are background 0. The instance datasets number their
  classes 1..K with 0 for background and paint their ground truth the same way
  (:meth:`pixelwise.data.instances.InstanceDataset.load_mask`), so the two maps share one space.
- :class:`CocoEvaluator` collects ground truth and detections image by image and runs
  pycocotools' ``COCOeval`` for boxes (``"bbox"``) and masks (``"segm"``), returning AP, AP50,
  AP75, APs, APm and APl as plain floats; COCOeval's printing is captured.
- :func:`detections_to_coco_results` writes detections in COCO's results format (RLE masks with
  ``counts`` as a str), for ``pixelwise predict``'s JSON.

Shapes follow torchvision's detection models: a target has ``boxes`` (Nx4 xyxy), ``labels`` (N),
``masks`` (NxHxW 0/1), optionally ``iscrowd`` (N) and ``area`` (N), and ``image_id``; a detection
has ``boxes`` (Nx4), ``labels`` (N), ``scores`` (N) and ``masks`` (Nx1xHxW probabilities).
Nothing here imports the engine.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "COCO_METRICS",
    "CocoEvaluator",
    "detections_to_coco_results",
    "encode_masks",
    "paint_ground_truth",
    "paint_instances",
]

#: The first six of COCOeval's ``stats``, in its order.
COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES = ("bbox", "segm")


def paint_instances(
    masks: Tensor,
    labels: Tensor,
    scores: Tensor,
    size: Sequence[int],
    *,
    score_threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> Tensor:
    """One image's instances as an HxW int64 class map (background 0, instance label l -> l).

    Args:
        masks: (N, 1, H, W) or (N, H, W) mask probabilities (or 0/1 masks).
        labels: (N,) class ids 1..K.
        scores: (N,) detection scores.
        size: (H, W) of the map, used when N = 0.
        score_threshold: detections scoring below it are left out.
        mask_threshold: a pixel belongs to an instance where its mask is ``>=`` this.

    A pixel covered by several instances takes the label of the highest-scoring one (of equal
    scores, the later detection). Instances are painted from the lowest score up, each one a
    whole-mask tensor operation: a loop over the (at most a few hundred) instances, never over
    pixels, and no NxHxW temporary beside the masks.
    """
    if masks.dim() == 4:
        masks = masks[:, 0]
    height, width = int(size[0]), int(size[1])
    painted = torch.zeros(height, width, dtype=torch.int64, device=masks.device)
    keep = scores >= score_threshold
    masks, labels, scores = masks[keep], labels[keep].to(torch.int64), scores[keep]
    for k in torch.argsort(scores, stable=True).tolist():
        painted.masked_fill_(masks[k] >= mask_threshold, labels[k])
    return painted


def paint_ground_truth(
    masks: Tensor,
    labels: Tensor,
    iscrowd: Tensor | None,
    *,
    ignore_index: int = 255,
) -> Tensor:
    """A target's instances as the HxW int64 semantic ground truth the painted predictions meet.

    Background 0, instance label l -> class l; crowd regions and pixels claimed by two different
    classes are ``ignore_index`` (as the instance datasets paint their ``load_mask``).
    """
    masks = masks.bool()
    semantic = torch.zeros(masks.shape[-2:], dtype=torch.int64, device=masks.device)
    ignored = torch.zeros(masks.shape[-2:], dtype=torch.bool, device=masks.device)
    crowd = iscrowd.tolist() if iscrowd is not None else [0] * len(labels)
    for mask, label, is_crowd in zip(masks, labels.tolist(), crowd, strict=True):
        if is_crowd:
            ignored |= mask
            continue
        ignored |= mask & (semantic != 0) & (semantic != label)
        semantic.masked_fill_(mask & (semantic == 0), label)
    return semantic.masked_fill_(ignored, ignore_index)


def encode_masks(masks: Tensor | np.ndarray) -> list[dict[str, Any]]:
    """(N, H, W) 0/1 masks as COCO compressed RLEs with ``counts`` a str (JSON-able)."""
    from pycocotools import mask as mask_utils

    array = masks.detach().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    if array.shape[0] == 0:
        return []
    # pycocotools encodes an HxWxN Fortran-ordered uint8 array in one call.
    rles = mask_utils.encode(np.asfortranarray(array.astype(np.uint8).transpose(1, 2, 0)))
    return [
        {"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles
    ]


def _binary_masks(masks: Tensor, threshold: float) -> Tensor:
    """Detection masks (Nx1xHxW probabilities) or target masks (NxHxW 0/1) as NxHxW uint8."""
    if masks.dim() == 4:
        masks = masks[:, 0]
    if masks.is_floating_point():
        masks = masks >= threshold
    return masks.to(torch.uint8)


def _xywh(boxes: Tensor) -> list[list[float]]:
    b = boxes.detach().cpu().to(torch.float64).reshape(-1, 4)
    return torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).tolist()


def detections_to_coco_results(
    detections: Mapping[str, Tensor],
    image_id: int,
    category_ids: Sequence[int] | None = None,
    *,
    score_threshold: float = 0.0,
    mask_threshold: float = 0.5,
) -> list[dict[str, Any]]:
    """One image's detections in COCO's results format.

    Args:
        detections: ``boxes`` (Nx4 xyxy), ``labels`` (N), ``scores`` (N), optionally ``masks``
            (Nx1xHxW probabilities), at the image's own size.
        image_id: the image's id in the ground truth.
        category_ids: ``category_ids[label]`` is the dataset's own id of a label (COCO's
            category ids are not contiguous); None keeps the labels.
        score_threshold: detections scoring below it are left out.
        mask_threshold: where a mask probability becomes part of the instance.

    Returns:
        One dict per detection with ``image_id``, ``category_id``, ``bbox`` ([x, y, w, h]),
        ``score`` and, when there are masks, ``segmentation`` (RLE, ``counts`` a str).
    """
    keep = detections["scores"] >= score_threshold
    labels = detections["labels"][keep].tolist()
    scores = detections["scores"][keep].tolist()
    boxes = _xywh(detections["boxes"][keep])
    rles = (
        encode_masks(_binary_masks(detections["masks"][keep], mask_threshold))
        if "masks" in detections
        else [None] * len(labels)
    )
    results = []
    for label, score, box, rle in zip(labels, scores, boxes, rles, strict=True):
        result = {
            "image_id": int(image_id),
            "category_id": int(category_ids[label] if category_ids is not None else label),
            "bbox": [round(v, 2) for v in box],
            "score": round(float(score), 5),
        }
        if rle is not None:
            result["segmentation"] = rle
        results.append(result)
    return results


class CocoEvaluator:
    """COCO box and mask AP over a dataset, fed one batch at a time.

    Ground truth comes from the targets themselves (built in memory, masks as RLE), so any
    instance dataset is scored the way COCO's own evaluation scores COCO. Detections and targets
    must be at the same image size. Category ids are the labels 1..``num_classes - 1``.

    Args:
        num_classes: classes including the background 0.
        mask_threshold: where a detection's mask probability becomes part of the instance.
    """

    def __init__(self, num_classes: int, *, mask_threshold: float = 0.5) -> None:
        self.num_classes = num_classes
        self.mask_threshold = mask_threshold
        # Per image id: its size, its ground-truth annotations, its detections (COCO dicts).
        self.images: dict[int, dict[str, Any]] = {}
        self.ground_truth: dict[int, list[dict[str, Any]]] = {}
        self.detections: dict[int, list[dict[str, Any]]] = {}

    def update(
        self, detections: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Any]]
    ) -> None:
        """Add a batch: one detection dict and one target dict per image.

        An image id seen before is skipped (a distributed sampler repeats images to even out the
        ranks), so every image counts once.
        """
        for found, target in zip(detections, targets, strict=True):
            image_id = int(target["image_id"])
            if image_id in self.images:
                continue
            height, width = (int(s) for s in target["masks"].shape[-2:])
            self.images[image_id] = {"id": image_id, "height": height, "width": width}
            self.ground_truth[image_id] = _ground_truth(target, image_id)
            self.detections[image_id] = detections_to_coco_results(
                found, image_id, mask_threshold=self.mask_threshold
            )

    def merge(self, states: Sequence[Mapping[str, Any]]) -> None:
        """Take in other evaluators' :meth:`state` (other ranks); repeated image ids count once."""
        for state in states:
            for image_id, image in state["images"].items():
                if image_id not in self.images:
                    self.images[image_id] = image
                    self.ground_truth[image_id] = state["ground_truth"][image_id]
                    self.detections[image_id] = state["detections"][image_id]

    def state(self) -> dict[str, Any]:
        """What :meth:`merge` takes, as plain Python values (for ``all_gather_object``)."""
        return {
            "images": self.images,
            "ground_truth": self.ground_truth,
            "detections": self.detections,
        }

    def compute(self) -> dict[str, dict[str, float]]:
        """``{"bbox": {"AP": ..., ..., "APl": ...}, "segm": {...}}`` as plain floats in [0, 1].

        COCO's convention: -1.0 where no ground truth falls in that area range (or no image was
        seen); 0.0 when there is ground truth but no detection.
        """
        return {iou_type: self._evaluate(iou_type) for iou_type in IOU_TYPES}

    def _evaluate(self, iou_type: str) -> dict[str, float]:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if not self.images:
            return dict.fromkeys(COCO_METRICS, -1.0)
        categories = [{"id": c, "name": str(c)} for c in range(1, self.num_classes)]
        images = list(self.images.values())
        ground_truth = [
            {**ann, "id": k}  # COCOeval needs ids, and 0 is not one
            for k, ann in enumerate(
                (a for anns in self.ground_truth.values() for a in anns), start=1
            )
        ]
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
            gt = _coco(COCO, images, ground_truth, categories)
            dt = _coco(COCO, images, self._detections_for(iou_type), categories)
            evaluation = COCOeval(gt, dt, iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        return {name: float(v) for name, v in zip(COCO_METRICS, evaluation.stats[:6], strict=True)}

    def _detections_for(self, iou_type: str) -> list[dict[str, Any]]:
        """The detections as ``COCO.loadRes`` would make them for ``iou_type`` (ids and areas)."""
        from pycocotools import mask as mask_utils

        made = []
        found = (d for ds in self.detections.values() for d in ds)
        for k, d in enumerate(found, start=1):
            ann = {key: d[key] for key in ("image_id", "category_id", "score")}
            ann.update(id=k, iscrowd=0)
            if iou_type == "bbox":
                x, y, w, h = d["bbox"]
                ann.update(bbox=[x, y, w, h], area=w * h)
            else:
                rle = _bytes(d["segmentation"])
                ann.update(
                    segmentation=rle,
                    area=float(mask_utils.area(rle)),
                    bbox=mask_utils.toBbox(rle).tolist(),
                )
            made.append(ann)
        return made


def _ground_truth(target: Mapping[str, Any], image_id: int) -> list[dict[str, Any]]:
    """One image's target as COCO annotations (without ids); ``area`` from the target if given."""
    from pycocotools import mask as mask_utils

    labels = target["labels"].tolist()
    rles = encode_masks(_binary_masks(target["masks"], 0.5))
    if target.get("area") is not None:
        areas = [float(a) for a in target["area"].tolist()]
    else:
        areas = [float(a) for a in mask_utils.area([_bytes(r) for r in rles])] if rles else []
    crowd = target.get("iscrowd")
    crowd = crowd.tolist() if crowd is not None else [0] * len(labels)
    return [
        {
            "image_id": image_id,
            "category_id": int(label),
            "bbox": box,
            "area": area,
            "iscrowd": int(is_crowd),
            "segmentation": rle,
        }
        for label, box, rle, area, is_crowd in zip(
            labels, _xywh(target["boxes"]), rles, areas, crowd, strict=True
        )
    ]


def _bytes(rle: Mapping[str, Any]) -> dict[str, Any]:
    """pycocotools' C functions take ``counts`` as bytes; our JSON-able RLEs hold a str."""
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def _coco(coco_class: type, images: list, annotations: list, categories: list) -> Any:
    """A pycocotools ``COCO`` built in memory (``loadRes`` fails on an empty list of results)."""
    coco = coco_class()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    coco.createIndex()
    return coco
