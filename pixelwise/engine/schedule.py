"""Optimizers and learning-rate schedules, stepped once per iteration.

pytorch-semseg's poly schedule computed its factor from ``last_epoch`` but was stepped per epoch
with a max of iterations, so it barely decayed; here every schedule is a function of the global
iteration, with ``unit: epoch`` schedules converted to iterations with the loader's length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from pixelwise.config import OptimConfig, ScheduleConfig


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg: OptimConfig) -> Optimizer:
    params = [p for p in params if p.requires_grad]  # frozen layers (FCN's deconvs) stay out
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if cfg.name == "adamw":
        return torch.optim.AdamW(
            params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
        )
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(
            params, lr=cfg.lr, alpha=cfg.alpha, eps=cfg.eps, momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )  # fmt: skip
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def lr_factor(
    cfg: ScheduleConfig, step: int, total_iters: int, iters_per_epoch: int, base_lr: float
) -> float:
    """Multiplier of the base learning rate at iteration ``step`` (0-based, before the update)."""
    if step < cfg.warmup_iters:
        alpha = step / cfg.warmup_iters
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    unit = iters_per_epoch if cfg.unit == "epoch" else 1
    progress = min(step, total_iters) / max(1, total_iters)
    if cfg.name == "poly":
        decay = (1 - progress) ** cfg.power
    elif cfg.name == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.name == "step":
        decay = cfg.gamma ** (step // max(1, cfg.step_size * unit))
    elif cfg.name == "multistep":
        decay = cfg.gamma ** sum(step >= m * unit for m in cfg.milestones)
    elif cfg.name == "exponential":
        decay = cfg.gamma ** (step / unit)
    elif cfg.name == "constant":
        decay = 1.0
    else:
        raise ValueError(f"unknown schedule {cfg.name!r}")
    floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
    return warm * (floor + (1 - floor) * decay)


def build_scheduler(
    optimizer: Optimizer,
    cfg: ScheduleConfig,
    total_iters: int,
    iters_per_epoch: int,
    stage_starts: Sequence[int] = (0,),
) -> LambdaLR:
    """The schedule over ``total_iters``; with several ``stage_starts`` it runs once per stage
    (warm-up included), as separate runs of each stage would."""
    base_lr = optimizer.param_groups[0]["lr"]
    bounds = [*sorted(stage_starts), total_iters]

    def factor(step: int) -> float:
        start, end = next((a, b) for a, b in pairwise(bounds) if step < b or b == total_iters)
        return lr_factor(cfg, step - start, end - start, iters_per_epoch, base_lr)

    return LambdaLR(optimizer, factor)
