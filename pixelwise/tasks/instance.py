"""The instance-segmentation task: Mask R-CNN trained, scored and drawn through the shared loop.

A batch is two lists (images of their own sizes, and torchvision detection targets); the loss is
the sum of the detector's loss dict, whose terms (``loss_classifier``, ``loss_box_reg``,
``loss_mask``, ``loss_objectness``, ``loss_rpn_box_reg``) are logged one by one. Evaluation
reports COCO box and mask AP (pycocotools' COCOeval, :mod:`pixelwise.instance_metrics`) and the
semantic scores of the class map painted from the detections (score >= :data:`SCORE_THRESHOLD`,
overlaps to the higher score) against the ground truth painted the same way, so Mask R-CNN sits
in the same mIoU table as the semantic networks. ``best.pt`` keeps the highest mask AP.

Images are normalised by the data pipeline (``data.mean``/``data.std``); the model only resizes
(``min_size``/``max_size``) and maps its detections back to the size it was given. COCO-comparable
numbers need ``data.resize: null`` (the default), so that targets and detections are at each
image's own size.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.data.transforms import (
    build_instance_eval_transforms,
    build_instance_train_transforms,
)
from pixelwise.engine.precision import Precision
from pixelwise.errors import PixelwiseError
from pixelwise.instance_metrics import (
    COCO_METRICS,
    CocoEvaluator,
    detections_to_coco_results,
    paint_ground_truth,
    paint_instances,
)
from pixelwise.metrics import ConfusionMatrix, format_scores
from pixelwise.outputs import write_text
from pixelwise.tasks import register_task
from pixelwise.tasks.base import NO_TTA, TTA, Inference, PredictSettings, Task
from pixelwise.tasks.semantic import SemanticReport
from pixelwise.viz import denormalise, save_label_png, save_png, with_legend

#: Detections scoring below this are left out of the painted map, the pictures and predict's
#: outputs (COCO AP uses every detection, as COCOeval expects).
SCORE_THRESHOLD = 0.5
#: Pictures of smaller images are enlarged by an integer factor to at least this height.
MIN_PICTURE_HEIGHT = 128


@dataclass(frozen=True)
class InstanceReport:
    """COCO box and mask AP, and the semantic scores of the painted class maps.

    Attributes:
        bbox: AP, AP50, AP75, APs, APm, APl of the boxes (COCO's -1: no ground truth there).
        segm: the same for the masks.
        semantic: the painted maps' confusion-matrix scores (mIoU etc.).
    """

    bbox: dict[str, float]
    segm: dict[str, float]
    semantic: SemanticReport

    @property
    def score(self) -> float:
        return self.segm["AP"]

    def as_dict(self) -> dict[str, Any]:
        return {"segm": self.segm, "bbox": self.bbox, "semantic": self.semantic.as_dict()}

    def scalars(self) -> dict[str, float]:
        values = {f"segm_{k}": v for k, v in self.segm.items()}
        values.update({f"bbox_{k}": v for k, v in self.bbox.items()})
        values.update({f"painted_{k}": v for k, v in self.semantic.scalars().items()})
        return values

    def format(self, classes: Sequence[str]) -> str:
        lines = [f"{'COCO':<6}" + "".join(f"{name:>8}" for name in COCO_METRICS)]
        for name, values in (("bbox", self.bbox), ("segm", self.segm)):
            cells = (f"{100 * v:8.2f}" if v >= 0 else f"{'-':>8}" for v in values.values())
            lines.append(f"{name:<6}" + "".join(cells))
        lines.append(f"painted class map (detections scoring >= {SCORE_THRESHOLD}):")
        lines.append(format_scores(self.semantic, list(classes)))
        return "\n".join(lines)


class InstanceMetric:
    """COCOeval over the split, and a confusion matrix of painted detections against painted
    ground truth (crowds and class conflicts ignored)."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.coco = CocoEvaluator(num_classes)
        self.confusion = ConfusionMatrix(num_classes, device=device)

    @property
    def matrix(self) -> Tensor:
        return self.confusion.matrix

    def update(
        self, outputs: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Any]]
    ) -> None:
        for found, target in zip(outputs, targets, strict=True):
            size = target["masks"].shape[-2:]
            painted = paint_instances(
                found["masks"],
                found["labels"],
                found["scores"],
                size,
                score_threshold=SCORE_THRESHOLD,
            )
            truth = paint_ground_truth(target["masks"], target["labels"], target.get("iscrowd"))
            self.confusion.update(
                painted[None].to(self.matrix.device), truth[None].to(self.matrix.device)
            )
        self.coco.update([_cpu(o) for o in outputs], [_cpu(t) for t in targets])

    def all_reduce(self) -> None:
        self.confusion.all_reduce()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, self.coco.state())
            self.coco.merge(states)

    def compute(self) -> InstanceReport:
        results = self.coco.compute()
        semantic = SemanticReport(**vars(self.confusion.compute()))
        return InstanceReport(bbox=results["bbox"], segm=results["segm"], semantic=semantic)


