"""Evaluation, written once: the Trainer's validation, ``eval`` and ``compare`` all score through
:class:`Evaluator`, with the task's preprocessing and metric and the run's precision, at each
label's own size by default (``data.score_at``, :mod:`pixelwise.engine.label_size`).

>>> result = evaluate_checkpoint("runs/demo/best.pt")        # the run's val split
>>> print(result.report.format(result.dataset.classes))
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from pixelwise.config import Config
from pixelwise.data import build_dataset
from pixelwise.engine.inference import check_tta
from pixelwise.engine.label_size import check_score_at, configured_score_at, scored_at_text
from pixelwise.engine.loader import EpochBatchSampler, make_loader
from pixelwise.engine.model_io import LoadedModel, load_model
from pixelwise.engine.precision import Precision, float32
from pixelwise.tasks.base import NO_TTA, TTA, Metric, Report, Task


@dataclass
class EvalResult:
    """One evaluation: the report (scores), the metric behind it, what was evaluated, and the
    size it was scored at (``"label"`` or ``"input"``)."""

    report: Report
    metric: Metric
    dataset: Any
    split: str
    scored_at: str = "input"

    def scored_text(self) -> str:
        """The console's words for the size scored at: "scored at the labels' size 360×480"."""
        words = getattr(self.report, "scored_text", lambda: None)()
        return words or scored_at_text(self.scored_at, [])


@torch.no_grad()
def run_evaluation(
    model: nn.Module,
    batches: Iterable[Any],
    task: Task,
    device: torch.device,
    *,
    precision: Precision | None = None,
    channels_last: bool = False,
    tta: TTA = NO_TTA,
    progress: bool = False,
) -> tuple[Report, Metric]:
    """Score ``model`` over ``batches`` with ``task``'s metric, all-reduced across ranks, under
    ``precision`` (default float32); the model's train/eval mode is left as the caller had it.
    ``progress`` shows a bar of the batches (a terminal's; it is gone when they are done)."""
    precision = precision or float32(device)
    was_training = model.training
    model.eval()
    metric = task.new_metric(device)
    shown = tqdm(
        batches, total=_length(batches), desc="evaluating", unit="batch", leave=False,
        dynamic_ncols=True, disable=not progress,
    )  # fmt: skip
    try:
        for batch in shown:
            inputs, targets = task.to_device(batch, device, channels_last)
            with precision.autocast():
                outputs = task.predict(model, inputs, tta)
            metric.update(outputs, targets)
    finally:
        shown.close()
        model.train(was_training)
    metric.all_reduce()
    return metric.compute(), metric


def _length(batches: Iterable[Any]) -> int | None:
    try:
        return len(batches)  # type: ignore[arg-type]
    except TypeError:
        return None


def split_dataset(
    config: Config, split: str | None = None, root: str | None = None
) -> tuple[Any, str]:
    """The run's dataset on ``split`` (default its val split), with the options training used."""
    d = config.data
    split = split or d.val_split
    return build_dataset(d.dataset, root or d.root, split=split, **d.split_options(split)), split


class Evaluator:
    """Scores a model on a split of its run's dataset exactly as the Trainer's validation does:
    the same transforms (``data.resize``, mean/std), the same metric, the same sharding under DDP.

    Args:
        config: the run's configuration.
        task: the run's task (see :func:`~pixelwise.tasks.build_task`).
        split: default ``data.val_split``.
        root: default ``data.root``.
        tta: test-time augmentation; a sliding window evaluates one image at a time.
        dataset: an already built dataset for ``split`` (the Trainer passes its own).
        score_at: ``"label"`` scores each prediction upsampled to its label's own size,
            ``"input"`` at the network's input size against labels resized to it; default the
            run's ``data.score_at`` (``"label"``). A task that cannot score at the labels' size
            (:attr:`~pixelwise.tasks.base.Task.scores_at_label_size`, the instance task) scores
            at the input size, which :attr:`score_at` then says.
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
        score_at: str | None = None,
    ) -> None:
        check_tta(tta.scales, tta.crop, tta.stride)
        requested = configured_score_at(config) if score_at is None else check_score_at(score_at)
        self.cfg, self.task, self.tta = config, task, tta
        self.score_at = requested if task.scores_at_label_size else "input"
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
        transforms, collate = self.task.eval_batches(self.score_at)
        return make_loader(self.dataset, transforms, sampler, d.num_workers, collate_fn=collate)

    def run(
        self,
        model: nn.Module,
        device: torch.device,
        *,
        precision: Precision | None = None,
        channels_last: bool = False,
        progress: bool = False,
    ) -> EvalResult:
        report, metric = run_evaluation(
            model, self.loader(), self.task, device, precision=precision,
            channels_last=channels_last, tta=self.tta, progress=progress,
        )  # fmt: skip
        return EvalResult(report, metric, self.dataset, self.split, self.score_at)

    def run_loaded(self, loaded: LoadedModel, *, progress: bool = False) -> EvalResult:
        """Score a loaded checkpoint in the precision its run validated in."""
        return self.run(
            loaded.model, loaded.device, precision=loaded.precision,
            channels_last=loaded.channels_last, progress=progress,
        )  # fmt: skip


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    split: str | None = None,
    root: str | None = None,
    tta: TTA = NO_TTA,
    device: str | torch.device = "auto",
    score_at: str | None = None,
) -> EvalResult:
    """What ``pixelwise eval`` computes, in one call: ``evaluate_checkpoint("best.pt").report``."""
    loaded = load_model(checkpoint, device)
    evaluator = Evaluator(
        loaded.config, loaded.task, split=split, root=root, tta=tta, score_at=score_at
    )
    return evaluator.run_loaded(loaded)
