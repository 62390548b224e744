"""MS COCO 2017 instance annotations rasterised into semantic masks (Lin et al. 2014).

Layout (``root`` = the folder holding the unpacked archives)::

    train2017/000000000009.jpg ...   118,287 images      (train2017.zip)
    val2017/...                        5,000 images      (val2017.zip)
    annotations/instances_train2017.json, instances_val2017.json   (annotations_trainval2017.zip)

The JSON holds ``images`` (id, file_name, height, width), ``categories`` (80 things, ids 1..90
with gaps) and ``annotations`` (image_id, category_id, iscrowd, area, bbox ``[x, y, w, h]``,
segmentation = a list of polygons, or RLE ``{size: [h, w], counts}`` with ``counts`` a list of run
lengths ("uncompressed", the crowd regions) or a string (compressed)). It is parsed once, lazily,
with ``pycocotools.COCO``; pycocotools decodes all three segmentation encodings.

Semantic masks (decisions; torchvision's ``references/segmentation/coco_utils.py`` is the common
derivation and we follow it except where noted):

* ``class_set="voc"``: the 20 PASCAL VOC classes + background, 21 classes, through torchvision's
  ``CAT_LIST`` (``VOC_CATEGORY_IDS``); annotations of other categories are left out, so their
  pixels are background, exactly as in torchvision.
* ``class_set="all"``: background 0 + the 80 things in category-id order (1..80), 81 classes,
  the same convention as the "voc" set and as Mask R-CNN's labels.
* Pixels with no instance are background (0).
* Crowd regions (``iscrowd=1``) of a kept category -> 255, whatever lies under them (torchvision
  paints crowds as their class; they are not individual objects, so we do not train on them).
* Pixels covered by instances of *different* classes -> 255 (torchvision marks any overlap, even of
  two instances of one class; an overlap within a class is unambiguous, so we keep it).
* Images whose kept annotations cover a total ``area`` of at most ``min_area`` pixels are dropped;
  by default 1000 for ``train`` (torchvision's ``_coco_remove_images_without_annotations``) and
  none for ``val`` (all 5,000 images are kept, empty ones as all-background).

:meth:`COCO.load_instances` returns the Mask R-CNN target of one image from the same reader.
"""

from __future__ import annotations

import contextlib
import io
import json
import numbers
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pixelwise.data.base import (
    SegmentationDataset,
    Transform,
    error_text,
    read_image,
    register_dataset,
    to_mask,
    voc_colormap,
)
from pixelwise.data.coco_stuff import COCOSTUFF_NAMES, UNUSED_IDS
from pixelwise.data.instances import InstanceDataset, Objects, compose_semantic
from pixelwise.errors import PixelwiseError

#: The 80 COCO thing category ids in order (1..90 without the ten ids COCO never used; id 91,
#: "hair brush", exists only in COCO-Stuff).
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91) if i not in UNUSED_IDS)
COCO80_CLASSES = tuple(COCOSTUFF_NAMES[i - 1] for i in COCO_CATEGORY_IDS)
#: torchvision's CAT_LIST: the COCO category id of each VOC class (0 = background).
VOC_CATEGORY_IDS = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
VOC21_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
#: torchvision drops training images whose annotations cover no more than this many pixels.
TORCHVISION_MIN_AREA = 1000


