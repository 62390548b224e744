"""The training loop: :class:`Trainer` trains a :class:`~pixelwise.engine.run.Run` built from a
:class:`~pixelwise.config.Config` by :func:`~pixelwise.engine.run.build_run`.

The loop is per iteration (schedules, logging, evaluation in iterations or epochs); a checkpoint
holds model, optimizer, scheduler, scaler, step, RNG states, best score and config, so ``resume``
continues to the same parameters as an uninterrupted run. Under ``torchrun`` the model is wrapped in
DistributedDataParallel, each rank reads its shard, metrics are all-reduced, and only rank 0 writes.

What is learned comes from the run's :class:`~pixelwise.tasks.base.Task` (batching, the step, the
metric, the picture); validation is the same :class:`~pixelwise.engine.evaluate.Evaluator` that
``pixelwise eval`` runs, in the run's :class:`~pixelwise.engine.precision.Precision`.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Subset

from pixelwise.config import Config, dump_config
from pixelwise.data.transforms import first_image_sizes
from pixelwise.engine.checkpoint import capture_rng, first_nonfinite, save_checkpoint
from pixelwise.engine.distributed import leave_process_group, unwrap
from pixelwise.engine.evaluate import Evaluator
from pixelwise.engine.loader import EpochBatchSampler, close_loader, make_loader
from pixelwise.engine.precision import Precision, float32
from pixelwise.engine.progress import LogRow, Progress, resolve_mode
from pixelwise.engine.run import Run, build_run
from pixelwise.engine.rundir import StopRequest, remove_stub_run_dir, write_run_json
from pixelwise.errors import PixelwiseError
from pixelwise.outputs import append_line
from pixelwise.tasks.base import Report, Update
from pixelwise.tasks.semantic import SemanticTask
from pixelwise.viz import save_png, spread_indices

#: A stage's epochs are seeded as ``epoch + stage × _STAGE_EPOCHS``: no run has this many epochs
#: in one stage, so two stages never share an order.
_STAGE_EPOCHS = 1_000_000


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    targets: Tensor,
    *,
    aux: bool,
    precision: Precision | None = None,
) -> tuple[float, bool]:
    """One semantic step with a given criterion, outside a Trainer (the task's step, for tests and
    notebooks); returns the loss and whether the optimizer stepped."""
    precision = precision or float32(images.device)
    update = Update(optimizer, precision.grad_scaler(), precision)
    result = _CriterionTask(criterion, aux).train_step(model, images, targets, update)
    return result.loss, result.stepped


class _CriterionTask(SemanticTask):
    def __init__(self, criterion: nn.Module, aux: bool) -> None:  # no config: the loss is given
        self.criterion, self.aux = criterion, aux

    def loss(self, net: nn.Module, inputs: Tensor, targets: Tensor) -> tuple[Tensor, dict]:
        output = net(inputs, return_aux=True) if self.aux else net(inputs)
        return self.criterion(output, targets), {}


def _part(name: str) -> property:
    """A read-only attribute of the Trainer that is the built run's ``name``."""
    return property(lambda self: getattr(self.run, name), doc=f"The run's ``{name}``.")


