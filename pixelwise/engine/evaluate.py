"""Evaluation, written once: the Trainer's validation, ``eval``, ``predict``, ``compare`` and
``export`` all score and preprocess through this module.

>>> result = evaluate_checkpoint("runs/demo/best.pt")        # the run's val split
>>> print(result.report.format(result.dataset.classes))
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pixelwise.config import Config
from pixelwise.data import build_dataset
from pixelwise.engine.inference import check_tta
from pixelwise.engine.loader import EpochBatchSampler, make_loader
from pixelwise.engine.model_io import LoadedModel, load_model
from pixelwise.engine.task import NO_TTA, TTA, Metric, Report, Task, amp_dtype, task_for


@dataclass
class EvalResult:
    """One evaluation: the report (scores), the metric behind it, and what was evaluated."""

    report: Report
    metric: Metric
    dataset: Any
    split: str


@torch.no_grad()
def run_evaluation(
    model: nn.Module,
    batches: Iterable[Any],
    task: Task,
    device: torch.device,
    *,
    amp: bool = False,
    channels_last: bool = False,
    tta: TTA = NO_TTA,
) -> tuple[Report, Metric]:
    """Score ``model`` over ``batches`` with ``task``'s metric, all-reduced across ranks; the
    model's train/eval mode is left as the caller had it."""
    was_training = model.training
    model.eval()
    metric = task.new_metric(device)
    try:
        for batch in batches:
            inputs, targets = task.to_device(batch, device, channels_last)
            with torch.autocast(device.type, dtype=amp_dtype(device), enabled=amp):
                outputs = task.predict(model, inputs, tta)
            metric.update(outputs, targets)
    finally:
        model.train(was_training)
    metric.all_reduce()
    return metric.compute(), metric


def split_dataset(config: Config, split: str | None = None, root: str | None = None) -> tuple[Any, str]:
    """The run's dataset on ``split`` (default its val split), with the options training used."""
    d = config.data
    split = split or d.val_split
    return build_dataset(d.dataset, root or d.root, split=split, **d.split_options(split)), split


class Evaluator:
    """Scores a model on a split of its run's dataset exactly as the Trainer's validation does:
    the same transforms (``data.resize``, mean/std), the same metric, the same sharding under DDP.

    Args:
        config: the run's configuration.
        task: the run's task (see :func:`~pixelwise.engine.task.task_for`).
        split: default ``data.val_split``.
        root: default ``data.root``.
        tta: test-time augmentation; a sliding window evaluates one image at a time.
        dataset: an already built dataset for ``split`` (the Trainer passes its own).
    """

    def __init__(
        self,
        config: Config,
        task: Task,
        *,
        split: str | None = None,
        root: str | None = None,
        tta: TTA = NO_TTA,
        dataset: Any = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_tta(tta.scales, tta.crop, tta.stride)
        self.cfg, self.task, self.tta = config, task, tta
        if dataset is None:
            dataset, split = split_dataset(config, split, root)
        self.dataset = dataset
        self.split = split or config.data.val_split
        self.rank, self.world_size = rank, world_size

    def loader(self):
        d = self.cfg.data
        sampler = EpochBatchSampler(
            len(self.dataset), d.val_batch_size if self.tta.crop is None else 1, shuffle=False,
            drop_last=False, rank=self.rank, world_size=self.world_size,
        )  # fmt: skip
        return make_loader(
            self.dataset, self.task.eval_transforms(), sampler, d.num_workers,
            collate_fn=self.task.collate,
        )  # fmt: skip

    def run(
        self, model: nn.Module, device: torch.device, *, amp: bool = False, channels_last: bool = False
    ) -> EvalResult:
        report, metric = run_evaluation(
            model, self.loader(), self.task, device, amp=amp, channels_last=channels_last, tta=self.tta
        )
        return EvalResult(report, metric, self.dataset, self.split)


def task_of(loaded: LoadedModel) -> Task:
    """The task of a loaded checkpoint's network."""
    meta = loaded.meta
    return task_for(loaded.config, meta["num_classes"], meta["classes"], meta["palette"])


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str | None = None,
    root: str | None = None,
    tta: TTA = NO_TTA,
    device: str | torch.device = "auto",
) -> EvalResult:
    """What ``pixelwise eval`` computes, in one call: ``evaluate_checkpoint("best.pt").report``."""
    loaded = load_model(checkpoint, device)
    evaluator = Evaluator(loaded.config, task_of(loaded), split=split, root=root, tta=tta)
    return evaluator.run(loaded.model, loaded.device)


@torch.no_grad()
def predict_image(
    model: nn.Module, task: Task, image: Tensor, device: torch.device, tta: TTA = NO_TTA
) -> tuple[Tensor, Tensor]:
    """Labels for one uint8 3×H×W image, preprocessed exactly as evaluation preprocesses it.

    Returns:
        ``(labels, probabilities)``: labels H×W at the image's own size (a valid-padding model's
        centre window, scaled the same way), and the probabilities 1×C×h×w at the size the model saw.
    """
    blank = torch.zeros(image.shape[-2:], dtype=torch.int64)
    x, _ = task.eval_transforms()(image, blank)
    probs = task.predict(model, x[None].to(device), tta)
    (h, w), (xh, xw) = image.shape[-2:], x.shape[-2:]
    # A resized run predicts at the resized size: back to the image's size like an upsampled score
    # map (bilinear, align_corners=False as everywhere), also for a valid-padding centre window.
    size = (round(probs.shape[-2] * h / xh), round(probs.shape[-1] * w / xw))
    full = probs if tuple(probs.shape[-2:]) == size else F.interpolate(
        probs.float(), size=size, mode="bilinear", align_corners=False
    )
    return full.argmax(1)[0].cpu(), probs


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively on this CPU (AVX-512 or AMX).

    Without it (an AVX2-only CPU) bf16 autocast falls back to reference kernels: a U-Net training
    step measured 10x slower than fp32 on such a machine, so autocast there is only a cost.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def amp_in_effect(requested: bool, device: torch.device) -> bool:
    """``train.amp`` as it runs: on CUDA as asked; on the CPU only where bf16 is fast."""
    if not requested:
        return False
    return device.type != "cpu" or cpu_has_fast_bf16()
