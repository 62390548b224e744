"""A training run built from a config in one function: :func:`build_run`.

Everything the loop (:class:`~pixelwise.engine.train.Trainer`) works with is built here, in this
order: the process group and device, the seeds, the datasets, the task, the model (SyncBatchNorm,
channels_last), the task's own parts, the optimizer, the schedule with its stages, the precision
and its GradScaler, the run folder, the DDP / compiled wrapper, and — with ``resume`` — the state
of the checkpoint. The loop then only trains.
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pixelwise.config import Config, config_from_dict
from pixelwise.data import build_dataset
from pixelwise.data.subset import save_labeled_list
from pixelwise.engine.checkpoint import check_compatible, load_checkpoint, restore_rng
from pixelwise.engine.distributed import DistInfo, init_distributed, main_first, resolve_device
from pixelwise.engine.loader import EpochBatchSampler
from pixelwise.engine.precision import Precision, decide_precision
from pixelwise.engine.provenance import run_record
from pixelwise.engine.rundir import drop_metrics_after, foreign_folder_reason, new_run_dir
from pixelwise.engine.schedule import build_optimizer, build_scheduler
from pixelwise.engine.sync_bn import convert_sync_batchnorm
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model
from pixelwise.models.registry import MODELS
from pixelwise.tasks import build_task
from pixelwise.tasks.base import Task

# What a resumed run may change: how long it runs, how often it reports, where it reads its data
# and which device it runs on. Everything else comes from the checkpoint; a different value is
# refused, never recorded in the run's config and then not applied.
RESUME_MAY_CHANGE = (
    "train.iters", "train.epochs", "train.eval_every", "train.log_every", "train.vis_samples",
    "train.device", "data.num_workers", "data.root",
)  # fmt: skip


@dataclass
class Run:
    """The built parts of one training run (see the module docstring).

    ``step`` and ``best_score`` are where the run starts: 0 and -inf, or the checkpoint's.
    """

    config: Config
    dist: DistInfo
    device: torch.device
    train_set: Any
    val_set: Any
    classes: list[str]
    num_classes: int
    task: Task
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    precision: Precision
    scaler: torch.amp.GradScaler
    iters_per_epoch: int
    total_iters: int
    stage_starts: list[int]
    stage_streams: list[Any]
    run_dir: Path
    run_info: dict[str, Any]
    step: int = 0
    best_score: float = -math.inf
    #: The checkpoint this run was resumed from (None for a first start).
    resumed_from: Path | None = None
    #: Whether this start made ``run_dir`` (a new folder), rather than continuing in its own one.
    made_folder: bool = False

    def batches_per_epoch(self, size: int) -> int:
        """Batches per epoch of a ``size``-sample stream on each process."""
        return batches_per_epoch(size, self.config.data.batch_size, self.dist)


def batches_per_epoch(size: int, batch_size: int, dist: DistInfo) -> int:
    sampler = EpochBatchSampler(size, batch_size, rank=dist.rank, world_size=dist.world_size)
    return len(sampler)


def build_datasets(cfg: Config) -> tuple[Any, Any]:
    """The training and validation splits, each read with the options the config gives it."""
    d = cfg.data
    train = build_dataset(d.dataset, d.root, split=d.train_split, **d.split_options(d.train_split))
    val = build_dataset(d.dataset, d.root, split=d.val_split, **d.split_options(d.val_split))
    if len(train) == 0:
        raise PixelwiseError(
            f"Dataset {d.dataset!r} split {d.train_split!r} under {d.root} holds no samples; "
            "check data.root."
        )
    return train, val


def build_run(
    config: Config,
    *,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
) -> Run:
    """Build every part of a run of ``config``; with ``resume`` (a ``last.pt``) restored to it.

    Args:
        config: the run configuration.
        run_dir: where to write; default a new folder ``train.out_dir/name``.
        resume: a ``last.pt`` to continue from: in its own run folder when the folder is that
            run's (see :func:`~pixelwise.engine.rundir.foreign_folder_reason`), else in a new
            folder ``train.out_dir/name``; files of another run are never written over.

    Everything that can be refused is checked before the run folder is made, so a refused run
    leaves nothing behind.
    """
    dist = init_distributed(config.train.device)
    device = resolve_device(config.train.device, dist)
    checkpoint = load_checkpoint(resume) if resume else None
    if checkpoint is not None:
        check_resume_config(config, checkpoint["config"], str(resume))
    torch.manual_seed(config.train.seed)
    np.random.seed(config.train.seed)

    train_set, val_set = build_datasets(config)
    classes = list(train_set.classes)
    num_classes = config.model.num_classes or train_set.num_classes
    if num_classes != train_set.num_classes:
        raise PixelwiseError(
            f"model.num_classes is {num_classes} but {config.data.dataset} has "
            f"{train_set.num_classes} classes; remove model.num_classes or fix it."
        )
    task = build_task(
        config, num_classes, classes, train_set.palette,
        category_ids=getattr(train_set, "category_ids", ()),
    )  # fmt: skip
    # The labelled subset (data.labeled_fraction / labeled_list), as the task learns from it.
    train_set = task.train_dataset(train_set)

    model = _build_model(config, num_classes, dist, device)
    if (config.model.init or config.model.weights) and checkpoint is None:
        init_weights(model, config, num_classes)  # a resume restores its own weights instead
    precision = decide_precision(config.train.amp, device)
    if precision.note and dist.is_main:
        print(f"train.amp: {precision.note}")
    task.setup(model, device, train_set, precision)
    optimizer = build_optimizer(model, config.optim)
    d, t = config.data, config.train
    per_epoch = batches_per_epoch(len(train_set), d.batch_size, dist)
    if per_epoch == 0:
        raise PixelwiseError(
            f"data.batch_size {d.batch_size} is larger than the {len(train_set)} training "
            "samples; lower the batch size."
        )
    total_iters = t.iters if t.iters is not None else t.epochs * per_epoch
    if checkpoint is not None:
        check_resume_length(config, int(checkpoint["step"]), total_iters, per_epoch, str(resume))
    stage_starts = task.stage_starts(total_iters)
    stage_streams = [task.stage_samples(stage, train_set) for stage in range(len(stage_starts))]
    _check_stage_streams(config, stage_starts, stage_streams, dist)
    scheduler = build_scheduler(optimizer, config.schedule, total_iters, per_epoch, stage_starts)

    run = Run(
        config=config, dist=dist, device=device, train_set=train_set, val_set=val_set,
        classes=classes, num_classes=num_classes, task=task, model=model, net=model,
        optimizer=optimizer, scheduler=scheduler, precision=precision,
        scaler=precision.grad_scaler(), iters_per_epoch=per_epoch, total_iters=total_iters,
        stage_starts=stage_starts, stage_streams=stage_streams, run_dir=Path("."), run_info={},
    )  # fmt: skip
    if checkpoint is not None:
        restore(run, checkpoint, str(resume))
        run.resumed_from = Path(resume)
    if dist.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        run.net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if t.compile:
        run.net = torch.compile(run.net)
    run.run_info = run_record(
        device=device, world_size=dist.world_size, batch_per_process=d.batch_size, seed=t.seed,
        step=run.step,
    )  # fmt: skip
    run.run_info["amp"] = precision.enabled
    run.run_info["precision"] = precision.name
    if run.resumed_from is not None:
        run.run_info["resumed_from"] = str(run.resumed_from)
    # The last thing built: nothing after this can refuse the run.
    place_run_folder(run, run_dir, checkpoint)
    if dist.is_main:  # which images kept their pixel labels, when only some did
        save_labeled_list(run.train_set, run.config, run.run_dir)
    return run


def place_run_folder(
    run: Run, run_dir: str | Path | None, checkpoint: dict[str, Any] | None
) -> None:
    """Set ``run.run_dir``: the folder given, the resumed run's own folder, or a new one.

    Only the main process writes; the others keep a folder name they never write into.
    """
    t = run.config.train
    if not run.dist.is_main:
        run.run_dir = Path(run_dir or t.out_dir)
        return
    if run_dir is not None:  # the caller's own folder (compare, tests)
        run.run_dir = Path(run_dir)
        run.made_folder = not run.run_dir.exists()
        run.run_dir.mkdir(parents=True, exist_ok=True)
        return
    if checkpoint is not None and run.resumed_from is not None:
        reason = foreign_folder_reason(run.resumed_from, checkpoint["meta"].get("run"))
        if reason is None:  # the run's own folder: continue it, without the rows after the step
            run.run_dir = run.resumed_from.parent
            drop_metrics_after(run.run_dir, run.step)
            return
        run.run_dir = new_run_dir(t.out_dir, run.config.name)
        run.made_folder = True
        print(
            f"--resume {run.resumed_from}: continuing in a new run folder {run.run_dir}, since "
            f"{reason}; nothing in {run.resumed_from.parent} is changed."
        )
        return
    run.run_dir = new_run_dir(t.out_dir, run.config.name)
    run.made_folder = True


def check_resume_length(
    config: Config, step: int, total_iters: int, per_epoch: int, source: str
) -> None:
    """Refuse a resume whose run length ends before the checkpoint's step, before anything is
    written: it would train for nothing and record a shorter run than the one made."""
    if step <= total_iters:
        return
    t = config.train
    if t.iters is not None:
        raise PixelwiseError(
            f"--resume {source}: the run already did {step} iterations but train.iters is "
            f"{t.iters}; give train.iters greater than {step} to train on (or drop --resume)."
        )
    raise PixelwiseError(
        f"--resume {source}: the run already did {step} iterations ({step / per_epoch:.1f} epochs) "
        f"but train.epochs is {t.epochs}; give train.epochs greater than {step // per_epoch} to "
        "train on (or drop --resume)."
    )


def _build_model(
    config: Config, num_classes: int, dist: DistInfo, device: torch.device
) -> nn.Module:
    model = build_model(
        config.model.name,
        num_classes,
        **config.model.options,
        # A weights name or path is resolved (and downloaded) by models.backbones.
        **({"weights_backbone": config.model.weights_backbone}
           if config.model.weights_backbone else {}),
    ).to(device)  # fmt: skip
    if config.train.sync_bn and dist.world_size > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:  # torch's SyncBatchNorm runs on CUDA only; ours all-reduces under gloo
            model = convert_sync_batchnorm(model)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def init_weights(model: nn.Module, config: Config, num_classes: int) -> None:
    """Start ``model`` from the network weights of the checkpoint ``model.init``, or of the zoo
    release ``model.weights`` once converted (:func:`~pixelwise.convert.hub.zoo_checkpoint`)."""
    if config.model.weights:
        source, label, fix = _release_checkpoint(config, num_classes)
    else:
        source = config.model.init
        label = f"model.init {source}"
        fix = "the checkpoint was trained with (its config.yaml) or another checkpoint"
    payload = load_checkpoint(source)
    check_compatible(payload["meta"], config.model.name, num_classes, source)
    weights = payload["model"]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    reshaped = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or reshaped:
        first = (missing or unexpected or reshaped)[0]
        what = "lacks" if missing else "has an extra" if unexpected else "has another shape for"
        raise PixelwiseError(
            f"{label} {what} the weight {first!r} of the network the config builds "
            f"({config.model.name} with options {config.model.options}); give model.options as "
            f"{fix}."
        )
    _check_same_options(payload["meta"].get("model_options", {}), config, label, fix)
    model.load_state_dict(weights)


def _release_checkpoint(config: Config, num_classes: int) -> tuple[str, str, str]:
    """The converted checkpoint of ``model.weights``, how messages name it and the options fix.

    The config is checked against the release first, so that one that cannot use it downloads
    nothing (a Caffe PSPNet needs ``caffe: true``, which changes no weight's name or shape).
    """
    from pixelwise.convert.hub import zoo_checkpoint  # here: runs without it never import it
    from pixelwise.convert.zoo import get_release

    release = get_release(config.model.weights, flag="model.weights")
    label = f"model.weights {release.name}"
    shown = ", ".join(f"{k}: {json.dumps(v)}" for k, v in release.model_options.items())
    fix = f"the release needs, model.options={{{shown}}} (docs/model-zoo.md)"
    if (release.model, release.num_classes) != (config.model.name, num_classes):
        raise PixelwiseError(
            f"model.weights {release.name} is {release.model} with {release.num_classes} classes ({release.dataset}), "
            f"but the config builds {config.model.name} with {num_classes}; set "
            f"model.name={release.model} and model.options={{{shown}}} with a dataset of "
            f"{release.num_classes} classes, or choose another release."
        )
    _check_same_options(release.model_options, config, label, fix)
    # Under torchrun rank 0 downloads and converts; the others then find the converted file.
    return str(main_first(lambda: zoo_checkpoint(release.name))), label, fix


def _check_same_options(
    saved_options: dict[str, Any], config: Config, label: str, fix: str
) -> None:
    """Refuse an option that changes what the weights compute but not their names or shapes
    (a converted Caffe PSPNet's ``caffe: true``, a U-Net's padding), defaults filled in."""
    builder = inspect.signature(MODELS.get(config.model.name).builder).parameters
    defaults = {
        k: p.default for k, p in builder.items() if p.default is not inspect.Parameter.empty
    }
    ignored = {"num_classes", "weights", "weights_backbone"}
    saved = {**defaults, **saved_options}
    asked = {**defaults, **config.model.options}
    for key in sorted((set(saved) | set(asked)) - ignored):
        if saved.get(key) != asked.get(key):
            raise PixelwiseError(
                f"{label} was trained with {config.model.name} option {key}: "
                f"{saved.get(key)!r}, the config asks for {asked.get(key)!r}; give model.options "
                f"as {fix}."
            )


def _check_stage_streams(
    config: Config, starts: list[int], streams: list[Any], dist: DistInfo
) -> None:
    """Every stage's stream must fill at least one batch on every process."""
    batch = config.data.batch_size
    for stage, stream in enumerate(streams):
        if stream is not None and batches_per_epoch(len(stream), batch, dist) == 0:
            world = dist.world_size
            share = (
                f" ({-(-len(stream) // world)} on each of {world} processes)" if world > 1 else ""
            )
            raise PixelwiseError(
                f"The {config.model.name} training stage that starts at iteration "
                f"{starts[stage]} draws from {len(stream)} training samples{share}, "
                f"fewer than data.batch_size {batch}; "
                "lower the batch size or label more images (data.labeled_fraction)."
            )


def restore(run: Run, payload: dict[str, Any], source: str) -> None:
    """Put the checkpoint ``payload``'s model, optimizer, schedule, scaler, task state, RNG,
    step and best score into ``run``."""
    check_compatible(payload["meta"], run.config.model.name, run.num_classes, source)
    run.model.load_state_dict(payload["model"])
    run.optimizer.load_state_dict(payload["optimizer"])
    run.scheduler.load_state_dict(payload["scheduler"])
    run.scaler.load_state_dict(payload["scaler"])
    run.step = int(payload["step"])
    run.best_score = float(payload["best_score"])
    run.task.load_state_dict(payload.get("task", {}))
    restore_rng(payload["rng"])
    # The restored learning rate is the old schedule's; with a changed train.iters/epochs the
    # schedule is the new one from this step on (LambdaLR's own formula, so unchanged runs match).
    scheduler = run.scheduler
    for group, base, factor in zip(
        run.optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
    ):
        group["lr"] = base * factor(scheduler.last_epoch)


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
