"""The seam between the loop and what is learned: a task says how to batch, score and draw.

The loop (:class:`~pixelwise.engine.train.Trainer`) is written once: schedule, checkpoints,
resume, stop signals, AMP, logging and DDP. What differs between a semantic network (a mask per
image, cross entropy, a confusion matrix) and an instance network (boxes, labels and masks per
image, a detector's loss dict, COCO AP) lives in a :class:`Task`. The task comes from the model: a
registered network declares it (``register_model(..., task="instance")``), never a config.

A task module registers its class with :func:`register_task`; :data:`TASK_MODULES` names the
module that defines each task, so only the task a run needs is imported.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from pixelwise.config import Config
from pixelwise.data.subset import apply_labeled_subset
from pixelwise.data.transforms import build_eval_transforms, build_train_transforms
from pixelwise.engine.checkpoint import all_finite
from pixelwise.engine.inference import predict_probs
from pixelwise.engine.loader import collate as stack_batch
from pixelwise.errors import PixelwiseError
from pixelwise.losses import build_loss, match_target
from pixelwise.metrics import ConfusionMatrix, Scores, format_scores
from pixelwise.models import model_info
from pixelwise.registry import Registry
from pixelwise.viz import denormalise, prediction_grid


@dataclass(frozen=True)
class TTA:
    """Test-time settings: scales, horizontal flip, and a sliding window ``crop`` moved by ``stride``."""

    scales: Sequence[float] = (1.0,)
    flip: bool = False
    crop: Sequence[int] | None = None
    stride: Sequence[int] | None = None


NO_TTA = TTA()


@dataclass
class StepResult:
    """What one training step reports: the total loss, its named terms, whether it updated."""

    loss: float
    terms: dict[str, float] = field(default_factory=dict)
    stepped: bool = True


class Report(Protocol):
    """The scores of one evaluation, whatever the task."""

    @property
    def score(self) -> float: ...  # what best.pt keeps; higher is better

    def as_dict(self) -> dict[str, Any]: ...  # JSON for metrics.jsonl and eval.json

    def scalars(self) -> dict[str, float]: ...  # TensorBoard's val/<key>

    def format(self, classes: Sequence[str]) -> str: ...  # the table a command prints


class Metric(Protocol):
    def update(self, outputs: Any, targets: Any) -> None: ...

    def all_reduce(self) -> None: ...

    def compute(self) -> Report: ...


@dataclass(frozen=True)
class SemanticReport(Scores):
    """:class:`~pixelwise.metrics.Scores` as a :class:`Report`: best.pt keeps the highest mIoU."""

    @property
    def score(self) -> float:
        return self.mean_iou

    def scalars(self) -> dict[str, float]:
        return {
            "mIoU": self.mean_iou, "pixel_accuracy": self.pixel_accuracy,
            "mean_accuracy": self.mean_accuracy, "fwIoU": self.fw_iou,
        }  # fmt: skip

    def format(self, classes: Sequence[str]) -> str:
        return format_scores(self, list(classes))


class SemanticMetric:
    """The dataset-wide confusion matrix of predicted probabilities against masks."""

    def __init__(self, num_classes: int, device: torch.device) -> None:
        self.confusion = ConfusionMatrix(num_classes, device=device)

    @property
    def matrix(self) -> Tensor:
        return self.confusion.matrix

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        # A valid-padding U-Net predicts the centre only: score that window of the mask.
        self.confusion.update(outputs.argmax(dim=1), match_target(outputs, targets))

    def all_reduce(self) -> None:
        self.confusion.all_reduce()

    def compute(self) -> SemanticReport:
        return SemanticReport(**vars(self.confusion.compute()))


TASKS: Registry[type[Task]] = Registry("task")

# The module that registers each task; a new task adds its line here.
TASK_MODULES: dict[str, str] = {
    "semantic": __name__,
    "instance": "pixelwise.engine.instance",
    "gan_ss": "pixelwise.engine.gan_task",
    "decoupled": "pixelwise.engine.decoupled",
}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def wrap(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS.add(name, cls)
        return cls

    return wrap


def task_class(model_name: str) -> type[Task]:
    """The task class the registered network ``model_name`` declares."""
    name = model_info(model_name).task
    if name not in TASK_MODULES:
        raise PixelwiseError(
            f"Model {model_name!r} declares the task {name!r}, which pixelwise does not know; "
            f"known tasks: {', '.join(TASK_MODULES)}."
        )
    importlib.import_module(TASK_MODULES[name])
    return TASKS.get(name)


def task_for(config: Config, num_classes: int, classes: Sequence[str], palette: Sequence) -> Task:
    """The task object for a run of ``config.model.name``."""
    return task_class(config.model.name)(config, num_classes, classes, palette)


class Task:
    """Semantic segmentation, and the defaults every other task starts from.

    Args:
        config: the run's configuration.
        num_classes: the model's output classes.
        classes: class names, for tables and legends.
        palette: RGB per class, for pictures.
    """

    name: ClassVar[str] = "semantic"
    #: Whether the task trains in stages (``train.classifier_iters``); others refuse the setting.
    staged: ClassVar[bool] = False
    #: Whether the report is the semantic confusion matrix's scores of a K-class map, so that
    #: ``pixelwise compare`` can put the network in one table with the others.
    scored_per_pixel: ClassVar[bool] = True

    def __init__(
        self, config: Config, num_classes: int, classes: Sequence[str], palette: Sequence
    ) -> None:
        self.cfg = config
        self.num_classes = num_classes
        self.classes = list(classes)
        self.palette = [tuple(c) for c in palette]
        self.criterion: nn.Module | None = None
        # The Trainer's iteration (0-based) of the step about to run, set before each step.
        self.step = 0
        if config.train.classifier_iters and not self.staged:
            raise PixelwiseError(
                f"train.classifier_iters is {config.train.classifier_iters}, but "
                f"{config.model.name} ({self.name} task) trains in one stage; it applies to "
                "decouplednet only. Remove it from the config."
            )

    def stage_starts(self, total_iters: int) -> list[int]:
        """The iterations at which a training stage begins; the schedule starts again at each."""
        del total_iters
        return [0]

    def frozen_parameters(self, net: nn.Module) -> list[nn.Parameter]:
        """Parameters the coming update must leave alone (their gradients are dropped)."""
        del net
        return []

    def stage_samples(self, stage: int, train_set: Any) -> Sequence[int] | None:
        """The positions of ``train_set`` that stage ``stage`` draws its batches from; None: all.

        Each stage has its own stream: epochs count from the stage's first iteration, and the
        order is a function of the iteration alone, so a run resumed in any stage sees the
        batches an uninterrupted run would.
        """
        del stage, train_set
        return None

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
        d = self.cfg.data
        return build_eval_transforms(resize=d.resize, mean=d.mean, std=d.std)

    def collate(self, samples: list[Any]) -> tuple[Any, Any]:
        return stack_batch(samples)

    def to_device(
        self, batch: tuple[Any, Any], device: torch.device, channels_last: bool = False
    ) -> tuple[Any, Any]:
        images, targets = batch
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(device, non_blocking=True)

    def batch_size(self, inputs: Any) -> int:
        return int(inputs.shape[0])

    # -- training ------------------------------------------------------------------------------
    def setup(self, model: nn.Module, device: torch.device, train_set: Any) -> None:
        """Build what training needs beside the model (the loss; a second player's optimizer)."""
        loss = self.cfg.loss
        self.criterion = build_loss(
            loss.name, class_weights=class_weights_for(self.cfg, train_set), top_k=loss.top_k,
            aux_weights=loss.aux_weights,
        ).to(device)  # fmt: skip

    def loss(self, net: nn.Module, inputs: Any, targets: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimise and its named parts (none for a single cross entropy)."""
        assert self.criterion is not None, "Task.setup() builds the criterion"
        output = net(inputs, return_aux=True) if self.cfg.loss.aux_weights else net(inputs)
        return self.criterion(output, targets), {}

    def train_step(
        self,
        net: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        inputs: Any,
        targets: Any,
        *,
        amp: bool,
        skip_nonfinite: bool = False,
    ) -> StepResult:
        """One forward, backward and update.

        A non-finite loss never reaches the parameters: the update is skipped (and the loop stops
        the run, unless ``skip_nonfinite``, which also skips a batch whose gradients are not finite).
        """
        device = _device_of(net)
        with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
            loss, terms = self.loss(net, inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        for parameter in self.frozen_parameters(net):
            parameter.grad = None  # the optimizer skips it, weight decay and momentum included
        value = float(loss.detach())
        finite = math.isfinite(value)
        if finite and skip_nonfinite and not scaler.is_enabled():
            # Under DDP the gradients are already all-reduced, so every rank decides the same.
            finite = all_finite([p.grad for g in optimizer.param_groups for p in g["params"]])
        named = {k: float(v.detach()) for k, v in terms.items()}
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            return StepResult(value, named, False)
        scaler.step(optimizer)  # an enabled GradScaler skips non-finite gradients itself
        scaler.update()
        return StepResult(value, named, True)

    def state_dict(self) -> dict[str, Any]:
        """Training state the task keeps beside the model's (saved in checkpoints as "task")."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    # -- evaluation ----------------------------------------------------------------------------
    def new_metric(self, device: torch.device) -> Metric:
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


register_task("semantic")(Task)


def amp_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _device_of(net: nn.Module) -> torch.device:
    parameter = next(net.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


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