def category_to_class(class_set: str) -> dict[int, int]:
    """COCO category id -> our class id (background is 0 and has no category)."""
    if class_set == "voc":
        return {cat: index for index, cat in enumerate(VOC_CATEGORY_IDS) if cat}
    if class_set == "all":
        return {cat: index + 1 for index, cat in enumerate(COCO_CATEGORY_IDS)}
    raise PixelwiseError(f"COCO class_set must be 'voc' or 'all', not {class_set!r}.")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def validate_coco(document: Any, path: Path) -> None:
    """Raise, naming the file and the entry, where ``document`` is not a COCO instances file.

    Checks what the reader relies on before pycocotools indexes it: the three lists, the fields of
    every image, category and annotation, and that every annotation's ``image_id`` names an image
    (pycocotools would silently never look at an annotation whose image is not listed).
    Segmentations are checked when an image is decoded (:func:`check_segmentation`).
    """

    def fail(what: str) -> PixelwiseError:
        return PixelwiseError(f"{path}: {what}; download the annotation file again or fix it.")

    if not isinstance(document, dict):
        raise fail(f"the top level is a {type(document).__name__}, not a JSON object")
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise fail(f"{key!r} is missing or not a list")
    image_ids = set()
    for image in document["images"]:
        if not isinstance(image, dict) or not _is_int(image.get("id")):
            raise fail(f"image entry {str(image)[:60]!r} has no integer 'id'")
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            raise fail(f"image {image['id']} has no 'file_name'")
        if not all(_is_int(image.get(k)) and image[k] > 0 for k in ("height", "width")):
            raise fail(f"image {image['id']} has no positive integer 'height' and 'width'")
        if image["id"] in image_ids:
            raise fail(f"image id {image['id']} is listed twice")
        image_ids.add(image["id"])
    for category in document["categories"]:
        if not isinstance(category, dict) or not _is_int(category.get("id")):
            raise fail(f"category entry {str(category)[:60]!r} has no integer 'id'")
    for ann in document["annotations"]:
        if not isinstance(ann, dict) or not _is_int(ann.get("id")):
            raise fail(f"annotation entry {str(ann)[:60]!r} has no integer 'id'")
        if not _is_int(ann.get("image_id")) or not _is_int(ann.get("category_id")):
            raise fail(f"annotation {ann['id']} has no integer 'image_id' and 'category_id'")
        if ann["image_id"] not in image_ids:
            raise fail(
                f"annotation {ann['id']} has image_id {ann['image_id']}, which 'images' does not "
                "list, so it would be dropped without a word"
            )
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(_is_number, bbox))):
            raise fail(f"annotation {ann['id']} has a 'bbox' that is not [x, y, w, h]")
        if not _is_number(ann.get("area", 0.0)) or ann.get("iscrowd", 0) not in (0, 1):
            raise fail(f"annotation {ann['id']} has an 'area' or 'iscrowd' of the wrong type")
        if not isinstance(ann.get("segmentation"), list | dict):
            raise fail(f"annotation {ann['id']} has no 'segmentation' list or RLE object")


def check_segmentation(ann: dict[str, Any], height: int, width: int, path: Path) -> None:
    """Raise where one annotation's segmentation would decode to nothing or to the wrong size.

    A polygon is a flat list of x, y coordinates: an odd count has a coordinate without its
    partner, which pycocotools rasterises to an empty mask. An RLE must have the image's size.
    """
    where = f"{path}: annotation {ann.get('id')} of image {ann.get('image_id')}"
    segmentation = ann["segmentation"]
    if isinstance(segmentation, list):
        for polygon in segmentation:
            if not isinstance(polygon, list) or not all(map(_is_number, polygon)):
                raise PixelwiseError(
                    f"{where} has a polygon that is not a list of numbers; fix or remove it."
                )
            if len(polygon) % 2:
                raise PixelwiseError(
                    f"{where} has a polygon with {len(polygon)} coordinates, an odd number (each "
                    "point is an x, y pair), which would paint nothing; fix or remove it."
                )
        return
    size = segmentation.get("size")
    counts = segmentation.get("counts")
    if size != [height, width]:
        raise PixelwiseError(
            f"{where} has an RLE of size {size}, but the image is [{height}, {width}]; fix or "
            "remove it."
        )
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts) or sum(counts) != height * width:
            raise PixelwiseError(
                f"{where} has RLE counts that do not cover the {height}x{width} image exactly; "
                "fix or remove it."
            )
    elif not isinstance(counts, str):
        raise PixelwiseError(f"{where} has RLE counts that are neither a list nor a string.")


