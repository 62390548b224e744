"""Cityscapes (Cordts et al. 2016), fine or coarse annotations, in the layout of the official zips.

Layout (``root`` = the folder holding the unpacked zips)::

    leftImg8bit/{train,val,test,train_extra}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
    gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
    gtCoarse/{train,train_extra,val}/<city>/<city>_<seq>_<frame>_gtCoarse_labelIds.png

2975 / 500 / 1525 fine images (test labels are not public: the test PNGs hold no classes) and
19998 ``train_extra`` images with coarse labels only. ``*_labelIds.png`` hold the 34 official
label ids (0..33); training uses the 19 ``trainId``s of cityscapesscripts' ``labels.py``, every
other id (and the license plate, id -1) becomes 255. When the official
``createTrainIdLabelImgs`` script has written ``*_labelTrainIds.png`` next to a label, that file
is read instead (it already holds train ids). Predictions are turned back into label ids with
:func:`to_label_ids` for the official evaluation and the test server (ignore becomes 0).

``cityscapes_instances`` reads ``gtFine/<split>/<city>/<frame>_gtFine_instanceIds.png`` (16-bit):
a pixel of an individual object holds ``label id * 1000 + instance number``, any other pixel its
label id. The 8 classes with instances (person, rider, car, truck, bus, train, motorcycle,
bicycle: label ids 24..33 without 29 caravan and 30 trailer) become labels 1..8. Decisions:

* A label id of those 8 below 1000 is a group the annotators did not split into objects (e.g.
  "person group"); each class's group pixels become one target with ``iscrowd=1``, as COCO's
  crowd regions, so COCOeval ignores detections on them and training leaves them out.
* Caravan and trailer (29, 30) have instances but are not evaluated by Cityscapes; they are no
  targets, and ignore (255) in the painted class map. Every other label id is background.
* An instance id whose class (id // 1000) is not one of 24..33, or a value 34..999, is no
  Cityscapes value and raises, naming the file and the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor

from pixelwise.data.base import (
    IGNORE_INDEX,
    SegmentationDataset,
    Transform,
    apply_lut,
    cached_index,
    file_names,
    lookup_table,
    missing_file,
    read_image,
    read_label_png,
    register_dataset,
    to_mask,
)
from pixelwise.data.instances import InstanceDataset, Objects
from pixelwise.errors import PixelwiseError


class CityscapesLabel(NamedTuple):
    id: int
    name: str
    train_id: int
    color: tuple[int, int, int]


#: cityscapesscripts 2.3.0 ``helpers/labels.py``: (id, name, trainId, colour); 255/-1: untrained.
CITYSCAPES_LABELS = tuple(
    CityscapesLabel(*row)
    for row in (
        (0, "unlabeled", 255, (0, 0, 0)),
        (1, "ego vehicle", 255, (0, 0, 0)),
        (2, "rectification border", 255, (0, 0, 0)),
        (3, "out of roi", 255, (0, 0, 0)),
        (4, "static", 255, (0, 0, 0)),
        (5, "dynamic", 255, (111, 74, 0)),
        (6, "ground", 255, (81, 0, 81)),
        (7, "road", 0, (128, 64, 128)),
        (8, "sidewalk", 1, (244, 35, 232)),
        (9, "parking", 255, (250, 170, 160)),
        (10, "rail track", 255, (230, 150, 140)),
        (11, "building", 2, (70, 70, 70)),
        (12, "wall", 3, (102, 102, 156)),
        (13, "fence", 4, (190, 153, 153)),
        (14, "guard rail", 255, (180, 165, 180)),
        (15, "bridge", 255, (150, 100, 100)),
        (16, "tunnel", 255, (150, 120, 90)),
        (17, "pole", 5, (153, 153, 153)),
        (18, "polegroup", 255, (153, 153, 153)),
        (19, "traffic light", 6, (250, 170, 30)),
        (20, "traffic sign", 7, (220, 220, 0)),
        (21, "vegetation", 8, (107, 142, 35)),
        (22, "terrain", 9, (152, 251, 152)),
        (23, "sky", 10, (70, 130, 180)),
        (24, "person", 11, (220, 20, 60)),
        (25, "rider", 12, (255, 0, 0)),
        (26, "car", 13, (0, 0, 142)),
        (27, "truck", 14, (0, 0, 70)),
        (28, "bus", 15, (0, 60, 100)),
        (29, "caravan", 255, (0, 0, 90)),
        (30, "trailer", 255, (0, 0, 110)),
        (31, "train", 16, (0, 80, 100)),
        (32, "motorcycle", 17, (0, 0, 230)),
        (33, "bicycle", 18, (119, 11, 32)),
        (-1, "license plate", -1, (0, 0, 142)),
    )
)

_TRAINED = sorted(
    (lab for lab in CITYSCAPES_LABELS if 0 <= lab.train_id < 255), key=lambda lab: lab.train_id
)
CITYSCAPES_CLASSES = tuple(lab.name for lab in _TRAINED)
CITYSCAPES_PALETTE = tuple(lab.color for lab in _TRAINED)

#: label id -> train id for every id >= 0 (untrained ids -> 255).
LABEL_ID_TO_TRAIN_ID = {
    lab.id: (lab.train_id if 0 <= lab.train_id < 255 else IGNORE_INDEX)
    for lab in CITYSCAPES_LABELS
    if lab.id >= 0
}
#: train id -> label id, to write predictions in the official format.
TRAIN_ID_TO_LABEL_ID = {lab.train_id: lab.id for lab in _TRAINED}

# 255 in a labelIds file is the license plate (-1) written into 8 bits; 34..254 do not exist.
_LABEL_LUT = lookup_table({**LABEL_ID_TO_TRAIN_ID, 255: IGNORE_INDEX}, default=-1)
_TO_LABEL_LUT = lookup_table({**TRAIN_ID_TO_LABEL_ID, IGNORE_INDEX: 0}, default=-1)

_MODES = {
    "fine": ("gtFine", ("train", "val", "test")),
    "coarse": ("gtCoarse", ("train", "train_extra", "val")),
}


def to_label_ids(mask: Tensor | np.ndarray) -> np.ndarray:
    """Train ids (0..18, 255 = ignore) -> official label ids as ``uint8``, ignore -> 0 (unlabeled).

    Raises:
        PixelwiseError: when ``mask`` holds a value that is neither a train id nor 255.
    """
    array = (mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)).astype(
        np.int64
    )
    in_range = (array >= 0) & (array <= 255)
    out = np.where(in_range, _TO_LABEL_LUT[np.clip(array, 0, 255)], -1)
    if bool((out < 0).any()):
        bad = np.unique(array[out < 0])[:5].tolist()
        raise PixelwiseError(
            f"to_label_ids got values {bad}; pass train ids 0..18 or 255 (ignore)."
        )
    return out.astype(np.uint8)


@register_dataset("cityscapes")
class Cityscapes(SegmentationDataset):
    """Cityscapes: 19 training classes, fine (train/val/test) or coarse (train/train_extra/val)."""

    home = "cityscapes"
    source = "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from www.cityscapes-dataset.com/downloads (free account)"

    classes = CITYSCAPES_CLASSES
    palette = CITYSCAPES_PALETTE
    splits = ("train", "val", "test", "train_extra")
    train_id_to_label_id = TRAIN_ID_TO_LABEL_ID
    _index_key: ClassVar[str] = "cityscapes"  # the index cache's key, one per reader

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        *,
        mode: str = "fine",
    ) -> None:
        super().__init__(root, split, transforms)
        if mode not in _MODES:
            raise PixelwiseError(f"Cityscapes mode {mode!r} is unknown; choose 'fine' or 'coarse'.")
        gt_folder, gt_splits = _MODES[mode]
        if split not in gt_splits:
            raise PixelwiseError(
                f"Cityscapes {gt_folder} has no split {split!r}; with mode={mode!r} choose one of "
                f"{', '.join(gt_splits)}."
            )
        self.mode = mode
        self.gt_folder = gt_folder

    @property
    def expected_folders(self) -> tuple[str, ...]:  # type: ignore[override]
        return (f"leftImg8bit/{self.split}", f"{self.gt_folder}/{self.split}")

    @staticmethod
    def to_label_ids(mask: Tensor | np.ndarray) -> np.ndarray:
        return to_label_ids(mask)

    def index_source(self) -> str:
        return f"the folder {self.root / 'leftImg8bit' / self.split} (its city folders)"

    def build_index(self) -> list[tuple[Path, Path]]:
        images = self.root / "leftImg8bit" / self.split
        labels = self.root / self.gt_folder / self.split
        # A city folder's mtime changes when files are added to it, so watch every city.
        watch = [images, labels] + sorted(
            p for d in (images, labels) for p in d.iterdir() if p.is_dir()
        )
        return cached_index(
            (self._index_key, self.root.resolve(), self.mode, self.split), watch, self._scan
        )

    def _scan(self) -> list[tuple[Path, Path]]:
        images = self.root / "leftImg8bit" / self.split
        labels = self.root / self.gt_folder / self.split
        samples = []
        for city in sorted(p.name for p in images.iterdir() if p.is_dir()):
            label_names = file_names(labels / city)
            for name in sorted(
                n for n in file_names(images / city) if n.endswith("_leftImg8bit.png")
            ):
                base = name[: -len("_leftImg8bit.png")]
                label = self._label_file(labels / city, base, label_names)
                if label.name not in label_names:
                    missing_file(
                        PixelwiseError(
                            f"Image {images / city / name} has no label: expected {label}; "
                            f"restore it from {self.gt_folder}_*.zip."
                        )
                    )
                samples.append((images / city / name, label))
        return samples

    def _label_file(self, folder: Path, base: str, names: set[str]) -> Path:
        """The label of frame ``base`` in ``folder`` (whose files are ``names``), present or not."""
        train_ids = f"{base}_{self.gt_folder}_labelTrainIds.png"
        if train_ids in names:
            return folder / train_ids
        return folder / f"{base}_{self.gt_folder}_labelIds.png"

    def load_image(self, sample: tuple[Path, Path]) -> Tensor:
        return read_image(sample[0])

    def load_mask(self, sample: tuple[Path, Path]) -> Tensor:
        label = sample[1]
        raw = read_label_png(label)
        if label.name.endswith("_labelTrainIds.png"):
            return to_mask(raw)  # already train ids; check_mask_values catches anything else
        return to_mask(apply_lut(raw, _LABEL_LUT, label, "label ids"))


#: Label ids of the classes with instances that Cityscapes evaluates, in label order 1..8.
INSTANCE_LABEL_IDS = (24, 25, 26, 27, 28, 31, 32, 33)
#: Classes with instances that the official instance evaluation leaves out (caravan, trailer).
_UNEVALUATED_INSTANCE_IDS = (29, 30)
_BY_ID = {lab.id: lab for lab in CITYSCAPES_LABELS}


@register_dataset("cityscapes_instances")
class CityscapesInstances(InstanceDataset, Cityscapes):
    """Cityscapes fine annotations as instances: 8 classes + background (see the module docstring)."""

    classes = ("background", *(_BY_ID[i].name for i in INSTANCE_LABEL_IDS))
    palette = ((0, 0, 0), *(_BY_ID[i].color for i in INSTANCE_LABEL_IDS))
    category_ids = (0, *INSTANCE_LABEL_IDS)
    splits = ("train", "val", "test")
    _index_key = "cityscapes_instances"

    def __init__(
        self, root: str | Path, split: str = "train", transforms: Transform | None = None
    ) -> None:
        super().__init__(root, split, transforms, mode="fine")

    def _label_file(self, folder: Path, base: str, names: set[str]) -> Path:
        return folder / f"{base}_gtFine_instanceIds.png"

    def load_objects(self, sample: tuple[Path, Path]) -> Objects:
        path = sample[1]
        raw = read_label_png(path)
        if raw.dtype.kind not in "iu":
            raise PixelwiseError(
                f"Label {path} holds {raw.dtype} values, not instance ids; re-extract it from "
                "gtFine_trainvaltest.zip."
            )
        values, inverse = np.unique(raw.astype(np.int64), return_inverse=True)
        inverse = inverse.reshape(raw.shape)
        label_ids = np.where(values >= 1000, values // 1000, values)
        bad = (values < 0) | (label_ids > 33)
        if bool(bad.any()):
            shown = values[bad][:5].tolist()
            raise PixelwiseError(
                f"Label {path} holds values {shown} that are no Cityscapes instance ids (label id "
                "0..33, or label id * 1000 + instance for label ids 24..33); check that the file "
                "is a *_gtFine_instanceIds.png from gtFine_trainvaltest.zip."
            )
        masks, labels, crowd = [], [], []
        for k, (value, label_id) in enumerate(zip(values, label_ids, strict=True)):
            if label_id not in INSTANCE_LABEL_IDS:
                continue
            masks.append(inverse == k)
            labels.append(INSTANCE_LABEL_IDS.index(int(label_id)) + 1)
            crowd.append(int(value < 1000))
        void_values = np.flatnonzero(np.isin(label_ids, _UNEVALUATED_INSTANCE_IDS))
        return Objects(
            masks=(
                np.stack(masks).astype(np.uint8)
                if masks
                else np.zeros((0, *raw.shape), dtype=np.uint8)
            ),
            labels=np.array(labels, dtype=np.int64),
            iscrowd=np.array(crowd, dtype=np.int64),
            void=np.isin(inverse, void_values) if void_values.size else None,
        )
