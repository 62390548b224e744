"""Segmentation metrics from one dataset-wide confusion matrix, accumulated on the device.

The matrix is filled with ``torch.bincount`` over ``target * C + prediction``; pixels whose target is
the ignore index (or any value outside ``0..C-1``) are dropped before the bincount, so they can
never land in a cell. All scores come from the summed matrix, never from per-image averages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from pixelwise.data.base import IGNORE_INDEX


@dataclass(frozen=True)
class Scores:
    """The standard scores (Long et al. 2015, section 5) of one confusion matrix.

    ``iou`` and ``class_accuracy`` hold NaN for a class absent from both ground truth and
    prediction (no evidence either way); the means skip those classes instead of counting 0.
    """

    pixel_accuracy: float
    mean_accuracy: float
    mean_iou: float
    fw_iou: float
    iou: list[float]
    class_accuracy: list[float]

    def as_dict(self) -> dict[str, object]:
        return {
            "pixel_accuracy": self.pixel_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "mean_iou": self.mean_iou,
            "fw_iou": self.fw_iou,
            "iou": self.iou,
            "class_accuracy": self.class_accuracy,
        }


class ConfusionMatrix:
    """``matrix[t, p]`` counts pixels of true class ``t`` predicted as ``p``.

    Args:
        num_classes: C.
        ignore_index: target value that is never counted.
        device: where the matrix lives; updates must come from the same device.
    """

    def __init__(
        self, num_classes: int, ignore_index: int = IGNORE_INDEX, device: torch.device | str = "cpu"
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, prediction: Tensor, target: Tensor) -> None:
        """Add a batch. ``prediction`` holds class ids (N×H×W) or logits (N×C×H×W)."""
        if prediction.dim() == target.dim() + 1:
            prediction = prediction.argmax(dim=1)
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape"
            )
        c = self.num_classes
        valid = (target >= 0) & (target < c) & (target != self.ignore_index)
        index = target[valid].long() * c + prediction[valid].long().clamp_(0, c - 1)
        self.matrix += torch.bincount(index, minlength=c * c).view(c, c)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix.to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrix over the processes of a distributed run (no-op otherwise)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def compute(self) -> Scores:
        return scores_from_matrix(self.matrix)


def scores_from_matrix(matrix: Tensor) -> Scores:
    """Pixel accuracy, mean class accuracy, per-class IoU, mIoU and frequency-weighted IoU."""
    m = matrix.double().cpu()
    true_pixels = m.sum(dim=1)  # ground truth per class
    predicted = m.sum(dim=0)
    hits = m.diagonal()
    total = m.sum()
    union = true_pixels + predicted - hits
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    iou = torch.where(union > 0, hits / union.clamp(min=1), nan)
    accuracy = torch.where(true_pixels > 0, hits / true_pixels.clamp(min=1), nan)
    present = union > 0
    frequency = true_pixels / total if total > 0 else torch.zeros_like(true_pixels)
    return Scores(
        pixel_accuracy=float(hits.sum() / total) if total > 0 else float("nan"),
        mean_accuracy=float(accuracy.nanmean()) if (true_pixels > 0).any() else float("nan"),
        mean_iou=float(iou[present].mean()) if present.any() else float("nan"),
        fw_iou=float((frequency[present] * iou[present]).sum()) if total > 0 else float("nan"),
        iou=iou.tolist(),
        class_accuracy=accuracy.tolist(),
    )


def format_scores(scores: Scores, classes: list[str] | tuple[str, ...]) -> str:
    """A per-class IoU/accuracy table followed by the summary line."""
    width = max(12, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'acc':>7}"]
    for name, iou, acc in zip(classes, scores.iou, scores.class_accuracy, strict=True):
        lines.append(f"{name:<{width}}  {_pct(iou):>7}  {_pct(acc):>7}")
    lines.append(
        f"mIoU {_pct(scores.mean_iou)}  pixel acc {_pct(scores.pixel_accuracy)}  "
        f"mean acc {_pct(scores.mean_accuracy)}  fwIoU {_pct(scores.fw_iou)}"
    )
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}"
