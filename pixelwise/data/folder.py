"""``folder``: your own data, as plain folders of images and masks.

Layout (``root`` = your dataset folder)::

    images/<stem>.{png,jpg,jpeg,bmp,tif,tiff}       RGB images (any mode; converted to RGB)
    masks/<stem>.{png,...}                          one mask per image, matched by file stem
    classes.yaml  (or classes.json)                 the classes, in id order
    splits/{train,val,test}.txt                     optional: one image stem per line

or, with the split in the folder structure::

    images/{train,val,test}/<stem>.*   masks/{train,val,test}/<stem>.*

``classes.yaml``::

    classes:                  # mask value k (index masks) is classes[k]
      - background            # a bare name, or
      - {name: cat, color: [255, 0, 0]}   # a name with its RGB colour
    ignore: 255               # optional: a mask value, or an [R, G, B] colour, that means ignore

Masks are read by their PNG mode: ``L``/``I;16`` masks hold class ids, ``RGB``/``RGBA`` masks
hold colours mapped through the class colours (alpha is dropped). A palette (``P``) PNG gives its
indices, as in VOC, when ``classes.yaml`` gives no colours, and its colours when it does (the
colours are then what the classes are named by, whatever the PNG stores). Masks must be lossless:
JPEG masks are refused, since compression blurs the values at every edge. 255 is always ignore; ``ignore`` names one more value (or a colour) that
becomes 255. An unknown colour or a value outside the classes raises, naming the file.

Splits, first match wins: the ``images/<split>/`` folders when any exists; else the
``splits/<split>.txt`` lists; else ``all`` plus a deterministic ``train``/``val`` split of the
sorted stems, every ``1/val_fraction``-th stem going to val (spread over the whole list rather
than its tail, so one sequence does not become the whole val set). For video frames, whose
neighbours look alike, give explicit lists instead.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from torch import Tensor

from pixelwise.data.base import (
    IGNORE_INDEX,
    SegmentationDataset,
    Transform,
    cached_index,
    error_text,
    file_names,
    missing_file,
    open_image,
    parse_list_file,
    read_image,
    register_dataset,
    rgb_to_index,
    to_mask,
)
from pixelwise.errors import PixelwiseError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Lossy formats: their masks hold values near, not at, the class ids and colours.
LOSSY_EXTENSIONS = (".jpg", ".jpeg")
_LOSSY_FORMATS = ("JPEG", "MPO")
SPLIT_NAMES = ("train", "val", "test")
CLASS_FILES = ("classes.yaml", "classes.yml", "classes.json")
_INDEX_MODES = ("L", "P", "I", "I;16", "1")
_COLOUR_MODES = ("RGB", "RGBA")


def default_palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct display colours for classes that were given none (golden-ratio hue steps)."""
    colours = []
    for k in range(n):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.8, 0.9)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colours)


def load_class_file(
    root: Path,
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...] | None, Any]:
    """Read ``classes.yaml``/``classes.json`` under ``root``: names, colours (or None), ignore."""
    path = next((root / name for name in CLASS_FILES if (root / name).is_file()), None)
    if path is None:
        raise PixelwiseError(
            f"{root} has no {CLASS_FILES[0]}; write one listing the classes in id order, e.g. "
            "'classes: [background, cat, dog]'."
        )
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise PixelwiseError(
            f"{path} could not be read ({error_text(error)}); fix its syntax."
        ) from None
    if isinstance(data, list):
        data = {"classes": data}
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("classes"), list)
        or not data["classes"]
    ):
        raise PixelwiseError(f"{path} must hold a non-empty list under 'classes:'.")
    unknown = sorted(set(data) - {"classes", "ignore"})
    if unknown:
        raise PixelwiseError(
            f"{path}: unknown key {unknown[0]!r}; the keys are 'classes' and 'ignore'."
        )
    names, colours = [], []
    for k, entry in enumerate(data["classes"]):
        if (
            isinstance(entry, dict)
            and "name" in entry
            and set(entry) <= {"name", "color", "colour"}
        ):
            names.append(str(entry["name"]))
            colour = entry.get("color", entry.get("colour"))
            colours.append(None if colour is None else _colour(colour, path, f"class {k}"))
        elif isinstance(entry, str | int):
            names.append(str(entry))
            colours.append(None)
        else:
            raise PixelwiseError(
                f"{path}: class {k} is {entry!r}; write a name or {{name: ..., color: [R, G, B]}}."
            )
    if len(set(names)) != len(names):
        raise PixelwiseError(f"{path}: class names repeat; give each class one unique name.")
    given = [c for c in colours if c is not None]
    if given and len(given) != len(colours):
        missing = names[colours.index(None)]
        raise PixelwiseError(
            f"{path}: class {missing!r} has no color; give every class a color or none."
        )
    if len(set(given)) != len(given):
        raise PixelwiseError(
            f"{path}: two classes share a color; colour masks need one color per class."
        )
    palette = tuple(given) if given else None
    ignore = data.get("ignore")
    if ignore is not None:
        if isinstance(ignore, list):
            ignore = _colour(ignore, path, "ignore")
        elif not isinstance(ignore, int) or isinstance(ignore, bool) or ignore < 0:
            raise PixelwiseError(
                f"{path}: ignore is {ignore!r}; give a mask value (e.g. 255) or [R, G, B]."
            )
        elif ignore < len(names):
            raise PixelwiseError(
                f"{path}: ignore {ignore} is also the id of class {names[ignore]!r}; choose another value."
            )
    return tuple(names), palette, ignore


