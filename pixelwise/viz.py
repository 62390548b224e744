"""Pictures: palette colouring, overlays, prediction grids and confusion-matrix plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pixelwise.data.base import IGNORE_INDEX
from pixelwise.outputs import write_with

IGNORE_COLOUR = (255, 255, 255)


def palette_array(palette: Sequence[Sequence[int]]) -> np.ndarray:
    """256×3 uint8 lookup: the class colours, white for ignore (255), black for the rest."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    table[IGNORE_INDEX] = IGNORE_COLOUR
    return table


def colorize(mask: Tensor | np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """H×W class ids -> H×W×3 uint8 RGB."""
    ids = mask.cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    return palette_array(palette)[np.clip(ids, 0, 255).astype(np.uint8)]


def denormalise(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A normalised 3×H×W float tensor back to H×W×3 uint8 for display."""
    x = image.detach().float().cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(
        3, 1, 1
    )
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


#: How much of a class's colour an overlay mixes into the photo: each tinted pixel becomes
#: ``round((1 - OVERLAY_ALPHA) * photo + OVERLAY_ALPHA * colour)``, channel by channel.
OVERLAY_ALPHA = 0.5
#: Class names that mean "none of the classes" (VOC's and COCO's 'background'; 'void' and
#: 'unlabeled' where a user's folder dataset keeps them as classes): an overlay leaves their pixels
#: as the photo, so an object's own colour is never read as a class, and the photo is not darkened
#: by a background painted black.
UNTINTED_NAMES = ("background", "void", "unlabeled", "unlabelled")


def untinted_ids(classes: Sequence[str]) -> list[int]:
    """The ids of the classes an overlay leaves as the photo: those named as in
    :data:`UNTINTED_NAMES` (any case). Ignore (255) is always left as the photo besides."""
    return [i for i, name in enumerate(classes) if name.strip().lower() in UNTINTED_NAMES]


def overlay(
    image: np.ndarray,
    mask: Tensor | np.ndarray,
    palette: Sequence[Sequence[int]],
    alpha: float = OVERLAY_ALPHA,
    untinted: Sequence[int] = (),
) -> np.ndarray:
    """The H×W×3 uint8 ``image`` with each pixel's class colour blended in at ``alpha``.

    Pixels of ignore (255) and of the classes ``untinted`` (e.g. :func:`untinted_ids`) keep the
    image's exact colour; every other pixel becomes ``round((1 - alpha) * image + alpha *
    palette[class])``.
    """
    ids = mask.cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    colours = colorize(ids, palette).astype(np.float32)
    blended = (image.astype(np.float32) * (1 - alpha) + colours * alpha).round().astype(np.uint8)
    kept = (ids == IGNORE_INDEX) | np.isin(ids, np.asarray(untinted, dtype=np.int64))
    return np.where(kept[..., None], image, blended)


def prediction_grid(
    images: Sequence[np.ndarray],
    targets: Sequence[Tensor | np.ndarray],
    predictions: Sequence[Tensor | np.ndarray],
    palette: Sequence[Sequence[int]],
    gap: int = 4,
    min_height: int = 128,
    classes: Sequence[str] | None = None,
) -> np.ndarray:
    """Rows of image | ground truth | prediction under a titled header, separated by white gaps,
    and, given ``classes``, a legend of every class's colour and name (and ignore's) below.

    Images shorter than ``min_height`` are enlarged by an integer factor (nearest neighbour, so
    label edges stay crisp) to stay legible.
    """
    rows = []
    for image, target, prediction in zip(images, targets, predictions, strict=True):
        factor = max(1, -(-min_height // image.shape[0]))
        image, target, prediction = (
            _enlarge(np.asarray(a.cpu() if isinstance(a, Tensor) else a), factor)
            for a in (image, target, prediction)
        )
        h = image.shape[0]
        spacer = np.full((h, gap, 3), 255, dtype=np.uint8)
        rows.append(
            np.concatenate(
                [image, spacer, colorize(target, palette), spacer, colorize(prediction, palette)],
                axis=1,
            )
        )
    width = max(r.shape[1] for r in rows)
    padded = [
        np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows
    ]
    column = (width - 2 * gap) // 3
    header = _titles(["image", "ground truth", "prediction"], column + gap, width)
    grid = np.concatenate([header, *padded], axis=0)[:-gap]
    return (
        grid
        if classes is None
        else with_legend(grid, classes, palette, gap=gap, min_width=0, row_height=LEGEND_ROW)
    )


def with_legend(
    picture: np.ndarray,
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    gap: int = 4,
    min_width: int = 192,
    *,
    row_height: int | None = None,
    untinted: Sequence[int] = (),
    ignore: bool = True,
) -> np.ndarray:
    """``picture`` (H×W×3 uint8) with a legend of the class colours and names below it.

    The legend grows with the picture (``row_height`` None: :func:`legend_row_height`), so it
    reads on a 4K photo as on a 64-pixel image, and the gap above it with it. A picture narrower
    than ``min_width`` is padded with white on the right first, so that the names of a small
    image's legend are not cut off. ``untinted`` and ``ignore`` are as in :func:`legend`.
    """
    row = (
        legend_row_height(picture.shape[0], picture.shape[1]) if row_height is None else row_height
    )
    gap = max(gap, round(gap * row / LEGEND_ROW))
    width = max(picture.shape[1], min_width)
    picture = np.pad(picture, ((0, 0), (0, width - picture.shape[1]), (0, 0)), constant_values=255)
    spacer = np.full((gap, width, 3), 255, dtype=np.uint8)
    strip = legend(classes, palette, width, row, untinted=untinted, ignore=ignore)
    return np.concatenate([picture, spacer, strip], axis=0)


def comparison_grid(
    images: Sequence[np.ndarray],
    targets: Sequence[Tensor | np.ndarray],
    predictions: Sequence[Sequence[Tensor | np.ndarray]],
    names: Sequence[str],
    palette: Sequence[Sequence[int]],
    gap: int = 4,
    min_height: int = 128,
    classes: Sequence[str] | None = None,
) -> np.ndarray:
    """Rows of image | ground truth | one prediction per network (``predictions[k][row]``), the
    networks' ``names`` over their columns, and, given ``classes``, the legend below.

    Every tile of a row has the image's size; images shorter than ``min_height`` are enlarged by
    an integer factor (nearest neighbour) as in :func:`prediction_grid`.
    """
    rows = []
    for r, (image, target) in enumerate(zip(images, targets, strict=True)):
        factor = max(1, -(-min_height // image.shape[0]))
        tiles = [np.asarray(image), colorize(target, palette)]
        tiles += [colorize(network[r], palette) for network in predictions]
        tiles = [_enlarge(t, factor) for t in tiles]
        spacer = np.full((tiles[0].shape[0], gap, 3), 255, dtype=np.uint8)
        row = [tiles[0]]
        for tile in tiles[1:]:
            row += [spacer, tile]
        rows.append(np.concatenate(row, axis=1))
    width = max(r.shape[1] for r in rows)
    padded = [
        np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows
    ]
    columns = 2 + len(predictions)
    step = (width - (columns - 1) * gap) // columns + gap
    header = _titles(["image", "ground truth", *names], step, width)
    grid = np.concatenate([header, *padded], axis=0)[:-gap]
    if classes is None:
        return grid
    spacer = np.full((gap, width, 3), 255, dtype=np.uint8)
    return np.concatenate([grid, spacer, legend(classes, palette, width)], axis=0)


#: The smallest legend row in pixels (swatch, name and their margins), and the share of a
#: picture's short side a row takes above that: 1/30 gives 72-pixel rows (45-pixel names) on a
#: 3840x2160 photo and the smallest rows up to a 480-pixel short side.
LEGEND_ROW = 16
LEGEND_ROW_SHARE = 1 / 30


def legend_row_height(height: int, width: int) -> int:
    """The legend row height for an ``height``×``width`` picture: :data:`LEGEND_ROW_SHARE` of its
    short side, at least :data:`LEGEND_ROW`."""
    return max(LEGEND_ROW, round(min(height, width) * LEGEND_ROW_SHARE))


def legend(
    classes: Sequence[str],
    palette: Sequence[Sequence[int]],
    width: int,
    row_height: int = LEGEND_ROW,
    *,
    untinted: Sequence[int] = (),
    ignore: bool = True,
) -> np.ndarray:
    """White strip of ``width`` pixels: a swatch and the name of each class, then (``ignore``)
    "ignore" in its colour, wrapped into as many rows as needed.

    Everything scales with ``row_height``: swatch, font, margins (at 16 the swatch is 12 pixels
    and the names 10). A class of ``untinted`` (left as the photo by :func:`overlay`) gets an
    empty swatch and "(not tinted)" after its name.
    """
    from PIL import ImageDraw

    k = row_height / LEGEND_ROW
    margin, swatch, space, spread = (max(1, round(v * k)) for v in (2, 12, 4, 14))
    font = _font(max(1, round(10 * k)))
    entries = []
    for i, (name, colour) in enumerate(zip(classes, palette, strict=True)):
        plain = i in untinted
        entries.append(
            (f"{name} (not tinted)" if plain else name, None if plain else tuple(map(int, colour)))
        )
    if ignore:
        entries.append(("ignore", IGNORE_COLOUR))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed, x, y = [], margin, 0
    for name, colour in entries:
        item = swatch + space + int(probe.textlength(name, font=font)) + spread
        if x > margin and x + item > width:
            x, y = margin, y + row_height
        placed.append((x, y, name, colour))
        x += item
    strip = Image.new("RGB", (width, y + row_height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    line = max(1, round(k))
    for x, y, name, colour in placed:
        # A grey outline keeps white and near-white classes (and ignore) visible on white; an
        # untinted class's swatch is the outline alone, as its pixels are the photo's own.
        box = [x, y + margin, x + swatch, y + margin + swatch]
        draw.rectangle(box, fill=colour or (255, 255, 255), outline=(128, 128, 128), width=line)
        draw.text((x + swatch + space, y + margin), name, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def _font(size: int):
    """Pillow's own font at ``size`` pixels (FreeType); its fixed 10-pixel bitmap font where this
    Pillow cannot scale it (before 10.1, or built without FreeType)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def _enlarge(array: np.ndarray, factor: int) -> np.ndarray:
    return array if factor == 1 else array.repeat(factor, axis=0).repeat(factor, axis=1)


