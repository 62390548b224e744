"""Whether ``predict``'s images are far from the scale their network was trained at.

A fully convolutional network takes an image of any size, but it learned objects at the sizes
its training images showed them: a network trained on 64×64 pictures sees a 3840×2160 photo's
objects 34 times larger than anything it learned, and labels them badly without any error.
``pixelwise predict`` does what evaluation does and what the papers report: it resizes to
``data.resize`` when the run trained with it, and otherwise segments each image at its own size.
It does not rescale an image on its own (the run's evaluation, to which predict must stay
equal, did not); it warns once when the sizes are far apart and names the ``--scales`` that
brings them together.

What the run recorded decides the training scale (:func:`training_scale`), in this order:

1. ``data.resize``: every training image was resized to it, and predict resizes to it too;
2. ``meta["train_image_size"]``, the training images' (H, W), when the checkpoint holds it;
3. the dataset's own ``image_size`` option (the generated ``shapes``): the value the run gave it
   in ``data.options``, else the dataset's default;
4. ``data.crop_size``: the training images were at least this large, so only an image far
   *smaller* is known to be off.

``data.scale_range`` widens each of these: training saw the short side times every factor in it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pixelwise.config import Config
from pixelwise.errors import PixelwiseError

#: How many times larger or smaller than the training scale an image's short side must be (as
#: the network sees it, after data.resize and --scales) before predict warns.
FAR = 4.0


@dataclass(frozen=True)
class TrainingScale:
    """The image size a network was trained at, and where that was read.

    Attributes:
        size: (H, W) of the training images, before ``data.scale_range``.
        source: where ``size`` comes from, in a config's words (``data.resize [360, 480]``).
        scale_range: the smallest and largest factor training scaled ``size`` by.
        resized: predict resizes every image to ``size`` first (``data.resize``).
        lower_bound: ``size`` is a crop's: the training images were at least this large, so an
            image larger than it may still be at the training scale.
    """

    size: tuple[int, int]
    source: str
    scale_range: tuple[float, float] = (1.0, 1.0)
    resized: bool = False
    lower_bound: bool = False

    @property
    def short_side(self) -> int:
        return min(self.size)

    def far(self, seen: float) -> float | None:
        """How many times ``seen`` (a short side the network is given) is larger (above 1) or
        smaller (below 1) than :attr:`short_side`, when it is more than :data:`FAR` times
        outside the sides training saw; None when it is not."""
        low, high = (self.short_side * s for s in self.scale_range)
        if seen < low / FAR or (seen > high * FAR and not self.lower_bound):
            return seen / self.short_side
        return None


def training_scale(config: Config, meta: dict[str, Any]) -> TrainingScale | None:
    """The scale the checkpoint of ``config`` and ``meta`` was trained at (see the module
    docstring for the order), or None when it recorded nothing that tells."""
    d = config.data
    scale_range = _scale_range(d.scale_range)
    if _is_size(d.resize):
        size = (int(d.resize[0]), int(d.resize[1]))
        return TrainingScale(size, f"data.resize {list(size)}", scale_range, resized=True)
    recorded = meta.get("train_image_size")
    if _is_size(recorded):
        size = (int(recorded[0]), int(recorded[1]))
        return TrainingScale(size, "its training images", scale_range)
    option = _dataset_image_size(d.dataset, d.split_options(d.train_split))
    if option is not None:
        return TrainingScale(option, f"the {d.dataset} dataset's image_size", scale_range)
    if _is_size(d.crop_size):
        size = (int(d.crop_size[0]), int(d.crop_size[1]))
        return TrainingScale(size, "data.crop_size", scale_range, lower_bound=True)
    return None


def far_images(
    sizes: dict[int, tuple[int, int]], scale: TrainingScale, scales: Sequence[float]
) -> dict[int, float]:
    """Of the images of ``sizes`` (index → (H, W)), those whose short side, as the network sees
    it at some factor of ``scales`` (after ``data.resize``), is far from ``scale``: index → how
    many times the training short side it is at its farthest. An image that a scale shrinks
    below one pixel is left out: predict refuses it with its own sentence."""
    found: dict[int, float] = {}
    for i, (h, w) in sizes.items():
        base = scale.short_side if scale.resized else min(h, w)
        if round(base * min(scales)) < 1:
            continue
        factors = [f for s in scales if (f := scale.far(base * s)) is not None]
        if factors:
            found[i] = max(factors, key=lambda f: abs(math.log(f)))
    return found


def scale_warning(
    images: Sequence[Path],
    sizes: dict[int, tuple[int, int]],
    scale: TrainingScale | None,
    scales: Sequence[float] = (1.0,),
) -> str | None:
    """One line (without ``warning:``) saying how many of ``images`` are far from the scale the
    network was trained at, what predict does with them and the fix; None when none is.

    Args:
        images: every input of the command, for the count and the names.
        sizes: (H, W) of the inputs that will be segmented, by index into ``images``.
        scale: :func:`training_scale` of the checkpoint; None warns of nothing.
        scales: the ``--scales`` asked.
    """
    if scale is None:
        return None
    far = far_images(sizes, scale, scales)
    if not far:
        return None
    trained = f"{scale.size[0]}x{scale.size[1]}"
    count = f"{len(far)} of {len(sizes)} images" if len(sizes) > 1 else "the image"
    asked = "" if tuple(scales) == (1.0,) else f" times --scales {' '.join(map(_number, scales))}"
    if scale.resized:
        # Every image is resized to data.resize: only --scales can move it off that scale.
        factor = next(iter(far.values()))
        seen = round(scale.short_side * factor)
        return (
            f"--scales {_number(min(scales) if factor < 1 else max(scales))} shows the network "
            f"{count} at a short side of {seen} pixels, {_times(factor)} than the {trained} "
            f"it was trained at: predict resizes each image to {scale.source} first, as training "
            "did, so give --scales near 1 (e.g. 0.75 1 1.25)."
        )
    first = min(far)
    h, w = sizes[first]
    factor = far[first]
    suggested = _number(scale.short_side / min(h, w))
    trained_as = (
        f"the {trained} crops it was trained on ({scale.source}; its images were at least that)"
        if scale.lower_bound
        else f"its {trained} training images ({scale.source})"
    )
    verb = "are" if len(sizes) > 1 else "is"
    return (
        f"{count} {verb} far from the scale the network was trained at: {images[first]} is "
        f"{h}x{w} pixels, its objects {_times(factor)} than in {trained_as}; predict segments "
        f"each image at its own size{asked}, so pass --scales {suggested} (a short side of about "
        f"{scale.short_side} pixels{' for that image' if len(far) > 1 else ''}) or resize the "
        "images, or train with data.resize, which predict then applies too."
    )


def _times(factor: float) -> str:
    ratio = factor if factor >= 1 else 1 / factor
    text = f"{ratio:.0f}" if ratio >= 10 else f"{ratio:.1f}"
    return f"{text}x {'larger' if factor >= 1 else 'smaller'}"


def _number(value: float) -> str:
    """``value`` to two significant digits, as a user would type it (0.03, 2.5, 120)."""
    return f"{float(f'{value:.2g}'):g}"


def _is_size(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    )


def _scale_range(value: Any) -> tuple[float, float]:
    try:
        low, high = sorted(float(v) for v in value)
    except (TypeError, ValueError):
        return (1.0, 1.0)
    return (low, high) if low > 0 else (1.0, 1.0)


def _dataset_image_size(name: str, options: dict[str, Any]) -> tuple[int, int] | None:
    """The ``image_size`` the dataset ``name`` generates its images at, for a dataset that takes
    that option (the run's value, else the option's default); None for any other dataset."""
    from pixelwise.data import dataset_class

    try:
        parameter = inspect.signature(dataset_class(name).__init__).parameters.get("image_size")
    except PixelwiseError:  # a dataset this pixelwise does not have
        return None
    if parameter is None:
        return None
    value = options.get("image_size", parameter.default)
    return (int(value[0]), int(value[1])) if _is_size(value) else None
