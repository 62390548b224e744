"""Segmentation metrics from one dataset-wide confusion matrix, accumulated on the device.

A pixel whose target is the ignore index (or any value outside ``0..C-1``) never lands in a cell;
a prediction outside ``0..C-1`` counts as the nearest class. All scores come from the summed
matrix, never from per-image averages.

Counting never masks pixels out (boolean indexing of int64 labels was 5x slower than NumPy):

- on the CPU, one ``torch.bincount`` over small-integer codes of every (target value, prediction
  value) pair in the batch's value range, folded afterwards into the C×C matrix (the ignore and
  out-of-range rows dropped, out-of-range columns merged into the nearest class);
- on a GPU, a fixed C·C + 1 bins, the last one taking every invalid pixel and then dropped, filled
  by ``scatter_add_``: nothing is read back to the host (``torch.bincount`` would read the
  indices' min and max), so evaluation never waits on the metric.
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
        count = (
            _counts_by_value_range if self.matrix.device.type == "cpu" else _counts_with_spill_bin
        )
        self.matrix += count(prediction, target, self.num_classes, self.ignore_index)

    def merge(self, other: ConfusionMatrix) -> None:
        self.matrix += other.matrix.to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrix over the processes of a distributed run (no-op otherwise)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix)

    def compute(self) -> Scores:
        return scores_from_matrix(self.matrix)


# Above this many (target value, prediction value) codes the CPU path clamps the labels first.
_MAX_CODES = 1 << 16


def _index_dtype(*values: int) -> torch.dtype:
    """The narrowest signed integer type holding every value (the codes and the raw labels)."""
    low, high = min(values), max(values)
    for dtype in (torch.int16, torch.int32):
        info = torch.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return dtype
    return torch.int64


def _as_integers(labels: Tensor) -> Tensor:
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        return labels.long()
    return labels


def _counts_by_value_range(
    prediction: Tensor, target: Tensor, num_classes: int, ignore_index: int
) -> Tensor:
    """The C×C counts of one batch, for CPU tensors (reading values back to the host is free).

    Each pixel's code is ``(target - t_min) * P + (prediction - p_min)`` over the batch's value
    ranges, computed in int16 wherever it fits (a quarter of int64's memory traffic, which is
    what bounds this on a CPU); the histogram of codes is folded into the matrix afterwards.
    """
    c = num_classes
    counts = torch.zeros(c, c, dtype=torch.int64)
    if target.numel() == 0:
        return counts
    # Float or bool ids (never from argmax) are read as integers, as they always were.
    prediction, target = _as_integers(prediction), _as_integers(target)
    t_lo, t_hi = (int(v) for v in torch.aminmax(target))
    p_lo, p_hi = (int(v) for v in torch.aminmax(prediction))
    if (t_hi - t_lo + 1) * (p_hi - p_lo + 1) > max(_MAX_CODES, (c + 2) * c):
        # Far values (a corrupt label, a stray id) would need a huge histogram; clamping keeps
        # their meaning: any target below 0 or above C-1 is dropped, a prediction is clamped anyway.
        if t_lo < -1 or t_hi > c:
            target = target.clamp(-1, c)
            t_lo, t_hi = max(t_lo, -1), min(t_hi, c)
        if p_lo < 0 or p_hi > c - 1:
            prediction = prediction.clamp(0, c - 1)
            p_lo, p_hi = max(p_lo, 0), min(p_hi, c - 1)
    rows, cols = t_hi - t_lo + 1, p_hi - p_lo + 1
    dtype = _index_dtype(rows * cols - 1, t_lo, t_hi, p_lo, p_hi)
    code = target.to(dtype, copy=True)  # a copy: changed in place below
    if t_lo:
        code.sub_(t_lo)
    column = prediction.to(dtype)
    if p_lo:
        column = column - p_lo
    code.mul_(cols).add_(column)
    histogram = torch.bincount(code.reshape(-1), minlength=rows * cols).view(rows, cols)
    target_value = torch.arange(t_lo, t_hi + 1)
    keep = (target_value >= 0) & (target_value < c) & (target_value != ignore_index)
    if not keep.any():
        return counts
    predicted_class = torch.arange(p_lo, p_hi + 1).clamp_(0, c - 1)
    kept = torch.zeros(int(keep.sum()), c, dtype=torch.int64)
    kept.index_add_(1, predicted_class, histogram[keep])
    return counts.index_add_(0, target_value[keep], kept)


def _counts_with_spill_bin(
    prediction: Tensor, target: Tensor, num_classes: int, ignore_index: int
) -> Tensor:
    """The C×C counts of one batch without reading anything back to the host (for GPUs).

    Invalid pixels (ignore, targets outside ``0..C-1``) go to bin C·C, which is dropped; every
    shape is known beforehand, so the work queues behind the forward pass and the caller never
    waits.
    """
    c = num_classes
    target = target.long()
    prediction = prediction.long()
    valid = (target >= 0) & (target < c) & (target != ignore_index)
    code = target.clamp(0, c - 1).mul_(c).add_(prediction.clamp(0, c - 1))
    code = torch.where(valid, code, c * c).reshape(-1)
    bins = torch.zeros(c * c + 1, dtype=torch.int64, device=code.device)
    bins.scatter_add_(
        0, code, torch.ones((), dtype=torch.int64, device=code.device).expand_as(code)
    )
    return bins[: c * c].view(c, c)


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