def _cpu(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v.detach().cpu() if isinstance(v, Tensor) else v for k, v in values.items()}


@register_task("instance")
class InstanceTask(Task):
    """Mask R-CNN's batches, loss dict, COCO AP and instance pictures (see the module docstring)."""

    scored_per_pixel = False
    score_name = "mask AP"
    fixed_forward = False
    bench_refusal = (
        "its forward returns detections, not per-pixel logits; pixelwise bench times networks "
        "that return per-pixel logits"
    )

    def check_config(self) -> None:
        """Semantic-only settings would silently do nothing here: refuse them."""
        config = self.cfg
        name = config.model.name
        unused = {
            "data.crop_size": config.data.crop_size is not None,
            "data.scale_range": list(config.data.scale_range) != [1.0, 1.0],
            "data.color_jitter": config.data.color_jitter != 0,
            "loss.class_weights": config.loss.class_weights is not None,
            "loss.aux_weights": bool(config.loss.aux_weights),
            "loss.name": config.loss.name != "ce",
        }
        given = [key for key, set_ in unused.items() if set_]
        if given:
            raise PixelwiseError(
                f"{', '.join(given)} apply to semantic networks, but {name} is an instance "
                "network (its losses are torchvision's, its images resized inside the model by "
                "model.options min_size/max_size); remove them from the config."
            )

    # -- data ----------------------------------------------------------------------------------
    def train_transforms(self):
        d = self.cfg.data
        return build_instance_train_transforms(
            resize=d.resize, hflip=d.hflip, mean=d.mean, std=d.std
        )

    def eval_transforms(self):
        return build_instance_eval_transforms(**self.preprocessing())

    def collate(self, samples: list[Any]) -> tuple[list[Tensor], list[dict[str, Any]]]:
        """Images differ in size: a batch is a list of images and a list of targets."""
        images, targets = zip(*samples, strict=True) if samples else ((), ())
        return list(images), list(targets)

    def to_device(
        self, batch: tuple[Any, Any], device: torch.device, channels_last: bool = False
    ) -> tuple[list[Tensor], list[dict[str, Any]]]:
        # Images of several sizes are batched (padded) inside the model, so channels_last, a 4-D
        # layout, applies to the model's weights only.
        del channels_last
        images, targets = batch
        moved = [image.to(device, non_blocking=True) for image in images]
        on_device = [
            {
                k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v
                for k, v in t.items()
            }
            for t in targets
        ]
        return moved, on_device

    def batch_size(self, inputs: Any) -> int:
        return len(inputs)

    # -- training ------------------------------------------------------------------------------
    def setup(
        self, model: nn.Module, device: torch.device, train_set: Any, precision: Precision
    ) -> None:
        """The detector computes its own losses; only a from-scratch run on frozen BN is refused
        (frozen BN at its initial identity leaves the ResNet unnormalised: the loss explodes)."""
        del device, train_set, precision
        from torchvision.ops.misc import FrozenBatchNorm2d

        m = self.cfg.model
        pretrained = m.weights_backbone or m.options.get("weights")
        if not pretrained and any(isinstance(x, FrozenBatchNorm2d) for x in model.modules()):
            raise PixelwiseError(
                f"{m.name} has frozen BatchNorm but no pretrained weights, so its ResNet would train "
                "unnormalised; set model.weights_backbone (e.g. ResNet50_Weights.IMAGENET1K_V1) or "
                "model.options.frozen_bn: false to train from scratch."
            )

    def loss(self, net: nn.Module, inputs: Any, targets: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The sum of torchvision's loss dict, with the dict's terms for logging."""
        terms = net(inputs, targets)
        if not isinstance(terms, dict):
            raise PixelwiseError(
                f"{self.cfg.model.name} returned {type(terms).__name__} in train mode instead of "
                "a loss dict; the instance task trains torchvision detection models."
            )
        return sum(terms.values()), dict(terms)

    # -- evaluation ----------------------------------------------------------------------------
    def new_metric(self, device: torch.device) -> InstanceMetric:
        return InstanceMetric(self.num_classes, device)

    def predict(self, model: nn.Module, inputs: Any, tta: TTA = NO_TTA) -> list[dict[str, Tensor]]:
        """Detections per image: boxes, labels, scores and masks (Nx1xHxW probabilities)."""
        if tta != NO_TTA:
            raise PixelwiseError(
                "Test-time augmentation (--scale, --flip, --crop) is for semantic networks; "
                f"evaluate {self.cfg.model.name} without it."
            )
        return model(inputs)

    @torch.no_grad()
    def picture(
        self, model: nn.Module, dataset: Any, indices: Sequence[int], device: torch.device
    ) -> np.ndarray:
        """ground truth | prediction for the validation images ``indices``: each instance's mask
        in its class colour, its box, class name and (predictions) score; a legend below."""
        transforms = self.eval_transforms()
        d = self.cfg.data
        rows = []
        for i in indices:
            image, target = transforms(*dataset[i])
            found = model([image.to(device)])[0]
            rgb = denormalise(image, d.mean, d.std)
            # Small images are enlarged (nearest) so that names and scores stay legible.
            scale = max(1, -(-MIN_PICTURE_HEIGHT // rgb.shape[0]))
            truth = draw_instances(
                rgb, target, self.classes, self.palette, score_threshold=None, scale=scale
            )
            shown = draw_instances(rgb, _cpu(found), self.classes, self.palette, scale=scale)
            rows.append(_side_by_side([truth, shown]))
        return with_legend(_stack(rows, ("ground truth", "prediction")), self.classes, self.palette)

    # -- what the commands ask -----------------------------------------------------------------
    @torch.no_grad()
    def predict_instances(
        self, net: Inference, image: Tensor, tta: TTA = NO_TTA
    ) -> dict[str, Tensor]:
        """Detections for one uint8 3xHxW image, preprocessed as evaluation preprocesses it, at
        the image's own size (boxes scaled and masks resized bilinearly back when
        ``data.resize`` is set)."""
        height, width = image.shape[-2:]
        x, _ = self.eval_transforms()(image, empty_target(height, width))
        with net.precision.autocast():
            found = _cpu(self.predict(net.model, [x.to(net.device)], tta)[0])
        xh, xw = x.shape[-2:]
        if (xh, xw) != (height, width):
            scale = torch.tensor([width / xw, height / xh, width / xw, height / xh])
            found["boxes"] = found["boxes"] * scale
            if len(found["masks"]):
                found["masks"] = F.interpolate(
                    found["masks"].float(), size=(height, width), mode="bilinear",
                    align_corners=False,
                )  # fmt: skip
            else:
                found["masks"] = torch.zeros(0, 1, height, width)
        return found

    def prediction_files(self, stem: str) -> list[str]:
        return [f"{stem}_overlay.png", f"{stem}_label.png", f"{stem}_detections.json"]

    def write_prediction(
        self, net: Inference, image: Tensor, paths: Sequence[Path], settings: PredictSettings
    ) -> None:
        """``<name>_overlay.png`` (instances drawn), ``<name>_label.png`` (the painted class map)
        and ``<name>_detections.json`` (COCO results: ``image_id`` as given, ``category_id`` the
        dataset's id of each label)."""
        overlay_path, label_path, json_path = paths
        threshold = settings.score_threshold
        found = self.predict_instances(net, image, settings.tta)
        rgb = image.permute(1, 2, 0).numpy()
        drawn = draw_instances(rgb, found, self.classes, self.palette, score_threshold=threshold)
        save_png(with_legend(drawn, self.classes, self.palette), overlay_path)
        painted = paint_instances(
            found["masks"], found["labels"], found["scores"], image.shape[-2:],
            score_threshold=threshold,
        )  # fmt: skip
        save_label_png(painted, self.palette, label_path)
        category_ids = self.category_ids or category_ids_of(self.cfg.data.dataset, self.num_classes)
        results = detections_to_coco_results(
            found, settings.image_id, category_ids, score_threshold=threshold
        )
        write_text(json_path, json.dumps(results) + "\n")


# -- drawing -------------------------------------------------------------------------------------
def draw_instances(
    rgb: np.ndarray,
    instances: Mapping[str, Any],
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    *,
    score_threshold: float | None = SCORE_THRESHOLD,
    alpha: float = 0.5,
    scale: int = 1,
) -> np.ndarray:
    """Masks (class colour), boxes and "class score" labels over an HxWx3 uint8 image.

    ``instances`` is a target (masks NxHxW) or detections (masks Nx1xHxW probabilities,
    ``scores``); with ``score_threshold`` None every instance is drawn and no score is written.
    Crowd regions of a target are drawn in grey. ``scale`` enlarges the picture by that integer
    factor first (nearest neighbour), boxes and masks with it.
    """
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    if scale > 1:
        rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    image = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)
    masks, boxes, labels = instances["masks"], instances["boxes"], instances["labels"]
    scores = instances.get("scores")
    keep = torch.ones(len(labels), dtype=torch.bool)
    if score_threshold is not None and scores is not None:
        keep = scores >= score_threshold
    if masks.dim() == 4:
        masks = masks[:, 0]
    masks, boxes, labels = masks[keep] >= 0.5, boxes[keep].float() * scale, labels[keep].tolist()
    if scale > 1:
        masks = masks.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    if not labels:
        return rgb
    crowd = instances.get("iscrowd")
    crowd = crowd[keep].tolist() if crowd is not None else [0] * len(labels)
    colours = [
        (128, 128, 128) if c else tuple(int(v) for v in palette[label % len(palette)])
        for label, c in zip(labels, crowd, strict=True)
    ]
    names = [classes[label] if label < len(classes) else str(label) for label in labels]
    if scores is not None and score_threshold is not None:
        names = [f"{n} {s:.2f}" for n, s in zip(names, scores[keep].tolist(), strict=True)]
    image = draw_segmentation_masks(image, masks.cpu(), alpha=alpha, colors=colours)
    image = draw_bounding_boxes(image, boxes.cpu(), labels=names, colors=colours, width=2)
    return image.permute(1, 2, 0).numpy()