@register_dataset("coco")
class COCO(SegmentationDataset):
    """COCO 2017 as semantic segmentation (VOC-20 or all 80 things) and as instances.

    Args:
        root: folder holding ``train2017/``, ``val2017/`` and ``annotations/``.
        split: ``"train"`` or ``"val"``.
        transforms: joint transform of ``(image, mask)``.
        class_set: ``"voc"`` (21 classes) or ``"all"`` (81 classes); see the module docstring.
        min_area: drop images whose kept annotations cover at most this many pixels; ``None`` =
            1000 for train and keep everything for val; a negative value keeps everything.
        year: ``2017`` or ``2014`` (``train2014/`` and ``instances_train2014.json``).
    """

    home = "coco"
    source = (
        "train2017.zip, val2017.zip and annotations_trainval2017.zip from cocodataset.org/#download"
    )

    classes = VOC21_CLASSES
    palette = voc_colormap(len(VOC21_CLASSES))
    splits = ("train", "val")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        *,
        class_set: str = "voc",
        min_area: float | None = None,
        year: int = 2017,
    ) -> None:
        super().__init__(root, split, transforms)
        self.class_set = class_set
        self.category_map = category_to_class(class_set)
        if class_set == "all":
            self.classes = ("background", *COCO80_CLASSES)  # type: ignore[misc]
            self.palette = voc_colormap(len(self.classes))  # type: ignore[misc]
        if min_area is None:
            min_area = TORCHVISION_MIN_AREA if split == "train" else -1
        self.min_area = float(min_area)
        self.year = year
        self.image_folder = f"{split}{year}"
        self.annotation_file = self.root / "annotations" / f"instances_{split}{year}.json"
        self._coco: Any = None

    @property
    def expected_folders(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.image_folder, "annotations")

    @property
    def coco(self) -> Any:
        """The parsed annotation file (``pycocotools.coco.COCO``), loaded on first use."""
        if self._coco is None:
            from pycocotools.coco import COCO as CocoApi

            if not self.annotation_file.is_file():
                raise PixelwiseError(
                    f"{self.annotation_file} does not exist; unpack annotations_trainval{self.year}"
                    f".zip into {self.root}."
                )
            try:
                document = json.loads(self.annotation_file.read_bytes())
            except (OSError, ValueError, RecursionError) as error:
                raise PixelwiseError(
                    f"{self.annotation_file} is not a readable JSON file ({error_text(error)}); "
                    "download it again."
                ) from None
            validate_coco(document, self.annotation_file)
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                coco = CocoApi()
                coco.dataset = document
                coco.createIndex()
            self._coco = coco
        return self._coco

    def index_source(self) -> str:
        if self.min_area >= 0:
            return (
                f"{self.annotation_file} (after dropping images whose {self.class_set!r} "
                f"annotations cover at most min_area={self.min_area:g} pixels; lower min_area to "
                "keep them)"
            )
        return str(self.annotation_file)

    def build_index(self) -> list[tuple[Path, int]]:
        coco = self.coco
        samples = []
        for image_id in sorted(coco.getImgIds()):
            if self.min_area >= 0:
                area = sum(
                    float(ann.get("area", 0.0))
                    for ann in coco.imgToAnns.get(image_id, [])
                    if ann["category_id"] in self.category_map
                )
                if area <= self.min_area:
                    continue
            info = coco.imgs[image_id]
            samples.append((self.root / self.image_folder / info["file_name"], int(image_id)))
        return samples

    def describe(self, sample: tuple[Path, int]) -> str:
        return f"{sample[0]} (image id {sample[1]} in {self.annotation_file.name})"

    def sample_files(self, sample: tuple[Path, int]) -> dict[str, Path]:
        """The files a sample is read from, for ``datasets check``."""
        return {"image": sample[0], "label": self.annotation_file}

    # -- decoding ----------------------------------------------------------------------------
    def _kept_annotations(self, image_id: int) -> list[tuple[dict[str, Any], int]]:
        """``(annotation, class id)`` of the annotations of one image that this class set keeps.

        Each one's category and segmentation are checked, so nothing undecodable is kept.
        """
        coco = self.coco
        info = coco.imgs[image_id]
        kept = []
        for ann in coco.imgToAnns.get(image_id, []):
            category = ann["category_id"]
            if category not in coco.cats:
                raise PixelwiseError(
                    f"{self.annotation_file}: annotation {ann.get('id')} of image {image_id} has "
                    f"category_id {category}, which 'categories' does not define; fix the file."
                )
            cls = self.category_map.get(category)
            if cls is None and self.class_set == "all":
                raise PixelwiseError(
                    f"{self.annotation_file}: category_id {category} is not one of the 80 COCO "
                    "things; class_set='all' expects the official categories."
                )
            if cls is None:
                continue  # outside the VOC set: background, as torchvision does
            check_segmentation(ann, int(info["height"]), int(info["width"]), self.annotation_file)
            kept.append((ann, cls))
        return kept

    def _instances(self, image_id: int) -> list[tuple[dict[str, Any], int, np.ndarray]]:
        """``(annotation, class id, HxW uint8 mask)`` of the kept annotations of one image."""
        coco = self.coco
        info = coco.imgs[image_id]
        found = []
        for ann, cls in self._kept_annotations(image_id):
            try:
                with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation, not ours
                    warnings.simplefilter("ignore", DeprecationWarning)
                    mask = coco.annToMask(ann)
            except Exception as error:  # noqa: BLE001 - pycocotools' C decoder raises many types
                raise PixelwiseError(
                    f"{self.annotation_file}: annotation {ann.get('id')} of image {image_id} has an "
                    f"undecodable segmentation ({error_text(error)}); fix or remove it."
                ) from None
            if mask.shape != (int(info["height"]), int(info["width"])):
                raise PixelwiseError(
                    f"{self.annotation_file}: annotation {ann.get('id')} of image {image_id} decodes "
                    f"to {mask.shape}, not the image's {info['height']}x{info['width']}; fix or "
                    "remove it."
                )
            found.append((ann, cls, mask))
        return found

    def load_image(self, sample: tuple[Path, int]) -> Tensor:
        return read_image(sample[0])

    def load_mask(self, sample: tuple[Path, int]) -> Tensor:
        info = self.coco.imgs[sample[1]]
        instances = [
            (mask, cls, bool(ann.get("iscrowd", 0)))
            for ann, cls, mask in self._instances(sample[1])
        ]
        return to_mask(compose_semantic(instances, int(info["height"]), int(info["width"])))

    def load_instances(self, index: int, *, include_crowd: bool = False) -> dict[str, Tensor]:
        """The Mask R-CNN target of sample ``index`` (torchvision's detection format).

        Returns ``boxes`` (N, 4) float32 xyxy clamped to the image, ``labels`` (N,) int64 class ids
        of this class set (1..20 or 1..80; 0 is background), ``masks`` (N, H, W) uint8, ``iscrowd``,
        ``area`` and ``image_id``. Crowd regions are left out unless ``include_crowd`` (training
        leaves them out, evaluation needs them); degenerate boxes are always dropped.
        """
        _, image_id = self.samples[index]
        info = self.coco.imgs[image_id]
        height, width = int(info["height"]), int(info["width"])
        kept = [
            item
            for item in self._instances(image_id)
            if include_crowd or not item[0].get("iscrowd", 0)
        ]
        boxes = torch.tensor([ann["bbox"] for ann, _, _ in kept], dtype=torch.float32).reshape(
            -1, 4
        )
        boxes[:, 2:] += boxes[:, :2]  # xywh -> xyxy
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        masks = (
            torch.from_numpy(np.stack([mask for _, _, mask in kept]))
            if kept
            else torch.zeros((0, height, width), dtype=torch.uint8)
        )
        return {
            "boxes": boxes[valid],
            "labels": torch.tensor([cls for _, cls, _ in kept], dtype=torch.int64)[valid],
            "masks": masks[valid],
            "iscrowd": torch.tensor(
                [int(ann.get("iscrowd", 0)) for ann, _, _ in kept], dtype=torch.int64
            )[valid],
            "area": torch.tensor([float(ann["area"]) for ann, _, _ in kept], dtype=torch.float32)[
                valid
            ],
            "image_id": torch.tensor(image_id, dtype=torch.int64),
        }


