"""Semantic segmentation: a class for every pixel, cross entropy, one dataset-wide confusion matrix.

The default task, and the one the semi-supervised tasks extend: its networks take N×3×H×W
normalised images and return N×C×H×W logits, its metric is
:class:`~pixelwise.metrics.ConfusionMatrix`'s scores, ``predict`` writes a label PNG and an overlay
per image, and ``export`` traces the network itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.config import Config
from pixelwise.data.base import IGNORE_INDEX
from pixelwise.data.subset import apply_labeled_subset
from pixelwise.data.transforms import build_eval_transforms, build_train_transforms
from pixelwise.engine.inference import predict_probs
from pixelwise.engine.label_size import (
    SCORED_AT_WORDS,
    KeepOriginalLabel,
    OriginalLabels,
    collate_original_labels,
    gather_sizes,
    label_size_scores,
    scored_at_text,
    sizes_summary,
)
from pixelwise.engine.loader import collate as stack_batch
from pixelwise.engine.memory import Request, fit_prediction
from pixelwise.engine.precision import Precision
from pixelwise.errors import PixelwiseError
from pixelwise.losses import build_loss, match_target
from pixelwise.metrics import ConfusionMatrix, Scores, format_scores
from pixelwise.models.layers import center_crop
from pixelwise.tasks import register_task
from pixelwise.tasks.base import NO_TTA, TTA, Inference, PredictSettings, Task
from pixelwise.viz import (
    denormalise,
    overlay,
    prediction_grid,
    save_label_png,
    save_png,
    untinted_ids,
    with_legend,
)


@dataclass(frozen=True)
class SemanticReport(Scores):
    """:class:`~pixelwise.metrics.Scores` as a :class:`~pixelwise.tasks.base.Report`: best.pt
    keeps the highest mIoU.

    Attributes:
        scored_at: ``"label"`` (each label's own size), ``"input"`` (the network's input size),
            or None where unrecorded (an instance network's painted maps).
        scored_sizes: the distinct H×W sizes scored.
    """

    scored_at: str | None = None
    scored_sizes: tuple[tuple[int, int], ...] = ()
    # The validation loss: mean -log p(label) over the labelled pixels scored (no class weights).
    loss: float | None = None

    @property
    def score(self) -> float:
        return self.mean_iou

    def scalars(self) -> dict[str, float]:
        values = {
            "mIoU": self.mean_iou, "pixel_accuracy": self.pixel_accuracy,
            "mean_accuracy": self.mean_accuracy, "fwIoU": self.fw_iou,
        }  # fmt: skip
        if self.loss is not None:
            values["loss"] = self.loss
        return values

    def format(self, classes: Sequence[str]) -> str:
        return format_scores(self, list(classes))

    def as_dict(self) -> dict[str, Any]:
        """The scores, and where a metric recorded it, the size they were scored at:
        ``"scored_at"`` (``"label size"`` or ``"input size"``) and ``"scored_sizes"``
        (:func:`~pixelwise.engine.label_size.sizes_summary`)."""
        values: dict[str, Any] = dict(super().as_dict())
        if self.loss is not None:
            values["loss"] = self.loss
        if self.scored_at is not None:
            values["scored_at"] = SCORED_AT_WORDS[self.scored_at]
            values["scored_sizes"] = sizes_summary(self.scored_sizes)
        return values

    def scored_text(self) -> str | None:
        """The console's words for the size scored at: "scored at the labels' size 360×480"
        (None where no metric recorded it)."""
        return None if self.scored_at is None else scored_at_text(self.scored_at, self.scored_sizes)


class SemanticMetric:
    """The dataset-wide confusion matrix of predicted probabilities against masks.

    Masks come as a tensor at the network's size (``data.score_at: input``), or as
    :class:`~pixelwise.engine.label_size.OriginalLabels`, each label at its own size, to which
    each image's probabilities are upsampled before the argmax (``label``, the default).
    """

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.confusion = ConfusionMatrix(num_classes, device=device)
        self.scored_at: str | None = None  # "label" or "input", from the first batch
        self.sizes: set[tuple[int, int]] = set()
        # Summed -log p(label) and the labelled pixels it covers (the validation loss).
        self.nll = torch.zeros(2, dtype=torch.float64, device=device)

    @property
    def matrix(self) -> Tensor:
        return self.confusion.matrix

    def update(self, outputs: Tensor, targets: Tensor | OriginalLabels) -> None:
        if isinstance(targets, OriginalLabels):
            self.scored_at = "label"
            for scores, target in label_size_scores(outputs, targets):
                self._score(scores, target)
            return
        self.scored_at = "input"
        # A valid-padding U-Net predicts the centre only: score that window of the mask.
        self._score(outputs, match_target(outputs, targets))

    def _score(self, probs: Tensor, target: Tensor) -> None:
        self.confusion.update(probs.argmax(dim=1), target)
        self.sizes.add((int(target.shape[-2]), int(target.shape[-1])))
        labelled = target != IGNORE_INDEX
        if bool(labelled.any()):
            picked = probs.gather(1, target.clamp(0, probs.shape[1] - 1)[:, None])[:, 0]
            nll = -picked[labelled].double().clamp_min(1e-12).log()
            self.nll += torch.stack([nll.sum(), nll.new_tensor(float(nll.numel()))])

    def all_reduce(self) -> None:
        self.confusion.all_reduce()
        self.sizes = gather_sizes(self.sizes)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.nll)

    def compute(self) -> SemanticReport:
        total, count = (float(v) for v in self.nll)
        return SemanticReport(
            **vars(self.confusion.compute()), scored_at=self.scored_at,
            scored_sizes=tuple(sorted(self.sizes)), loss=total / count if count else None,
        )  # fmt: skip


@register_task("semantic")
class SemanticTask(Task):
    """A class for every pixel (see the module docstring)."""

    fixed_forward: ClassVar[bool] = True
    scores_at_label_size: ClassVar[bool] = True

    # -- data ----------------------------------------------------------------------------------
    def train_dataset(self, dataset: Any) -> Any:
        """The training split as this task learns from it.

        Under ``data.labeled_fraction`` / ``data.labeled_list`` a fully supervised network trains
        on the labelled samples alone (an unlabelled image carries no signal for it); a
        semi-supervised task overrides this to keep the unlabelled images
        (:func:`~pixelwise.data.subset.apply_labeled_subset` with ``keep_unlabeled=True``).
        """
        return apply_labeled_subset(dataset, self.cfg)

    def train_transforms(self) -> Callable:
        d = self.cfg.data
        return build_train_transforms(
            crop_size=d.crop_size, resize=d.resize, scale_range=d.scale_range, hflip=d.hflip,
            color_jitter=d.color_jitter, mean=d.mean, std=d.std,
        )  # fmt: skip

    def eval_transforms(self) -> Callable:
        return build_eval_transforms(**self.preprocessing())

    def collate(self, samples: list[Any]) -> tuple[Any, Any]:
        return stack_batch(samples)

    def eval_batches(self, score_at: str) -> tuple[Callable, Callable]:
        """At ``"label"`` size each image as :meth:`eval_transforms` makes it and its label as
        read, batched as :class:`~pixelwise.engine.label_size.OriginalLabels`; at ``"input"``
        size the eval transforms' pairs."""
        if score_at == "input":
            return self.eval_transforms(), self.collate
        return KeepOriginalLabel(self.eval_transforms()), collate_labels_as_read

    # -- training ------------------------------------------------------------------------------
    def setup(
        self, model: nn.Module, device: torch.device, train_set: Any, precision: Precision
    ) -> None:
        """The loss, with the class weights the config asks for."""
        del model, precision
        loss = self.cfg.loss
        self.criterion = build_loss(
            loss.name, class_weights=class_weights_for(self.cfg, train_set), top_k=loss.top_k,
            aux_weights=loss.aux_weights, normalize=loss.normalize,
        ).to(device)  # fmt: skip

    def loss(self, net: nn.Module, inputs: Any, targets: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimise and its named parts (none for a single cross entropy)."""
        assert self.criterion is not None, "Task.setup() builds the criterion"
        output = net(inputs, return_aux=True) if self.cfg.loss.aux_weights else net(inputs)
        return self.criterion(output, targets), {}

    # -- evaluation ----------------------------------------------------------------------------
    def new_metric(self, device: torch.device) -> SemanticMetric:
        return SemanticMetric(self.num_classes, device)

    def predict(self, model: nn.Module, inputs: Any, tta: TTA = NO_TTA) -> Any:
        """Class probabilities N×C×H×W averaged over the test-time augmentations."""
        return predict_probs(
            model, inputs, scales=tta.scales, flip=tta.flip, crop=tta.crop, stride=tta.stride
        )

    @torch.no_grad()
    def picture(
        self, model: nn.Module, dataset: Any, indices: Sequence[int], device: torch.device
    ) -> np.ndarray:
        """image | ground truth | prediction for the validation images ``indices``, with a legend."""
        transforms = self.eval_transforms()
        d = self.cfg.data
        images, targets, predictions = [], [], []
        for i in indices:
            image, target = transforms(*dataset[i])
            logits = model(image[None].to(device))
            # A valid-padding model predicts the centre only: show the same window of each.
            image, target = match_target(logits, image), match_target(logits, target)
            images.append(denormalise(image, d.mean, d.std))
            predictions.append(logits.argmax(1)[0].cpu())
            targets.append(target)
        return prediction_grid(images, targets, predictions, self.palette, classes=self.classes)

    # -- what the commands ask -----------------------------------------------------------------
    @torch.no_grad()
    def predict_image(
        self, net: Inference, image: Tensor, tta: TTA = NO_TTA
    ) -> tuple[Tensor, Tensor]:
        """Labels for one uint8 3×H×W image, preprocessed exactly as evaluation preprocesses it.

        Returns:
            ``(labels, probabilities)``: labels H×W at the image's own size (a valid-padding
            model's centre window, scaled the same way), and the probabilities 1×C×h×w at the
            size the model saw.
        """
        blank = torch.zeros(image.shape[-2:], dtype=torch.int64)
        x, _ = self.eval_transforms()(image, blank)
        tta = self.fit_memory(net, tuple(x.shape), tuple(image.shape[-2:]), tta)
        with net.precision.autocast():
            probs = self.predict(net.model, net.inputs(x[None]), tta)
        (h, w), (xh, xw) = image.shape[-2:], x.shape[-2:]
        # A resized run predicts at the resized size: back to the image's size like an upsampled
        # score map (bilinear, align_corners=False as everywhere), also for a valid-padding window.
        size = (round(probs.shape[-2] * h / xh), round(probs.shape[-1] * w / xw))
        full = probs if tuple(probs.shape[-2:]) == size else F.interpolate(
            probs.float(), size=size, mode="bilinear", align_corners=False
        )  # fmt: skip
        return full.argmax(1)[0].cpu(), probs

    def fit_memory(
        self,
        net: Inference,
        shape: tuple[int, ...],
        image_size: tuple[int, int],
        tta: TTA,
        batch: int = 1,
    ) -> TTA:
        """``tta`` as it fits the memory free on ``net.device`` for ``batch`` preprocessed 3×h×w
        ``shape`` (:func:`~pixelwise.engine.memory.fit_prediction`): unchanged when it fits, else
        in sliding windows chosen to fit (one image at a time), said in one line on stderr.

        Raises:
            PixelwiseError: when no window makes it fit (the images and probability maps alone
                exceed the memory).
        """
        request = Request(
            (batch if tta.crop is None else 1, *shape), self.num_classes, tuple(tta.scales),
            tta.flip, tta.crop, tta.stride,
            output_size=image_size,
        )  # fmt: skip
        fit = fit_prediction(
            net.model, request, net.device, dtype=net.precision.dtype or torch.float32
        )
        if fit.note is None:
            return tta
        print(f"note: {fit.note}", file=sys.stderr)
        return replace(tta, crop=fit.crop, stride=fit.stride)

    def prediction_files(self, stem: str) -> list[str]:
        return [f"{stem}_label.png", f"{stem}_overlay.png"]

    def write_prediction(
        self, net: Inference, image: Tensor, paths: Sequence[Path], settings: PredictSettings
    ) -> None:
        """The label PNG (palette colours) and the overlay with a legend, at the image's size.

        The overlay leaves the pixels of the background class (:func:`~pixelwise.viz.untinted_ids`)
        as the photo and blends every other class's colour in at
        :data:`~pixelwise.viz.OVERLAY_ALPHA`; its legend, sized to the picture, lists the
        classes (the untinted ones with an empty swatch) and no "ignore", which a prediction
        never holds.
        """
        label_path, overlay_path = paths
        label, _ = self.predict_image(net, image, settings.tta)
        save_label_png(label, self.palette, label_path)
        # A valid-padding model predicts the centre only: overlay that window of the image.
        rgb = center_crop(image, tuple(label.shape)).permute(1, 2, 0).numpy()
        untinted = untinted_ids(self.classes)
        picture = overlay(rgb, label, self.palette, untinted=untinted)
        save_png(
            with_legend(picture, self.classes, self.palette, untinted=untinted, ignore=False),
            overlay_path,
        )

    def export_module(self, model: nn.Module) -> nn.Module:
        return model


def collate_labels_as_read(samples: list[Any]) -> tuple[Tensor, OriginalLabels]:
    """Resized images stacked, labels kept at their own sizes (a module function: a loader's
    workers pickle it)."""
    return collate_original_labels(samples, stack_batch)


def class_weights_for(cfg: Config, dataset: Any) -> Tensor | None:
    """``loss.class_weights``: null, a list, or computed from the training labels."""
    spec = cfg.loss.class_weights
    if spec is None:
        return None
    if isinstance(spec, list):
        if len(spec) != dataset.num_classes:
            raise PixelwiseError(
                f"loss.class_weights has {len(spec)} values but {cfg.data.dataset} has "
                f"{dataset.num_classes} classes; give one weight per class."
            )
        return torch.tensor(spec, dtype=torch.float32)
    from pixelwise.class_weights import (
        class_pixel_counts,
        enet_class_weights,
        median_frequency_weights_from_counts,
    )

    counts, image_pixels = class_pixel_counts(dataset)
    if spec == "median_frequency":
        return median_frequency_weights_from_counts(counts, image_pixels).float()
    return enet_class_weights(counts).float()