def _side_by_side(pictures: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    spacer = np.full((pictures[0].shape[0], gap, 3), 255, dtype=np.uint8)
    parts = [p for picture in pictures for p in (picture, spacer)][:-1]
    return np.concatenate(parts, axis=1)


def _stack(rows: Sequence[np.ndarray], titles: Sequence[str], gap: int = 4) -> np.ndarray:
    """Rows one under another (padded white to the widest), under a strip of column titles."""
    from PIL import Image, ImageDraw

    width = max(r.shape[1] for r in rows)
    padded = [
        np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows
    ]
    strip = Image.new("RGB", (width, 16), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    column = (rows[0].shape[1] - gap * (len(titles) - 1)) // len(titles) + gap
    for k, title in enumerate(titles):
        draw.text((k * column + 2, 2), title, fill=(0, 0, 0))
    return np.concatenate([np.asarray(strip), *padded], axis=0)[:-gap]


# -- predict -------------------------------------------------------------------------------------
def empty_target(height: int, width: int) -> dict[str, Any]:
    """A target without objects, for running the eval transforms on an image alone."""
    return {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, height, width, dtype=torch.uint8),
        "iscrowd": torch.zeros(0, dtype=torch.int64),
        "area": torch.zeros(0),
        "image_id": 0,
    }


def category_ids_of(dataset_name: str, num_classes: int) -> Sequence[int] | None:
    """The dataset class's own id of each label when they cover the model's classes, else None
    (the labels themselves), for a checkpoint that saved none."""
    from pixelwise.data import dataset_class

    ids = getattr(dataset_class(dataset_name), "category_ids", ())
    return list(ids) if len(ids) == num_classes else None