@register_dataset("coco_instances")
class COCOInstances(InstanceDataset, COCO):
    """COCO as instance segmentation: ``(image, target)`` for Mask R-CNN (see ``data.instances``).

    Args:
        root: folder holding ``train2017/``, ``val2017/`` and ``annotations/``.
        split: ``"train"`` or ``"val"``.
        transforms: joint transform of ``(image, target)``.
        class_set: ``"all"`` (the 80 things, labels 1..80 in category-id order, 81 classes),
            ``"voc"`` (the 20 VOC classes, other categories left out) or ``"file"`` (the
            ``categories`` of the annotation file in id order, for COCO-format datasets of your
            own; the file is read when the dataset is built).
        min_area: drop images whose kept annotations cover at most this many pixels; the default
            -1 keeps every image, also those without objects (0 drops those, close to
            torchvision's detection training filter).
        year: ``2017`` or ``2014``.

    Crowd annotations are targets with ``iscrowd=1`` in every split; the training transforms
    leave them out of the loss. Boxes are the annotations' own ``bbox`` and ``area`` their
    ``area`` (what COCOeval uses), ``image_id`` the annotation file's image id.
    """

    classes = ("background", *COCO80_CLASSES)
    palette = voc_colormap(len(COCO80_CLASSES) + 1)
    category_ids = (0, *COCO_CATEGORY_IDS)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        *,
        class_set: str = "all",
        min_area: float = -1.0,
        year: int = 2017,
    ) -> None:
        if class_set not in ("all", "voc", "file"):
            raise PixelwiseError(
                f"coco_instances class_set must be 'all', 'voc' or 'file', not {class_set!r}."
            )
        base_set = "all" if class_set == "file" else class_set
        super().__init__(root, split, transforms, class_set=base_set, min_area=min_area, year=year)
        if class_set == "voc":
            self.classes = VOC21_CLASSES  # type: ignore[misc]
            self.palette = voc_colormap(len(VOC21_CLASSES))  # type: ignore[misc]
            self.category_ids = VOC_CATEGORY_IDS  # type: ignore[misc]
        elif class_set == "file":
            ids = sorted(self.coco.cats)
            self.class_set = "file"
            self.category_map = {cat: index + 1 for index, cat in enumerate(ids)}
            names = (str(self.coco.cats[i].get("name", i)) for i in ids)
            self.classes = ("background", *names)  # type: ignore[misc]
            self.palette = voc_colormap(len(self.classes))  # type: ignore[misc]
            self.category_ids = (0, *ids)  # type: ignore[misc]

    def image_id(self, index: int) -> int:
        return int(self.samples[index][1])

    def load_objects(self, sample: tuple[Path, int]) -> Objects:
        info = self.coco.imgs[sample[1]]
        height, width = int(info["height"]), int(info["width"])
        found = self._instances(sample[1])
        boxes = np.array([ann["bbox"] for ann, _, _ in found], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # COCO's [x, y, w, h] -> xyxy
        return Objects(
            masks=(
                np.stack([mask for _, _, mask in found])
                if found
                else np.zeros((0, height, width), dtype=np.uint8)
            ),
            labels=np.array([cls for _, cls, _ in found], dtype=np.int64),
            iscrowd=np.array([int(ann.get("iscrowd", 0)) for ann, _, _ in found], dtype=np.int64),
            boxes=boxes,
            area=np.array([float(ann.get("area", 0.0)) for ann, _, _ in found], dtype=np.float32),
        )

    def coco_ground_truth(self, indices: Sequence[int] | None = None) -> dict[str, Any]:
        """As :meth:`InstanceDataset.coco_ground_truth`, straight from the annotations.

        Polygons and uncompressed RLE are turned into compressed RLE without painting a mask,
        which makes the 5,000 images of val2017 a matter of seconds; the result is the same
        document (boxes clamped, degenerate ones left out, as in the targets).
        """
        coco = self.coco
        images, annotations = [], []
        for index in range(len(self)) if indices is None else indices:
            image_id = self.image_id(index)
            info = coco.imgs[image_id]
            height, width = int(info["height"]), int(info["width"])
            images.append({"id": image_id, "height": height, "width": width})
            for ann, cls in self._kept_annotations(image_id):
                # float32 as in the targets, so that both ways give the same numbers
                x, y, w, h = np.asarray(ann["bbox"], dtype=np.float32)
                x1, x2 = (float(v) for v in np.clip([x, x + w], 0, width).astype(np.float32))
                y1, y2 = (float(v) for v in np.clip([y, y + h], 0, height).astype(np.float32))
                if not (x2 > x1 and y2 > y1):
                    continue
                try:
                    with warnings.catch_warnings():  # pycocotools' numpy-2 deprecation, not ours
                        warnings.simplefilter("ignore", DeprecationWarning)
                        rle = dict(coco.annToRLE(ann))
                except Exception as error:  # noqa: BLE001 - pycocotools' C code raises many types
                    raise PixelwiseError(
                        f"{self.annotation_file}: annotation {ann.get('id')} of image {image_id} "
                        f"has an undecodable segmentation ({error_text(error)}); fix or remove it."
                    ) from None
                if isinstance(rle["counts"], bytes):
                    rle["counts"] = rle["counts"].decode("ascii")
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": int(self.category_ids[cls]),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": float(np.float32(ann.get("area", 0.0))),
                        "iscrowd": int(ann.get("iscrowd", 0)),
                        "segmentation": {"size": [height, width], "counts": rle["counts"]},
                    }
                )
        return {"images": images, "annotations": annotations, "categories": self.categories()}