def _colour(value: Any, path: Path, what: str) -> tuple[int, int, int]:
    if (
        isinstance(value, list | tuple)
        and len(value) == 3
        and all(isinstance(c, int) and 0 <= c <= 255 for c in value)
    ):
        return (int(value[0]), int(value[1]), int(value[2]))
    raise PixelwiseError(
        f"{path}: {what} has color {value!r}; write [R, G, B] with 0..255 integers."
    )


@register_dataset("folder")
class Folder(SegmentationDataset):
    """Images and masks in plain folders, classes named in ``classes.yaml``."""

    home = "folder"
    source = "your own images/ and masks/ folders"

    splits = (*SPLIT_NAMES, "all")
    expected_folders = ("images", "masks")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        *,
        val_fraction: float = 0.1,
    ) -> None:
        super().__init__(root, split, transforms)
        if not 0.0 < val_fraction < 1.0:
            raise PixelwiseError(
                f"val_fraction is {val_fraction}; give a fraction between 0 and 1, e.g. 0.1."
            )
        self.val_fraction = val_fraction
        self.check_root()
        names, palette, ignore = load_class_file(self.root)
        # Instance attributes shadow the ClassVars: the classes belong to this root, not the class.
        self.classes = names  # type: ignore[misc]
        self.palette = palette or default_palette(len(names))  # type: ignore[misc]
        self.colours_given = palette is not None
        self.ignore_value = ignore

    # -- index ---------------------------------------------------------------------------------
    def _layout(self) -> str:
        if any((self.root / "images" / s).is_dir() for s in SPLIT_NAMES):
            return "folders"
        if any((self.root / "splits" / f"{s}.txt").is_file() for s in SPLIT_NAMES):
            return "lists"
        return "computed"

    def build_index(self) -> list[tuple[Path, Path]]:
        layout = self._layout()
        watch = [self.root / "images", self.root / "masks", self.root / "splits"]
        watch += [self.root / folder / s for folder in ("images", "masks") for s in SPLIT_NAMES]
        watch += [self.root / "splits" / f"{s}.txt" for s in SPLIT_NAMES]
        key = ("folder", self.root.resolve(), self.split, layout, self.val_fraction)
        return cached_index(key, watch, lambda: self._scan(layout))

    def _scan(self, layout: str) -> list[tuple[Path, Path]]:
        if layout == "folders":
            parts = [s for s in SPLIT_NAMES if (self.root / "images" / s).is_dir()]
            if self.split != "all" and self.split not in parts:
                raise PixelwiseError(
                    f"{self.root} has no split {self.split!r}: images/{self.split}/ does not exist "
                    f"(found {', '.join(f'images/{p}/' for p in parts)})."
                )
            chosen = parts if self.split == "all" else [self.split]
            return [
                pair for p in chosen for pair in self._pairs(Path("images", p), Path("masks", p))
            ]
        pairs = self._pairs(Path("images"), Path("masks"))
        if self.split == "all":
            return pairs
        if layout == "lists":
            return self._listed(pairs)
        if self.split == "test":
            raise PixelwiseError(
                f"{self.root} has no test split; add splits/test.txt (one image stem per line) or "
                "images/test/, or use split 'all', 'train' or 'val'."
            )
        return _split_by_fraction(pairs, self.val_fraction, self.split)

    def index_source(self) -> str:
        layout = self._layout()
        if layout == "folders" and self.split != "all":
            return f"the folder {self.root / 'images' / self.split}"
        if layout == "lists" and self.split != "all":
            return str(self.root / "splits" / f"{self.split}.txt")
        if layout == "computed" and self.split != "all":
            return (
                f"the folder {self.root / 'images'} split by val_fraction={self.val_fraction} "
                "(add images, or write splits/train.txt and splits/val.txt)"
            )
        return f"the folder {self.root / 'images'}"

    def _pairs(self, images_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
        images = _by_stem(self.root / images_dir)
        masks = _by_stem(self.root / masks_dir)
        lossy = sorted(p for p in masks.values() if p.suffix.lower() in LOSSY_EXTENSIONS)
        if lossy:
            raise PixelwiseError(
                f"Mask {lossy[0]} is a JPEG ({len(lossy)} in {self.root / masks_dir}); JPEG "
                "compression changes mask values at every edge, so save masks as PNG."
            )
        pairs = []
        for stem in sorted(images):
            mask = masks.get(stem)
            if mask is None:
                # datasets check indexes the absent mask under its .png name and counts it.
                mask = self.root / masks_dir / f"{stem}.png"
                missing_file(
                    PixelwiseError(
                        f"Image {images[stem]} has no mask: expected {mask} (or another of "
                        f"{', '.join(EXTENSIONS)}); add it or remove the image."
                    )
                )
            pairs.append((images[stem], mask))
        return pairs

    def _listed(self, pairs: list[tuple[Path, Path]]) -> list[tuple[Path, Path]]:
        list_file = self.root / "splits" / f"{self.split}.txt"
        if not list_file.is_file():
            raise PixelwiseError(
                f"{self.root} has no split {self.split!r}: {list_file} does not exist; write it "
                "with one image stem per line, or use split 'all'."
            )
        by_stem = {image.stem: (image, mask) for image, mask in pairs}
        samples = []
        for stem in parse_list_file(list_file):
            stem = Path(stem).stem if Path(stem).suffix.lower() in EXTENSIONS else stem
            if stem not in by_stem:
                raise PixelwiseError(
                    f"{list_file} names {stem!r}, which has no image in {self.root / 'images'}; "
                    "fix the list or add the image."
                )
            samples.append(by_stem[stem])
        return samples

    # -- decoding ------------------------------------------------------------------------------
    def load_image(self, sample: tuple[Path, Path]) -> Tensor:
        return read_image(sample[0])

    def load_mask(self, sample: tuple[Path, Path]) -> Tensor:
        path = sample[1]
        raw, colour = _read_mask(path, palette_as_colours=self.colours_given)
        if colour:
            return to_mask(self._decode_colours(raw, path))
        mask = raw.astype(np.int64)
        if isinstance(self.ignore_value, int):
            mask[raw == self.ignore_value] = IGNORE_INDEX
        # values outside the classes are left for check_mask_values, which names the file
        return to_mask(mask)

    def _decode_colours(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        if not self.colours_given:
            raise PixelwiseError(
                f"Mask {path} is a colour image but the classes file gives no colors; add "
                "'color: [R, G, B]' to every class, or save masks as single-channel class ids."
            )
        colours = list(self.palette)
        values = list(range(len(colours)))
        if isinstance(self.ignore_value, tuple):
            colours.append(self.ignore_value)
            values.append(IGNORE_INDEX)
        return rgb_to_index(rgb, colours, values, path)


def _read_mask(path: Path, *, palette_as_colours: bool = False) -> tuple[np.ndarray, bool]:
    """The mask's array and whether it holds colours, naming the file on failure.

    ``palette_as_colours``: decode a palette PNG to its colours (the class file gives colours)
    instead of to its indices.
    """
    with open_image(path, "Mask") as img:
        if img.format in _LOSSY_FORMATS or "jpeg" in str(img.info.get("compression", "")):
            raise PixelwiseError(
                f"Mask {path} is JPEG-compressed; JPEG compression changes mask values at every "
                "edge, so save masks as PNG."
            )
        if img.mode in _COLOUR_MODES or (palette_as_colours and img.mode in ("P", "PA")):
            return np.asarray(img.convert("RGB")), True
        if img.mode in _INDEX_MODES:
            array = np.asarray(img)
            return (array.astype(np.uint8) if array.dtype == bool else array), False
        raise PixelwiseError(
            f"Mask {path} is a {img.mode} image; save masks as single-channel class ids (L, P, "
            "I;16) or as RGB colours."
        )


def _by_stem(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by stem; two files with one stem are ambiguous and raise."""
    found: dict[str, Path] = {}
    for name in sorted(file_names(folder)):
        path = folder / name
        if path.suffix.lower() not in EXTENSIONS:
            continue
        if path.stem in found:
            raise PixelwiseError(
                f"{found[path.stem]} and {path} share the stem {path.stem!r}; keep one, since "
                "images and masks are matched by stem."
            )
        found[path.stem] = path
    return found


def _split_by_fraction(
    pairs: list[tuple[Path, Path]], val_fraction: float, split: str
) -> list[tuple[Path, Path]]:
    """Deterministic train/val split of the stem-sorted pairs: evenly spaced val positions."""
    n = len(pairs)
    n_val = max(1, round(n * val_fraction)) if n > 1 else 0
    val_positions = {int((k + 1) * n / n_val) - 1 for k in range(n_val)}
    return [pair for i, pair in enumerate(pairs) if (i in val_positions) == (split == "val")]
