"""The model table: ``@register_model`` in each paper's file fills it, ``build_model`` reads it."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from pixelwise.errors import PixelwiseError
from pixelwise.registry import Registry
from pixelwise.values import TypeMismatch, coerce, describe


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
    """Build a registered network. Unknown names, keyword arguments and values of the wrong type
    raise with the valid ones."""
    problem = option_problem(name, kwargs)
    if problem is not None:
        raise PixelwiseError(f"Model {name!r} {problem}.")
    return MODELS.get(name).builder(num_classes=num_classes, **kwargs)


def option_problem(name: str, options: Mapping[str, Any]) -> str | None:
    """What is wrong with builder ``options`` for the registered network ``name``, as the end of a
    sentence that starts with the network's name, or None when nothing is.

    An option must be a parameter of the builder, and its value must fit the parameter's type
    hint as a config value does (:func:`pixelwise.values.coerce`: an int where a float is asked
    is fine, a word or a bool where an int is asked is not). A hint the value checker cannot read
    (a torchvision weights enum) is left to the builder.

    Raises:
        PixelwiseError: for a name that is not registered (listing the registered ones).
    """
    builder = MODELS.get(name).builder
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        valid = ", ".join(p for p in accepted if p != "num_classes") or "none"
        return f"does not take {', '.join(map(str, unknown))}; its options are: {valid}"
    hints = typing.get_type_hints(builder)
    for key, value in options.items():
        if key not in hints:
            continue
        try:
            coerce(value, hints[key], None)
        except TypeMismatch:
            wanted = describe(hints[key], None)
            default = accepted[key].default
            fix = (
                f"give it {wanted}"
                if default is inspect.Parameter.empty
                else f"write it like {key}: {default!r} (its default)"
            )
            return f"takes {key} as {wanted}, not {value!r}; {fix}"
        except TypeError:  # a hint beyond config values; the builder checks it
            continue
    return None


def list_models() -> list[str]:
    return MODELS.names()


def model_info(name: str) -> ModelInfo:
    return MODELS.get(name)