class Trainer:
    """The loop over a built :class:`~pixelwise.engine.run.Run`. ``fit()`` trains and returns the
    last scores; :meth:`from_config` builds the run and the trainer in one call.

    Args:
        run: the built parts (:func:`~pixelwise.engine.run.build_run`).
        progress: how the run shows its steps (:mod:`pixelwise.engine.progress`): ``auto`` or
            None (a bar on a terminal, plain lines every ``train.log_every`` steps otherwise),
            ``bar``, ``lines``, ``quiet``; True is ``bar`` and False ``quiet``.
    """

    # The built parts are the run's, read through (one copy of each, never a second one here).
    cfg = _part("config")
    dist, device, task = _part("dist"), _part("device"), _part("task")
    train_set, val_set = _part("train_set"), _part("val_set")
    classes, num_classes = _part("classes"), _part("num_classes")
    model, net = _part("model"), _part("net")
    optimizer, scheduler = _part("optimizer"), _part("scheduler")
    precision, scaler = _part("precision"), _part("scaler")
    iters_per_epoch, total_iters = _part("iters_per_epoch"), _part("total_iters")
    stage_starts, stage_streams = _part("stage_starts"), _part("stage_streams")
    run_dir, run_info = _part("run_dir"), _part("run_info")

    def __init__(self, run: Run, *, progress: str | bool | None = None) -> None:
        self.run = run
        self.step, self.best_score = run.step, run.best_score
        self.progress_mode = resolve_mode(progress) if run.dist.is_main else "quiet"
        self.shown: Progress | None = None
        # The newest checkpoint of this run and its step (all finite): a resumed run's is the one
        # it started from, then each one saved; what a stopped run's message names.
        self.kept: tuple[Path, int] | None = (
            (run.resumed_from, run.step) if run.resumed_from is not None else None
        )
        self.skipped = 0
        self.history: list[dict[str, Any]] = []
        self.writer = None
        self.interrupted = False
        self.eval_seconds = 0.0
        self.train_images_per_s = 0.0
        self._losses = RunningMeans()
        self._interval = RunningMeans()  # loss terms since the previous log step
        self._image_size: list[int] | None = None
        self._loaders: dict[int, Any] = {}

    @classmethod
    def from_config(
        cls,
        config: Config,
        *,
        run_dir: str | Path | None = None,
        resume: str | Path | None = None,
        progress: str | bool | None = None,
    ) -> Trainer:
        """Build the run of ``config`` (:func:`~pixelwise.engine.run.build_run`) and its loop."""
        return cls(build_run(config, run_dir=run_dir, resume=resume), progress=progress)

    @property
    def criterion(self) -> nn.Module | None:
        """The task's loss module (replaceable, e.g. by a test that injects a NaN)."""
        return self.task.criterion

    @criterion.setter
    def criterion(self, module: nn.Module) -> None:
        self.task.criterion = module

    # -- checkpoints -------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        return {
            "model": self.cfg.model.name,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "palette": [list(c) for c in self.train_set.palette],
            # An instance dataset's own id of each label (COCO's are not contiguous), for predict's
            # COCO results; empty for a semantic dataset.
            "category_ids": [int(i) for i in getattr(self.train_set, "category_ids", ())],
            "dataset": self.cfg.data.dataset,
            "mean": list(self.cfg.data.mean),
            "std": list(self.cfg.data.std),
            # Pretrained weights named in the options (Mask R-CNN's COCO "weights") are already in
            # the state dict: loading the checkpoint must not fetch them again.
            "model_options": {k: v for k, v in self.cfg.model.options.items() if k != "weights"},
            "run": self.run_info,
            # What the network saw, so predict can warn about photos far from it (predict_scale).
            "train_image_size": self._train_image_size(),
        }

    def _train_image_size(self) -> list[int] | None:
        """[H, W] the training images had before cropping: ``data.resize``, else the median of
        the first images' sizes read from their headers (None when none can be measured)."""
        if self._image_size is None:
            resize = self.cfg.data.resize
            sizes = [tuple(resize)] if resize else first_image_sizes(self.train_set)
            self._image_size = (
                [int(statistics.median(s[0] for s in sizes)),
                 int(statistics.median(s[1] for s in sizes))]
                if sizes else []
            )  # fmt: skip
        return self._image_size or None

    def _payload(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "best_score": self.best_score,
            "rng": capture_rng(),
            "task": self.task.state_dict(),
            "config": self.cfg.to_dict(),
            "meta": self.meta(),
        }

    def save(self, name: str) -> Path | None:
        """Write ``name`` in the run folder (rank 0 only), never with non-finite weights."""
        self.check_finite()
        if not self.dist.is_main:
            return None
        path = self.run_dir / name
        save_checkpoint(path, self._payload())
        self.kept = (path, self.step)
        return path

    def check_finite(self) -> None:
        """Stop with the step and the first bad tensor when a parameter or buffer went inf/NaN,
        before anything is saved, so the last good checkpoint stays as it was."""
        bad = first_nonfinite(self.model.state_dict())
        if bad is not None:
            raise PixelwiseError(
                f"{bad} of the model is not finite at step {self.step}; the run stopped and "
                f"{self._kept()}; lower optim.lr (now {self.cfg.optim.lr}) or check the inputs."
            )

    def _kept(self) -> str:
        """Which checkpoint holds the last good state, naming only a file that is there."""
        if self.kept is None or not self.kept[0].is_file():
            return "no checkpoint of this run was written"
        path, step = self.kept
        return f"{path} keeps step {step}"

    def _write_run_json(self) -> None:
        write_run_json(self.run_dir, self.run_info, self.cfg.to_dict())

    # -- the loop ----------------------------------------------------------------------------
    def _batches_per_epoch(self, size: int) -> int:
        return self.run.batches_per_epoch(size)

    def _stage_at(self, step: int) -> int:
        return sum(1 for start in self.stage_starts[1:] if start <= step)

    def _train_loader(self, step: int):
        """The batches from iteration ``step`` to the end of its epoch (of its stage's stream).

        Each stage's DataLoader is built once and keeps its workers (``persistent_workers``); its
        sampler is moved to the epoch and batch of ``step`` before each pass, and every sample is
        seeded by its position, so a resumed run sees the batches a straight run sees. A stage
        after the first draws its epochs with seeds of their own (``epoch`` offset by the stage),
        so its order is not the first stage's again.
        """
        stage = self._stage_at(step)
        loader = self._loaders.get(stage)
        if loader is None:
            loader = self._loaders[stage] = self._stage_loader(stage)
        stream = self.stage_streams[stage]
        per_epoch = self.iters_per_epoch if stream is None else self._batches_per_epoch(len(stream))
        sampler = loader.batch_sampler
        epoch, sampler.start = divmod(step - self.stage_starts[stage], per_epoch)
        sampler.epoch = epoch + stage * _STAGE_EPOCHS
        return loader

    def _stage_loader(self, stage: int):
        d = self.cfg.data
        stream = self.stage_streams[stage]
        dataset = self.train_set if stream is None else Subset(self.train_set, list(stream))
        sampler = EpochBatchSampler(
            len(dataset), d.batch_size, seed=self.cfg.train.seed, rank=self.dist.rank,
            world_size=self.dist.world_size,
        )  # fmt: skip
        return make_loader(
            dataset, self.task.train_transforms(), sampler, d.num_workers,
            self.device.type == "cuda", collate_fn=self.task.collate, persistent=True,
        )  # fmt: skip

    def evaluator(self) -> Evaluator:
        """The validation split scored as ``pixelwise eval`` scores it, sharded over the ranks."""
        return Evaluator(
            self.cfg, self.task, dataset=self.val_set, rank=self.dist.rank,
            world_size=self.dist.world_size,
        )  # fmt: skip

    def _should_eval(self, end_of_epoch: bool) -> bool:
        t = self.cfg.train
        if self.step >= self.total_iters:
            return True
        if t.epochs is not None:
            return end_of_epoch and (self.step // self.iters_per_epoch) % t.eval_every == 0
        return self.step % t.eval_every == 0

    def fit(self, max_steps: int | None = None) -> Report | None:
        """Train until ``train.iters``/``epochs`` (or ``max_steps``, or a stop signal); returns the
        scores of the last evaluation (None when none ran).

        A run that fails before it saved any checkpoint leaves no stub behind: the folder it made
        goes again (:func:`~pixelwise.engine.rundir.remove_stub_run_dir`).
        """
        stop_at = self.total_iters if max_steps is None else min(max_steps, self.total_iters)
        bar = self.shown = Progress(self.progress_mode, stop_at, self.step, self.cfg.name)
        self.eval_seconds = 0.0
        try:
            if self.dist.is_main:
                self._start_writing()
            with StopRequest() as stop:
                last_scores = self._loop(stop, stop_at, bar)
                self.save("last.pt")
                self.interrupted = stop.requested
        except BaseException:
            self._end(bar)
            self._remove_stub()
            raise
        self._end(bar)
        return last_scores

    def _start_writing(self) -> None:
        """The run's config, its start in ``run.json``, and the tensorboard writer; a resumed run's
        events after its step (logged before a kill, then again) are purged."""
        dump_config(self.cfg, self.run_dir / "config.yaml")
        self._write_run_json()
        from torch.utils.tensorboard import SummaryWriter

        purge = self.step + 1 if self.step else None
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)

    def _loop(self, stop: StopRequest, stop_at: int, bar: Progress) -> Report | None:
        """Steps until ``stop_at`` or a stop; returns the last scores (None when none ran)."""
        last_scores: Report | None = None
        self.net.train()
        self._losses = RunningMeans()
        seen, first = 0, self.step
        tick = time.perf_counter()
        while self.step < stop_at and not stop.requested:
            for batch in self._batches(self._train_loader(self.step), stop):
                inputs, targets = self.task.to_device(
                    batch, self.device, self.cfg.train.channels_last
                )
                skip = self.cfg.train.skip_nonfinite
                self.task.step = self.step
                update = Update(self.optimizer, self.scaler, self.precision, skip)
                result = self.task.train_step(self.net, inputs, targets, update)
                loss, stepped = result.loss, result.stepped
                if not stepped and not skip:
                    raise PixelwiseError(
                        f"The loss became {loss} at step {self.step + 1} and the run stopped "
                        f"before updating; {self._kept()}; lower optim.lr (now "
                        f"{self.cfg.optim.lr}), check the labels, or set train.skip_nonfinite: true."
                    )
                self._losses.add({"loss": loss, **result.terms})
                self._interval.add({"loss": loss, **result.terms})
                lr = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                self.step += 1
                seen += self.task.batch_size(inputs) * self.dist.world_size
                if not stepped:
                    self.skipped += 1
                    bar.warn(
                        f"step {self.step}: loss or gradients not finite, batch skipped "
                        f"(train.skip_nonfinite; {self.skipped} so far)"
                    )
                if self.step % self.cfg.train.log_every == 0 or self.step == stop_at:
                    self.check_finite()
                    speed = self.images_per_second(seen, tick)
                    row = LogRow(
                        self.step, stop_at, self.step / self.iters_per_epoch,
                        self._interval.pop() or {"loss": loss}, lr, speed,
                        self._seconds_left(self.step - first, tick, stop_at),
                    )  # fmt: skip
                    bar.log(row)
                    self._log_row(row)
                bar.advance()
                end_of_epoch = self.step % self.iters_per_epoch == 0
                if self._should_eval(end_of_epoch) and self.cfg.train.iters is not None:
                    last_scores = self._validate_unless_stopped(stop, last_scores)
                if self.step >= stop_at or stop.requested or self.step in self.stage_starts:
                    break  # a new stage draws from its own stream
            epoch_done = self.step % self.iters_per_epoch == 0
            if self.cfg.train.epochs is not None and epoch_done and self._should_eval(True):
                last_scores = self._validate_unless_stopped(stop, last_scores)
        self.train_images_per_s = self.images_per_second(seen, tick)
        return last_scores

    def _batches(self, loader: Any, stop: StopRequest) -> Any:
        """The loader's batches. A worker that died after a stop was asked (a signal sent before
        it ignored signals) ends them as the stop does: the step before is whole and is saved."""
        iterator = iter(loader)
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError as error:
                if not _worker_lost(error, stop):
                    raise
                return
            yield batch

    def _validate_unless_stopped(self, stop: StopRequest, last: Report | None) -> Report | None:
        """:meth:`validate`; an evaluation whose loader worker died after a stop was asked is
        dropped (the run saves this step's ``last.pt`` without its scores)."""
        try:
            return self.validate()
        except RuntimeError as error:
            if not _worker_lost(error, stop):
                raise
            return last

    def _end(self, bar: Progress) -> None:
        """Stop the loaders' workers, the progress bar and the tensorboard writer."""
        for loader in self._loaders.values():
            close_loader(loader)
        self._loaders.clear()
        bar.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def _remove_stub(self) -> None:
        """After a failure: a run folder this start made and saved no checkpoint into holds nothing
        of value, so what the run wrote there goes (nothing else; see ``remove_stub_run_dir``)."""
        if not (self.dist.is_main and self.run.made_folder):
            return
        if self.kept is not None and self.kept[0].parent == self.run_dir:
            return
        try:
            remove_stub_run_dir(self.run_dir)
        except OSError:  # never hide the error that ended the run behind a cleanup's
            pass

    def close(self) -> None:
        """Let go of DistributedDataParallel and, when this run joined the process group, leave it
        (:func:`~pixelwise.engine.distributed.leave_process_group`): the last call of a process
        under ``torchrun``, after the run's last collective."""
        self.run.net = self.run.model
        if self.dist.owns_group:
            leave_process_group()

    def images_per_second(self, seen: int, since: float) -> float:
        """Training throughput since ``since``, leaving out the time spent evaluating."""
        return seen / max(1e-9, time.perf_counter() - since - self.eval_seconds)

    def _seconds_left(self, done: int, since: float, stop_at: int) -> float | None:
        """The time the remaining steps take at this start's pace (evaluations left out)."""
        spent = time.perf_counter() - since - self.eval_seconds
        if done <= 0 or spent <= 0:
            return None
        return (stop_at - self.step) * spent / done

    def _log_row(self, row: LogRow) -> None:
        """A log step into ``train_log.jsonl`` and tensorboard (the main process only)."""
        if not self.dist.is_main:
            return
        append_line(self.run_dir / "train_log.jsonl", json.dumps(row.as_dict()))
        self._log_scalars(
            {**{f"train/{k}": v for k, v in row.terms.items()},
             "train/lr": row.lr, "train/images_per_s": row.images_per_s}
        )  # fmt: skip

    def _log_scalars(self, values: dict[str, float]) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, self.step)

    def validate(self) -> Report:
        """Evaluate on the validation split, log, write pictures, keep the best checkpoint."""
        started = time.perf_counter()
        try:
            return self._validate()
        finally:
            self.eval_seconds += time.perf_counter() - started

    def _validate(self) -> Report:
        report = (
            self.evaluator()
            .run(
                self.net,
                self.device,
                precision=self.precision,
                channels_last=self.cfg.train.channels_last,
                progress=self.progress_mode == "bar",
            )  # fmt: skip
            .report
        )
        if not self.dist.is_main:
            return report
        record = {"step": self.step, "epoch": self.step / self.iters_per_epoch, **report.as_dict()}
        # The training loss terms, averaged since the previous evaluation, beside the scores.
        record["train"] = self._losses.pop()
        self.history.append(record)
        append_line(self.run_dir / "metrics.jsonl", json.dumps(record))
        self._log_scalars({f"val/{k}": v for k, v in report.scalars().items()})
        self._log_scalars(per_class_scalars(report, self.classes))
        if self.cfg.train.vis_samples > 0:  # 0 asks for no picture
            grid = self.prediction_picture()
            save_png(grid, self.run_dir / "predictions.png")
            if self.writer is not None:
                self.writer.add_image("val/predictions", grid, self.step, dataformats="HWC")
        summary = ", ".join(f"{k} {100 * v:.2f}" for k, v in list(report.scalars().items())[:1])
        if self.shown is not None:
            self.shown.note(f"step {self.step}: val {summary}")
        if report.score > self.best_score:
            self.best_score = report.score
            self.save("best.pt")
        self.save("last.pt")
        return report

    @torch.no_grad()
    def prediction_picture(self) -> np.ndarray:
        """The task's picture of ``vis_samples`` validation images spread evenly over the split
        (consecutive frames of a video dataset look alike)."""
        model = unwrap(self.net)
        was_training = model.training
        model.eval()
        try:
            indices = spread_indices(len(self.val_set), self.cfg.train.vis_samples)
            with self.precision.autocast():  # drawn as validation predicts
                return self.task.picture(model, self.val_set, indices, self.device)
        finally:
            model.train(was_training)


class RunningMeans:
    """Means of named training values since the last :meth:`pop` (non-finite values left out)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            if math.isfinite(value):
                self.sums[key] = self.sums.get(key, 0.0) + value
                self.counts[key] = self.counts.get(key, 0) + 1

    def pop(self) -> dict[str, float]:
        means = {k: self.sums[k] / self.counts[k] for k in self.sums}
        self.sums, self.counts = {}, {}
        return means


def _worker_lost(error: RuntimeError, stop: StopRequest) -> bool:
    """Whether ``error`` is a DataLoader worker's death while a stop was being asked for."""
    return stop.requested and "DataLoader worker" in str(error)


def per_class_scalars(report: Report, classes: list[str]) -> dict[str, float]:
    """TensorBoard's ``val_iou/<class>`` of a report with per-class IoU (an instance run's
    painted class map too); classes absent from the split (NaN) are left out."""
    scores = getattr(report, "semantic", report)
    iou = getattr(scores, "iou", None)
    if iou is None:
        return {}
    return {
        f"val_iou/{name}": float(value)
        for name, value in zip(classes, iou, strict=False)
        if value is not None and math.isfinite(value)
    }
