"""Scores at the labels' own size: a resized run is scored as the papers score it (issue 21).

A run trained with ``data.resize`` sees its images at the reduced size, and its predictions
come out at that size. The papers score at the labels' size (CamVid at 360×480, Cityscapes at
1024×2048), so by default evaluation (``data.score_at: label``) keeps each label as it was read,
upsamples the predicted probabilities to that label's size (bilinear, ``align_corners=False``,
as ``predict`` does), then takes the argmax. Labels resized with nearest neighbour are never
scored in that mode. ``data.score_at: input`` (``eval --score-at input``) scores at the size the
network saw, against labels resized to it: the number pixelwise reported before.

The batches of that mode carry :class:`OriginalLabels` in place of a stacked mask tensor: a
list (images of different original sizes may share a batch of resized images) and the size the
network was given. Each image is upsampled on its own, on the device, after the forward: the
probabilities of many classes at full size cost memory a whole batch of them would multiply.

>>> transforms = KeepOriginalLabel(task.eval_transforms())   # resized image, label as read
>>> for prediction, target in label_size_pairs(probs, labels): confusion.update(prediction, target)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from pixelwise.errors import PixelwiseError
from pixelwise.models.layers import center_crop

#: What ``data.score_at`` and ``eval --score-at`` take: the labels' own size, or the network's
#: input size (after ``data.resize``).
SCORE_AT = ("label", "input")

#: The words the reports use for each.
SCORED_AT_WORDS = {"label": "label size", "input": "input size"}


def check_score_at(value: str, where: str = "--score-at") -> str:
    """``value`` when it is one of :data:`SCORE_AT`.

    Raises:
        PixelwiseError: any other value.
    """
    if value not in SCORE_AT:
        raise PixelwiseError(
            f"{where} is {value!r}; use 'label' to score at each label's own size (the papers' "
            "protocol) or 'input' to score at the size the network sees after data.resize."
        )
    return value


def configured_score_at(config: Any) -> str:
    """The run's ``data.score_at``."""
    return check_score_at(config.data.score_at, "data.score_at")


@dataclass
class OriginalLabels:
    """The labels of an evaluation batch as they were read, for scoring at their own size.

    Attributes:
        masks: int64 H×W per image, each at its own size (255: ignore).
        input_size: the h×w of the batch's images as the network was given them.
    """

    masks: list[Tensor]
    input_size: tuple[int, int]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> OriginalLabels:
        moved = [mask.to(device, non_blocking=non_blocking) for mask in self.masks]
        return OriginalLabels(moved, self.input_size)


class KeepOriginalLabel:
    """The eval transforms for the image, and the label left as it was read."""

    def __init__(self, transforms: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> None:
        self.transforms = transforms

    def __call__(self, image: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        transformed, _ = self.transforms(image, mask)
        return transformed, mask

    def __repr__(self) -> str:
        return f"KeepOriginalLabel({self.transforms!r})"


def collate_original_labels(
    samples: list[tuple[Tensor, Tensor]], stack: Callable[[list[Any]], tuple[Tensor, Tensor]]
) -> tuple[Tensor, OriginalLabels]:
    """The images stacked by ``stack`` (which refuses images of different sizes in its own
    sentence), the labels kept as a list at their own sizes."""
    images, _ = stack([(image, image.new_zeros(())) for image, _ in samples])
    masks = [mask for _, mask in samples]
    return images, OriginalLabels(masks, (int(images.shape[-2]), int(images.shape[-1])))


def scored_window(
    output_size: Sequence[int], input_size: Sequence[int], label_size: Sequence[int]
) -> tuple[int, int]:
    """The part of a label an ``output_size`` prediction of an ``input_size`` image covers.

    The whole label for a network whose output covers its input; for a valid-padding network
    (a centre window of its input) the same window of the label, scaled as ``predict`` scales it.
    """
    (oh, ow), (ih, iw), (lh, lw) = output_size, input_size, label_size
    return round(oh * lh / ih), round(ow * lw / iw)


def label_size_pairs(outputs: Tensor, labels: OriginalLabels) -> Iterator[tuple[Tensor, Tensor]]:
    """``(prediction, target)`` per image, both 1×H×W at the label's size: the probabilities (or
    logits) N×C×h×w upsampled image by image, then the argmax; the label centre-cropped to what
    the prediction covers (all of it, but for a valid-padding network)."""
    for scores, target in label_size_scores(outputs, labels):
        yield scores.argmax(1), target


def label_size_scores(outputs: Tensor, labels: OriginalLabels) -> Iterator[tuple[Tensor, Tensor]]:
    """``(scores, target)`` per image: 1×C×H×W upsampled to the label's size, and 1×H×W."""
    if len(labels.masks) != outputs.shape[0]:
        raise ValueError(f"{outputs.shape[0]} predictions for {len(labels.masks)} labels")
    for k, mask in enumerate(labels.masks):
        size = scored_window(outputs.shape[-2:], labels.input_size, mask.shape[-2:])
        scores = outputs[k : k + 1]
        if tuple(scores.shape[-2:]) != size:
            scores = F.interpolate(scores.float(), size=size, mode="bilinear", align_corners=False)
        yield scores, center_crop(mask, size)[None]


def gather_sizes(sizes: set[tuple[int, int]]) -> set[tuple[int, int]]:
    """The sizes scored on every process of a distributed run (``sizes`` itself otherwise)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return set(sizes)
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, sorted(sizes))
    return {tuple(size) for part in everyone for size in part}  # type: ignore[misc]


def sizes_summary(sizes: Sequence[Sequence[int]]) -> dict[str, Any] | None:
    """``{"min": [H, W], "max": [H, W], "distinct": n}`` of the H×W sizes scored (the smallest
    and largest height and width, each on its own); None when nothing was scored."""
    if not sizes:
        return None
    heights, widths = [int(s[0]) for s in sizes], [int(s[1]) for s in sizes]
    return {
        "min": [min(heights), min(widths)],
        "max": [max(heights), max(widths)],
        "distinct": len({(h, w) for h, w in zip(heights, widths, strict=True)}),
    }


def scored_at_text(scored_at: str, sizes: Sequence[Sequence[int]]) -> str:
    """The console's words: "scored at the labels' size 360×480", or at the input size."""
    whose = "the labels'" if scored_at == "label" else "the network's input"
    summary = sizes_summary(sizes)
    if summary is None:
        return f"scored at {whose} size"
    low, high = summary["min"], summary["max"]
    if low == high:
        return f"scored at {whose} size {low[0]}×{low[1]}"
    return (
        f"scored at {whose} sizes {low[0]}×{low[1]} to {high[0]}×{high[1]} "
        f"({summary['distinct']} sizes)"
    )
