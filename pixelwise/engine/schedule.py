"""Optimizers and learning-rate schedules, stepped once per iteration.

pytorch-semseg's poly schedule computed its factor from ``last_epoch`` but was stepped per epoch
with a max of iterations, so it barely decayed; here every schedule is a function of the global
iteration, with ``unit: epoch`` schedules converted to iterations with the loader's length.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from pixelwise.config import OptimConfig, ScheduleConfig
from pixelwise.errors import PixelwiseError

# Normalisation layers: their scale and shift are one kind for optim.param_groups (``norm``).
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups under ``optim.param_groups`` (Caffe's per-layer
    ``lr_mult``/``decay_mult``): each trainable parameter takes the first rule it matches —
    ``bias`` (the bias of a layer that is not a normalisation), ``norm`` (a normalisation
    layer's scale and shift), or a pattern of parameter names (``backbone.*``, fnmatch) — and a
    group's lr and weight decay are the config's times the rule's multipliers (1 without a rule).
    The group of the unmatched parameters comes first, so its lr is the one a run logs.

    Raises:
        PixelwiseError: for a rule that matches no parameter (a name pattern of another network).
    """
    rules = cfg.param_groups
    kinds = _parameter_kinds(model)
    chosen: dict[tuple[float, float], list[nn.Parameter]] = {(1.0, 1.0): []}
    matched = [0] * len(rules)
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:  # frozen layers (FCN's fixed deconvs) stay out
            continue
        key = (1.0, 1.0)
        for index, rule in enumerate(rules):
            if _matches(rule["params"], name, kinds[name]):
                key = (float(rule.get("lr_mult", 1.0)), float(rule.get("decay_mult", 1.0)))
                matched[index] += 1
                break
        chosen.setdefault(key, []).append(parameter)
    for index, count in enumerate(matched):
        if count == 0:
            names = [n for n, p in model.named_parameters() if p.requires_grad][:3]
            raise PixelwiseError(
                f"optim.param_groups[{index}]: params {rules[index]['params']!r} matches no "
                f"trainable parameter of this network (named like {', '.join(names)}); use bias, "
                "norm or a pattern of its parameter names."
            )
    return [
        {"params": params, "lr": cfg.lr * lr_mult, "weight_decay": cfg.weight_decay * decay_mult,
         "lr_mult": lr_mult, "decay_mult": decay_mult}
        for (lr_mult, decay_mult), params in chosen.items()
        if params
    ]  # fmt: skip


def _parameter_kinds(model: nn.Module) -> dict[str, str]:
    kinds = {}
    for module_name, module in model.named_modules():
        for name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{name}" if module_name else name
            if isinstance(module, _NORMS):
                kinds[full] = "norm"
            else:
                kinds[full] = "bias" if name == "bias" else "weight"
    return kinds


def _matches(pattern: str, name: str, kind: str) -> bool:
    if pattern in ("bias", "norm"):
        return kind == pattern
    return fnmatch.fnmatchcase(name, pattern)


def build_optimizer(
    params: nn.Module | Iterable[torch.nn.Parameter], cfg: OptimConfig
) -> Optimizer:
    """The optimizer of ``cfg`` over a network (with ``optim.param_groups`` applied, see
    :func:`param_groups`) or over plain parameters (one group)."""
    if isinstance(params, nn.Module):
        params = param_groups(params, cfg)
    else:
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
