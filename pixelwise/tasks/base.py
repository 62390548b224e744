"""The seam between the loop and what is learned: a task says how to batch, learn, score and draw.

The loop (:class:`~pixelwise.engine.train.Trainer`) and every command are written once: schedule,
checkpoints, resume, stop signals, precision, logging and DDP; ``eval``, ``predict``, ``export``,
``bench`` and ``compare``. What differs between a semantic network (a mask per image, cross
entropy, a confusion matrix), an instance network (boxes and masks, a detector's loss dict, COCO
AP) or a semi-supervised one lives in a :class:`Task`. The task comes from the model: a registered
network declares it (``register_model(..., task="instance")``), never a config, and no command
branches on a task's name — it asks the task.

A new task is one file that subclasses :class:`Task` (or
:class:`~pixelwise.tasks.semantic.SemanticTask`) and registers it with
:func:`~pixelwise.tasks.register_task`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from pixelwise.config import Config
from pixelwise.engine.checkpoint import all_finite
from pixelwise.engine.precision import Precision
from pixelwise.errors import PixelwiseError


@dataclass(frozen=True)
class TTA:
    """Test-time settings: scales, horizontal flip, and a sliding window ``crop`` moved by ``stride``."""

    scales: Sequence[float] = (1.0,)
    flip: bool = False
    crop: Sequence[int] | None = None
    stride: Sequence[int] | None = None


NO_TTA = TTA()


@dataclass(frozen=True)
class PredictSettings:
    """What ``pixelwise predict`` asks of an image: test-time augmentation, for tasks that detect
    instances the score below which a detection is left out, and the image's id in results files."""

    tta: TTA = NO_TTA
    score_threshold: float = 0.5
    image_id: int = 0


@dataclass(frozen=True)
class Inference:
    """A network ready to predict: eval mode on ``device``, its forwards under ``precision``, its
    inputs in the memory layout the run used (``channels_last``: under bf16/fp16 the layout picks
    other kernels, whose rounding can flip a pixel's class)."""

    model: nn.Module
    device: torch.device
    precision: Precision
    channels_last: bool = False

    def inputs(self, x: Tensor) -> Tensor:
        """A preprocessed batch on the device, in the run's memory layout."""
        x = x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass
class Update:
    """How a training step updates: ``optimizer`` and its GradScaler, the forward's precision,
    and whether a batch whose loss or gradients are not finite is skipped rather than fatal."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    precision: Precision
    skip_nonfinite: bool = False


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


def finish_update(
    value: float,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    *,
    skip_nonfinite: bool = False,
) -> bool:
    """Step ``optimizer`` after a backward whose loss was ``value``, unless it is not finite.

    A non-finite loss never reaches the parameters: the gradients are dropped and False returned
    (the loop stops the run, unless ``skip_nonfinite``, which also skips a batch whose gradients
    are not finite). An enabled GradScaler skips non-finite gradients itself. Under DDP the
    gradients are already all-reduced, so every process decides the same.
    """
    finite = math.isfinite(value)
    if finite and skip_nonfinite and not scaler.is_enabled():
        finite = all_finite([p.grad for g in optimizer.param_groups for p in g["params"]])
    if not finite:
        optimizer.zero_grad(set_to_none=True)
        return False
    scaler.step(optimizer)
    scaler.update()
    return True


def move_batch(batch: tuple[Any, Any], device: torch.device, channels_last: bool = False):
    """Images (a tensor) and targets (a tensor, or a dict of tensors) on ``device``."""
    images, targets = batch
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if isinstance(targets, dict):
        return images, {k: v.to(device, non_blocking=True) for k, v in targets.items()}
    return images, targets.to(device, non_blocking=True)


class Task:
    """What every task provides; :class:`~pixelwise.tasks.semantic.SemanticTask` is the default.

    Args:
        config: the run's configuration.
        num_classes: the model's output classes.
        classes: class names, for tables and legends.
        palette: RGB per class, for pictures.
        category_ids: the dataset's own id of each class where it is not the class index
            (COCO's), for results files in the dataset's ids; empty otherwise.
    """

    name: ClassVar[str] = "task"
    #: Whether the task trains in stages (``train.classifier_iters``); others refuse the setting.
    staged: ClassVar[bool] = False
    #: Whether the report is the semantic confusion matrix's scores of a K-class map, so that
    #: ``pixelwise compare`` can put the network in one table with the others.
    scored_per_pixel: ClassVar[bool] = True
    #: What ``best.pt`` keeps the highest of, as the run's last line names it.
    score_name: ClassVar[str] = "mIoU"
    #: Whether ``model(x)`` is one fixed computation of an N×3×H×W tensor to N×C×H×W logits, so
    #: that FLOPs can be counted on the meta device and ``bench`` can time it.
    fixed_forward: ClassVar[bool] = True
    #: Why ``bench`` cannot time this task's networks (None: it can).
    bench_refusal: ClassVar[str | None] = None
    #: Whether evaluation can score predictions at each label's own size (``data.score_at:
    #: label``, see :mod:`pixelwise.engine.label_size`); others score at the input size always.
    scores_at_label_size: ClassVar[bool] = False

    def __init__(
        self,
        config: Config,
        num_classes: int,
        classes: Sequence[str],
        palette: Sequence,
        *,
        category_ids: Sequence[int] = (),
    ) -> None:
        self.cfg = config
        self.num_classes = num_classes
        self.classes = list(classes)
        self.palette = [tuple(c) for c in palette]
        self.category_ids = [int(i) for i in category_ids]
        self.check_config()
        self.criterion: nn.Module | None = None
        # The Trainer's iteration (0-based) of the step about to run, set before each step.
        self.step = 0
        if config.train.classifier_iters and not self.staged:
            from pixelwise.tasks import staged_networks

            raise PixelwiseError(
                f"train.classifier_iters is {config.train.classifier_iters}, but "
                f"{config.model.name} ({self.name} task) trains in one stage; it applies to "
                f"networks trained in stages: {', '.join(staged_networks())}. Remove it from the "
                "config."
            )

    def check_config(self) -> None:
        """Refuse, in one sentence, settings that would do nothing for this task."""

    # -- stages --------------------------------------------------------------------------------
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
        """The training split as this task learns from it."""
        return dataset

    def train_transforms(self) -> Callable:
        raise NotImplementedError

    def preprocessing(self) -> dict[str, Any]:
        """What evaluation does to an image before the network, written once: ``resize`` (H, W)
        or None, then ``(image / 255 - mean) / std``. The eval transforms, ``predict`` and the
        metadata ``export`` stores all come from it."""
        d = self.cfg.data
        return {
            "resize": list(d.resize) if d.resize else None,
            "mean": [float(m) for m in d.mean],
            "std": [float(v) for v in d.std],
        }

    def eval_transforms(self) -> Callable:
        raise NotImplementedError

    def collate(self, samples: list[Any]) -> tuple[Any, Any]:
        raise NotImplementedError

    def eval_batches(self, score_at: str) -> tuple[Callable, Callable]:
        """The transforms and the collate of the batches evaluation scores at ``score_at``
        (``"label"`` or ``"input"``). A task that does not :attr:`scores_at_label_size` is only
        asked for ``"input"``: the eval transforms' pairs, batched by :meth:`collate`."""
        del score_at
        return self.eval_transforms(), self.collate

    def to_device(
        self, batch: tuple[Any, Any], device: torch.device, channels_last: bool = False
    ) -> tuple[Any, Any]:
        return move_batch(batch, device, channels_last)

    def batch_size(self, inputs: Any) -> int:
        return int(inputs.shape[0])

    # -- training ------------------------------------------------------------------------------
    def setup(
        self, model: nn.Module, device: torch.device, train_set: Any, precision: Precision
    ) -> None:
        """Build what training needs beside the model (the loss; a second player's optimizer)."""
        del model, device, train_set, precision

    def loss(self, net: nn.Module, inputs: Any, targets: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimise and its named parts."""
        raise NotImplementedError

    def train_step(self, net: nn.Module, inputs: Any, targets: Any, update: Update) -> StepResult:
        """One forward (under ``update.precision``), backward and update (:func:`finish_update`)."""
        with update.precision.autocast():
            loss, terms = self.loss(net, inputs, targets)
        update.optimizer.zero_grad(set_to_none=True)
        update.scaler.scale(loss).backward()
        for parameter in self.frozen_parameters(net):
            parameter.grad = None  # the optimizer skips it, weight decay and momentum included
        value = float(loss.detach())
        named = {k: float(v.detach()) for k, v in terms.items()}
        stepped = finish_update(
            value, update.optimizer, update.scaler, skip_nonfinite=update.skip_nonfinite
        )
        return StepResult(value, named, stepped)

    def state_dict(self) -> dict[str, Any]:
        """Training state the task keeps beside the model's (saved in checkpoints as "task")."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    # -- evaluation ----------------------------------------------------------------------------
    def new_metric(self, device: torch.device) -> Metric:
        raise NotImplementedError

    def predict(self, model: nn.Module, inputs: Any, tta: TTA = NO_TTA) -> Any:
        """What the metric scores, for a batch of preprocessed inputs."""
        raise NotImplementedError

    def picture(
        self, model: nn.Module, dataset: Any, indices: Sequence[int], device: torch.device
    ) -> np.ndarray:
        """The picture of the validation images ``indices`` the run writes at each evaluation."""
        raise NotImplementedError

    # -- what the commands ask -----------------------------------------------------------------
    def prediction_files(self, stem: str) -> list[str]:
        """The names ``pixelwise predict`` writes for an image whose output name is ``stem``."""
        raise NotImplementedError

    def write_prediction(
        self, net: Inference, image: Tensor, paths: Sequence[Path], settings: PredictSettings
    ) -> None:
        """Predict the uint8 3×H×W ``image`` and write :meth:`prediction_files` to ``paths``."""
        raise NotImplementedError

    def export_module(self, model: nn.Module) -> nn.Module:
        """The module ``pixelwise export`` traces: N×3×H×W normalised images to N×C×H×W logits.

        Raises:
            PixelwiseError: the task's networks have no such fixed per-pixel computation.
        """
        raise PixelwiseError(
            f"{self.cfg.model.name} is a network for the {self.name!r} task, and export writes "
            "the per-pixel logits of networks with one fixed forward only; export a semantic "
            "network's checkpoint."
        )