def _titles(titles: Sequence[str], step: int, width: int, height: int = 16) -> np.ndarray:
    """A white strip with one black title at the left of each column."""
    from PIL import ImageDraw

    strip = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, title in enumerate(titles):
        draw.text((i * step + 2, 2), title, fill=(0, 0, 0))
    return np.asarray(strip)


def save_png(array: np.ndarray, path: Path) -> None:
    """An RGB picture as PNG, written whole or not at all (:mod:`pixelwise.outputs`)."""
    picture = Image.fromarray(array)
    write_with(path, lambda buffer: picture.save(buffer, format="PNG"))


def save_label_png(mask: Tensor | np.ndarray, palette: Sequence[Sequence[int]], path: Path) -> None:
    """A palette ("P") PNG whose pixel values are the class ids, viewable in colour anywhere."""
    ids = mask.cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(palette_array(palette).ravel().tolist())
    write_with(path, lambda buffer: image.save(buffer, format="PNG"))


def plot_confusion(matrix: Tensor, classes: Sequence[str], path: Path) -> None:
    """Row-normalised confusion matrix as a heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = matrix.double().cpu()
    m = (m / m.sum(dim=1, keepdim=True).clamp(min=1)).numpy()
    size = max(4, 0.4 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size))
    shown = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="share of the true class's pixels")
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.tight_layout()
    try:
        # The file's suffix picks the format as savefig(path) would (confusion.pdf, .svg).
        kind = Path(path).suffix.lstrip(".").lower() or "png"
        write_with(path, lambda buffer: fig.savefig(buffer, dpi=100, format=kind))
    finally:
        plt.close(fig)


def spread_indices(size: int, count: int) -> list[int]:
    """``count`` indices evenly spaced over ``range(size)``, first and last included: the images a
    picture shows (consecutive frames of a video dataset look alike)."""
    if size <= 0 or count <= 0:
        return []
    return sorted({round(v) for v in np.linspace(0, size - 1, min(count, size))})
