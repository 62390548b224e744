"""What one released weight file is, and how its input is prepared.

A release is data: which pixelwise network (and options) computes the authors' function, which
reader opens the file, the mapping from the file's layers to the network's state dict, and the
input convention the authors' own code used. One small file per release in ``convert/releases/``
defines a ``RELEASE`` of this type; ``convert/zoo.py`` collects them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

# How the release's own code fed images to its network. pixelwise images arrive as RGB in [0, 1]
# and are normalised with data.mean/data.std. Caffe's BGR 0-255 with a mean subtracted is the same
# function when the first convolution's input channels are reversed at conversion and
# mean = mean_bgr[::-1] / 255, std = 1 / 255; so every convention ends as a (mean, std) pair in
# RGB [0, 1] units, which eval, predict, export and compare already apply from the checkpoint.


@dataclass(frozen=True)
class InputConvention:
    """The release's preprocessing. ``channels`` is the order its first layer expects; ``scale``
    the value of a full-intensity pixel (255 for Caffe, 1 for torch7); ``mean`` and ``std`` are in
    that order and scale, as the release's code writes them."""

    channels: str  # "bgr" or "rgb"
    scale: float  # 255.0 or 1.0
    mean: tuple[float, float, float]
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def rgb_unit_mean_std(self) -> tuple[list[float], list[float]]:
        """The same normalisation as data.mean/data.std on RGB images in [0, 1]."""
        order = [2, 1, 0] if self.channels == "bgr" else [0, 1, 2]
        mean = [self.mean[i] / self.scale for i in order]
        std = [self.std[i] / self.scale for i in order]
        return mean, std


@dataclass(frozen=True)
class Figure:
    """A reported score: who reported it, on what, and how."""

    source: str  # "paper" or "release" (the authors' README/model zoo)
    metric: str  # "mIoU", "pixel accuracy", ...
    value: float
    dataset: str
    split: str
    input_size: str  # e.g. "500x500 (whole image)", "713x713 crops, sliding"
    scales: str  # "single-scale" or "multi-scale (0.5..1.75) + flip"


@dataclass(frozen=True)
class Release:
    """One authors' weight file and how to turn it into a pixelwise checkpoint."""

    name: str  # the zoo name, e.g. "pspnet50-ade20k"
    model: str  # pixelwise registry name
    model_options: dict[str, Any]
    num_classes: int
    dataset: str  # pixelwise dataset name whose classes/palette the checkpoint carries
    format: str  # "caffe", "t7", "npz" or "mat"
    # The file as it is read: a parsed object (Caffe blobs by layer, a torch7 tree, a list of
    # arrays, a MatConvNet params table) -> the network's state dict.
    to_state_dict: Callable[[Any, torch.nn.Module], dict[str, torch.Tensor]]
    input: InputConvention
    file_name: str
    url: str | None  # None where the authors publish no direct link (then `where` says how)
    sha256: str | None  # None where unpublished; `size` is then the check the zoo can make
    size: int | None
    licence: str
    where: str  # one sentence: where the file is published and, offline, where to put it
    figures: tuple[Figure, ...] = field(default_factory=tuple)
    needs_prototxt: bool = False  # a release whose layer order the weights alone do not give
    input_size: tuple[int, int] | None = None  # the size the release evaluated at, H x W
    eval_split: str = "val"  # the pixelwise split its figure is scored on (docs/model-zoo.md)
    # `pixelwise eval` options that follow the release's own protocol (sliding window, stride).
    eval_options: tuple[str, ...] = ()
    # Where pixelwise's evaluation cannot follow the release's protocol, in a sentence or two.
    protocol_note: str = ""
