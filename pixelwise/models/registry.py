"""The model table: ``@register_model`` in each paper's file fills it, ``build_model`` reads it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from pixelwise.errors import PixelwiseError
from pixelwise.registry import Registry


@dataclass(frozen=True)
class ModelInfo:
    """What ``pixelwise models`` shows for a registered network.

    Attributes:
        name: registry name, e.g. ``"fcn8s"``.
        builder: keyword-only function returning the ``nn.Module``.
        paper: short citation, e.g. ``"Long et al., Fully Convolutional Networks (arXiv:1411.4038)"``.
        year: publication year.
        input_size: (H, W) at which the paper reports its FLOPs / runs its experiments.
        num_classes: the class count of the paper's setting (used for the reference counts).
        in_channels: the input channels of the paper's setting (3 except the original U-Net).
        task: what the network does and so how the engine trains and scores it: ``"semantic"``
            (logits per pixel), ``"instance"`` (torchvision detection targets and outputs), or a
            semi-supervised task's name; see :mod:`pixelwise.tasks`.
    """

    name: str
    builder: Callable[..., nn.Module]
    paper: str
    year: int
    input_size: tuple[int, int]
    num_classes: int
    in_channels: int = 3
    task: str = "semantic"


MODELS: Registry[ModelInfo] = Registry("model")


def register_model(
    name: str,
    *,
    paper: str,
    year: int,
    input_size: tuple[int, int],
    num_classes: int,
    in_channels: int = 3,
    task: str = "semantic",
):
    """Register a builder under ``name`` with the paper's metadata; returns the builder unchanged."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS.add(
            name,
            ModelInfo(
                name, builder, paper, year, tuple(input_size), num_classes, in_channels, task
            ),
        )
        return builder

    return wrap


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered network. Unknown names and keyword arguments raise with the valid ones."""
    info = MODELS.get(name)
    accepted = inspect.signature(info.builder).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        valid = ", ".join(p for p in accepted if p != "num_classes") or "none"
        raise PixelwiseError(
            f"Model {name!r} does not take {', '.join(unknown)}; its options are: {valid}."
        )
    return info.builder(num_classes=num_classes, **kwargs)


def list_models() -> list[str]:
    return MODELS.names()


def model_info(name: str) -> ModelInfo:
    return MODELS.get(name)
