"""The training engine: build everything from a :class:`~pixelwise.config.Config`, then fit.

The loop is per iteration (schedules, logging, evaluation in iterations or epochs); a checkpoint
holds model, optimizer, scheduler, scaler, step, RNG states, best score and config, so ``resume``
continues to the same parameters as an uninterrupted run. Under ``torchrun`` the model is wrapped in
DistributedDataParallel, each rank reads its shard, metrics are all-reduced, and only rank 0 writes.

What is learned comes from the run's :class:`~pixelwise.engine.task.Task` (batching, the step, the
metric, the picture); validation is the same :class:`~pixelwise.engine.evaluate.Evaluator` that
``pixelwise eval`` runs. The process group and device live in :mod:`~pixelwise.engine.distributed`,
the run folder and stop signals in :mod:`~pixelwise.engine.rundir`.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Subset
from tqdm import tqdm

from pixelwise.config import Config, config_from_dict, dump_config
from pixelwise.data import build_dataset
from pixelwise.data.base import SegmentationDataset
from pixelwise.engine.checkpoint import (
    capture_rng,
    check_compatible,
    first_nonfinite,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from pixelwise.engine.distributed import init_distributed, resolve_device, unwrap
from pixelwise.engine.evaluate import Evaluator, amp_in_effect
from pixelwise.engine.loader import EpochBatchSampler, make_loader
from pixelwise.engine.provenance import run_record
from pixelwise.engine.rundir import StopRequest, new_run_dir, write_run_json
from pixelwise.engine.schedule import build_optimizer, build_scheduler
from pixelwise.engine.sync_bn import convert_sync_batchnorm
from pixelwise.engine.task import Report, Task, class_weights_for, task_for  # noqa: F401
from pixelwise.errors import PixelwiseError
from pixelwise.metrics import Scores, format_scores
from pixelwise.models import build_model
from pixelwise.viz import save_png

#: A stage's epochs are seeded as ``epoch + stage × _STAGE_EPOCHS``: no run has this many epochs
#: in one stage, so two stages never share an order.
_STAGE_EPOCHS = 1_000_000


def build_datasets(cfg: Config) -> tuple[SegmentationDataset, SegmentationDataset]:
    d = cfg.data
    train = build_dataset(d.dataset, d.root, split=d.train_split, **d.split_options(d.train_split))
    val = build_dataset(d.dataset, d.root, split=d.val_split, **d.split_options(d.val_split))
    if len(train) == 0:
        raise PixelwiseError(
            f"Dataset {d.dataset!r} split {d.train_split!r} under {d.root} holds no samples; check data.root."
        )
    return train, val


def train_step(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    images: Tensor,
    targets: Tensor,
    *,
    amp: bool,
    aux: bool,
    skip_nonfinite: bool = False,
) -> tuple[float, bool]:
    """One semantic step with a given criterion, outside a Trainer (the task's step, for tests and
    notebooks); returns the loss and whether the optimizer stepped."""
    result = _CriterionTask(criterion, aux).train_step(
        model, optimizer, scaler, images, targets, amp=amp, skip_nonfinite=skip_nonfinite
    )
    return result.loss, result.stepped


class _CriterionTask(Task):
    def __init__(self, criterion: nn.Module, aux: bool) -> None:  # no config: the loss is given
        self.criterion, self.aux = criterion, aux

    def loss(self, net: nn.Module, inputs: Tensor, targets: Tensor) -> tuple[Tensor, dict]:
        output = net(inputs, return_aux=True) if self.aux else net(inputs)
        return self.criterion(output, targets), {}


class Trainer:
    """Everything one run needs, built from a config. ``fit()`` trains and returns the best scores.

    Args:
        config: the run configuration.
        run_dir: where to write; default a new folder ``train.out_dir/name``.
        resume: a ``last.pt`` to continue from (its folder becomes the run folder).
        progress: show tqdm bars (default: only on a terminal).
    """

    def __init__(
        self,
        config: Config,
        *,
        run_dir: str | Path | None = None,
        resume: str | Path | None = None,
        progress: bool | None = None,
    ) -> None:
        self.cfg = config
        self.dist = init_distributed(config.train.device)
        self.device = resolve_device(config.train.device, self.dist)
        self.progress = progress
        checkpoint = load_checkpoint(resume) if resume else None
        if checkpoint is not None:
            check_resume_config(config, checkpoint["config"], str(resume))
        torch.manual_seed(config.train.seed)
        np.random.seed(config.train.seed)

        self.train_set, self.val_set = build_datasets(config)
        self.classes = list(self.train_set.classes)
        self.num_classes = config.model.num_classes or self.train_set.num_classes
        if self.num_classes != self.train_set.num_classes:
            raise PixelwiseError(
                f"model.num_classes is {self.num_classes} but {config.data.dataset} has "
                f"{self.train_set.num_classes} classes; remove model.num_classes or fix it."
            )
        d = config.data
        self.task = task_for(config, self.num_classes, self.classes, self.train_set.palette)
        # The labelled subset (data.labeled_fraction / labeled_list), as the task learns from it.
        self.train_set = self.task.train_dataset(self.train_set)
        self.train_transforms = self.task.train_transforms()
        self.eval_transforms = self.task.eval_transforms()

        self.model = build_model(
            config.model.name,
            self.num_classes,
            **config.model.options,
            # A weights name or path is resolved (and downloaded) by models.backbones.
            **({"weights_backbone": config.model.weights_backbone}
               if config.model.weights_backbone else {}),
        ).to(self.device)  # fmt: skip
        if config.train.sync_bn and self.dist.world_size > 1:
            if self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            else:  # torch's SyncBatchNorm runs on CUDA only; ours all-reduces under gloo
                self.model = convert_sync_batchnorm(self.model)
        if config.train.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.task.setup(self.model, self.device, self.train_set)
        self.optimizer = build_optimizer(self.model.parameters(), config.optim)
        self.iters_per_epoch = self._batches_per_epoch(len(self.train_set))
        if self.iters_per_epoch == 0:
            raise PixelwiseError(
                f"data.batch_size {d.batch_size} is larger than the {len(self.train_set)} training "
                "samples; lower the batch size."
            )
        t = config.train
        self.total_iters = t.iters if t.iters is not None else t.epochs * self.iters_per_epoch
        self.stage_starts = self.task.stage_starts(self.total_iters)
        self.stage_streams = [
            self.task.stage_samples(stage, self.train_set)
            for stage in range(len(self.stage_starts))
        ]
        self._check_stage_streams()
        self.scheduler = build_scheduler(
            self.optimizer,
            config.schedule,
            self.total_iters,
            self.iters_per_epoch,
            self.stage_starts,
        )
        # Autocast where it pays: on an AVX2-only CPU bf16 is slower than fp32, so the run says so
        # once and trains in fp32, and run.json records what ran ("amp": false).
        self.amp = amp_in_effect(t.amp, self.device)
        if t.amp and not self.amp and self.dist.is_main:
            print(
                "train.amp: this CPU has no fast bfloat16 (no AVX-512/AMX), where autocast is "
                "slower than fp32; training in fp32."
            )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp and self.device.type == "cuda"
        )
        self.step = 0
        self.saved_step: int | None = None  # the step of the last checkpoint written (all finite)
        self.skipped = 0
        self.best_score = -math.inf
        self.history: list[dict[str, Any]] = []
        if checkpoint is not None:
            self._restore(checkpoint, str(resume))
            self.run_dir = Path(resume).parent
        elif self.dist.is_main:
            self.run_dir = Path(run_dir) if run_dir else new_run_dir(t.out_dir, config.name)
            self.run_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.run_dir = Path(run_dir or t.out_dir)
        self.net: nn.Module = self.model
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if t.compile:
            self.net = torch.compile(self.net)
        self.run_info = run_record(
            device=self.device, world_size=self.dist.world_size, batch_per_process=d.batch_size,
            seed=t.seed, step=self.step,
        )  # fmt: skip
        self.run_info["amp"] = self.amp
        self.writer = None
        self.interrupted = False

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
        }

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
        self.saved_step = self.step
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
        if self.saved_step is None:
            return "no checkpoint of this start was written"
        return f"{self.run_dir / 'last.pt'} keeps step {self.saved_step}"

    def _restore(self, payload: dict[str, Any], source: str) -> None:
        check_compatible(payload["meta"], self.cfg.model.name, self.num_classes, source)
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.step = int(payload["step"])
        self.best_score = float(payload["best_score"])
        self.saved_step = self.step
        self.task.load_state_dict(payload.get("task", {}))
        restore_rng(payload["rng"])
        # The restored learning rate is the old schedule's; with a changed train.iters/epochs the
        # schedule is the new one from this step on (LambdaLR's own formula, so unchanged runs match).
        scheduler = self.scheduler
        for group, base, factor in zip(
            self.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * factor(scheduler.last_epoch)

    def _write_run_json(self) -> None:
        write_run_json(self.run_dir, self.run_info, self.cfg.to_dict())

    # -- the loop ----------------------------------------------------------------------------
    def _batches_per_epoch(self, size: int) -> int:
        d = self.cfg.data
        return len(
            EpochBatchSampler(
                size, d.batch_size, rank=self.dist.rank, world_size=self.dist.world_size
            )
        )

    def _check_stage_streams(self) -> None:
        """Every stage's stream must fill at least one batch on every process."""
        for stage, stream in enumerate(self.stage_streams):
            if stream is not None and self._batches_per_epoch(len(stream)) == 0:
                world = self.dist.world_size
                share = (
                    f" ({-(-len(stream) // world)} on each of {world} processes)"
                    if world > 1
                    else ""
                )
                raise PixelwiseError(
                    f"The {self.cfg.model.name} training stage that starts at iteration "
                    f"{self.stage_starts[stage]} draws from {len(stream)} training samples{share}, "
                    f"fewer than data.batch_size {self.cfg.data.batch_size}; "
                    "lower the batch size or label more images (data.labeled_fraction)."
                )

    def _stage_at(self, step: int) -> int:
        return sum(1 for start in self.stage_starts[1:] if start <= step)

    def _train_loader(self, step: int):
        """The batches from iteration ``step`` to the end of its epoch (of its stage's stream).

        A stage after the first draws its epochs with seeds of their own (``epoch`` offset by the
        stage), so its order is not the first stage's again.
        """
        d = self.cfg.data
        stage = self._stage_at(step)
        stream = self.stage_streams[stage]
        dataset = self.train_set if stream is None else Subset(self.train_set, list(stream))
        per_epoch = self.iters_per_epoch if stream is None else self._batches_per_epoch(len(stream))
        epoch, start = divmod(step - self.stage_starts[stage], per_epoch)
        sampler = EpochBatchSampler(
            len(dataset), d.batch_size, seed=self.cfg.train.seed, epoch=epoch + stage * _STAGE_EPOCHS,
            rank=self.dist.rank, world_size=self.dist.world_size, start=start,
        )  # fmt: skip
        return make_loader(
            dataset, self.train_transforms, sampler, d.num_workers,
            self.device.type == "cuda", collate_fn=self.task.collate,
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
        scores of the last evaluation (None when none ran)."""
        if self.dist.is_main:
            dump_config(self.cfg, self.run_dir / "config.yaml")
            self._write_run_json()
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        stop_at = self.total_iters if max_steps is None else min(max_steps, self.total_iters)
        last_scores: Report | None = None
        show = self.dist.is_main and self.progress is not False
        bar = tqdm(
            total=stop_at, initial=self.step, desc=self.cfg.name, dynamic_ncols=True,
            disable=None if self.progress is None else not show, leave=False,
        )  # fmt: skip
        self.net.train()
        self._losses = RunningMeans()
        seen, tick = 0, time.perf_counter()
        self.eval_seconds = 0.0
        with StopRequest() as stop:
            while self.step < stop_at and not stop.requested:
                for batch in self._train_loader(self.step):
                    inputs, targets = self.task.to_device(
                        batch, self.device, self.cfg.train.channels_last
                    )
                    skip = self.cfg.train.skip_nonfinite
                    self.task.step = self.step
                    result = self.task.train_step(
                        self.net, self.optimizer, self.scaler, inputs, targets,
                        amp=self.amp, skip_nonfinite=skip,
                    )  # fmt: skip
                    loss, stepped = result.loss, result.stepped
                    if not stepped and not skip:
                        raise PixelwiseError(
                            f"The loss became {loss} at step {self.step + 1} and the run stopped "
                            f"before updating; {self._kept()}; lower optim.lr (now "
                            f"{self.cfg.optim.lr}), check the labels, or set train.skip_nonfinite: true."
                        )
                    self._losses.add({"loss": loss, **result.terms})
                    lr = self.optimizer.param_groups[0]["lr"]
                    self.scheduler.step()
                    self.step += 1
                    seen += self.task.batch_size(inputs) * self.dist.world_size
                    if not stepped:
                        self.skipped += 1
                        if self.dist.is_main:
                            tqdm.write(
                                f"step {self.step}: loss or gradients not finite, batch skipped "
                                f"(train.skip_nonfinite; {self.skipped} so far)"
                            )
                    if self.step % self.cfg.train.log_every == 0 or self.step == stop_at:
                        self.check_finite()
                        speed = self.images_per_second(seen, tick)
                        terms = {"loss": loss, **result.terms}
                        bar.set_postfix(
                            {**{_short(k): f"{v:.4f}" for k, v in terms.items()},
                             "lr": f"{lr:.2e}", "img_s": f"{speed:.1f}"}
                        )  # fmt: skip
                        self._log_scalars(
                            {**{f"train/{k}": v for k, v in terms.items()},
                             "train/lr": lr, "train/images_per_s": speed}
                        )  # fmt: skip
                    bar.update(1)
                    end_of_epoch = self.step % self.iters_per_epoch == 0
                    if self._should_eval(end_of_epoch) and self.cfg.train.iters is not None:
                        last_scores = self.validate()
                    if self.step >= stop_at or stop.requested or self.step in self.stage_starts:
                        break  # a new stage draws from its own stream
                if self.cfg.train.epochs is not None and self.step % self.iters_per_epoch == 0:
                    if self._should_eval(True):
                        last_scores = self.validate()
            self.save("last.pt")
            self.interrupted = stop.requested
        bar.close()
        self.train_images_per_s = self.images_per_second(seen, tick)
        if self.writer is not None:
            self.writer.close()
        return last_scores

    def images_per_second(self, seen: int, since: float) -> float:
        """Training throughput since ``since``, leaving out the time spent evaluating."""
        return seen / max(1e-9, time.perf_counter() - since - self.eval_seconds)

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
            self.eval_seconds = getattr(self, "eval_seconds", 0.0) + time.perf_counter() - started

    def _validate(self) -> Report:
        report = (
            self.evaluator()
            .run(self.net, self.device, amp=self.amp, channels_last=self.cfg.train.channels_last)
            .report
        )
        if not self.dist.is_main:
            return report
        record = {"step": self.step, "epoch": self.step / self.iters_per_epoch, **report.as_dict()}
        # The training loss terms, averaged since the previous evaluation, beside the scores.
        record["train"] = self._losses.pop() if hasattr(self, "_losses") else {}
        self.history.append(record)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        self._log_scalars({f"val/{k}": v for k, v in report.scalars().items()})
        grid = self.prediction_picture()
        save_png(grid, self.run_dir / "predictions.png")
        if self.writer is not None:
            self.writer.add_image("val/predictions", grid, self.step, dataformats="HWC")
        summary = ", ".join(f"{k} {100 * v:.2f}" for k, v in list(report.scalars().items())[:1])
        tqdm.write(f"step {self.step}: val {summary}")
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


def _short(term: str) -> str:
    """A loss term's name for the progress bar: ``loss_classifier`` -> ``classifier``."""
    return term.removeprefix("loss_") if term != "loss" else term


def spread_indices(size: int, count: int) -> list[int]:
    """``count`` indices evenly spaced over ``range(size)``, first and last included."""
    count = min(count, size)
    if count <= 1:
        return list(range(count))
    return sorted({round(i * (size - 1) / (count - 1)) for i in range(count)})


# What a resumed run may change: how long it runs, how often it reports, where it reads its data
# and which device it runs on. Everything else comes from the checkpoint; a different value is
# refused, never recorded in the run's config and then not applied.
RESUME_MAY_CHANGE = (
    "train.iters", "train.epochs", "train.eval_every", "train.log_every", "train.vis_samples",
    "train.device", "data.num_workers", "data.root",
)  # fmt: skip


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key not in ("options", "val_options"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resume_config(config: Config, saved: dict[str, Any], source: str) -> None:
    """Refuse a resume whose config differs from the run's own outside :data:`RESUME_MAY_CHANGE`."""
    before = _flatten(config_from_dict(saved, f"the config in {source}").to_dict())
    after = _flatten(config.to_dict())
    differ = [k for k in after if after[k] != before.get(k) and k not in RESUME_MAY_CHANGE]
    if differ:
        shown = ", ".join(f"{k} {before.get(k)!r} -> {after[k]!r}" for k in differ[:5])
        more = f" and {len(differ) - 5} more" if len(differ) > 5 else ""
        raise PixelwiseError(
            f"--resume {source}: the config differs from the run's own in {shown}{more}; resume "
            f"with the run's config.yaml (only {', '.join(RESUME_MAY_CHANGE)} may change) or "
            "start a new run."
        )


def config_from_checkpoint(payload: dict[str, Any]) -> Config:
    return config_from_dict(payload["config"], "checkpoint config")


def print_scores(scores: Scores, classes: list[str]) -> None:
    print(format_scores(scores, classes))
