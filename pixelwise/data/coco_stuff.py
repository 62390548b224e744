"""COCO-Stuff 164k: the 118k/5k COCO 2017 images with dense thing + stuff labels (Caesar et al. 2018).

Layout (``root`` = the folder holding both unpacked archives)::

    images/train2017/000000000009.jpg ...         train2017.zip, val2017.zip (118,287 / 5,000)
    annotations/train2017/000000000009.png ...    stuffthingmaps_trainval2017.zip
    annotations/val2017/...

Labels are 8-bit single-channel PNGs holding ``COCO-Stuff id - 1``: 0..90 things (COCO ids 1..91),
91..181 stuff (ids 92..182), 255 = unlabeled (-> ignore). Eleven thing ids are defined but never
used (12 street sign, 26 hat, 29 shoe, 30 eye glasses, 45 plate, 66 mirror, 68 window, 69 desk,
71 door, 83 blender, 91 hair brush), which leaves the 171 classes everyone trains on; they get
contiguous train ids 0..170 in id order (what mmsegmentation writes as ``*_labelTrainIds.png``).
A pixel holding an unused id or a value above 181 is a labelling error and raises (nothing is
silently ignored). ``train_ids=True`` reads mmsegmentation's converted ``<id>_labelTrainIds.png``
files instead. The names below are the 182-line ``labels.txt`` of nightrome/cocostuff.
COCO-Stuff has no official palette; classes are coloured with the VOC colormap.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from pixelwise.data.base import (
    IGNORE_INDEX,
    SegmentationDataset,
    Transform,
    cached_index,
    read_image,
    read_label_png,
    register_dataset,
    to_mask,
    voc_colormap,
)
from pixelwise.errors import PixelwiseError

#: COCO-Stuff id -> name for ids 1..182 (entry ``i`` is id ``i + 1``); 0 is "unlabeled".
COCOSTUFF_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "bench", "bird",
    "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "hat",
    "backpack", "umbrella", "shoe", "eye glasses", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard",
    "surfboard", "tennis racket", "bottle", "plate", "wine glass", "cup", "fork", "knife",
    "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "mirror", "dining table",
    "window", "desk", "toilet", "door", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "blender", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush", "hair brush", "banner",
    "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard",
    "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter",
    "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other",
    "fruit", "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves",
    "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper",
    "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf",
    "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone", "straw",
    "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable",
    "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
#: Thing ids defined by COCO but absent from every annotation.
UNUSED_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91)
#: The 171 ids that are used, in id order; ``USED_IDS[train_id]`` is the COCO-Stuff id.
USED_IDS = tuple(i for i in range(1, 183) if i not in UNUSED_IDS)
COCOSTUFF171_CLASSES = tuple(COCOSTUFF_NAMES[i - 1] for i in USED_IDS)

#: Raw PNG value (id - 1) -> train id; 255 stays ignore; unused ids and 182..254 are marked -1.
_LUT = np.full(256, -1, dtype=np.int64)
_LUT[[i - 1 for i in USED_IDS]] = np.arange(len(USED_IDS))
_LUT[IGNORE_INDEX] = IGNORE_INDEX


def raw_to_train_ids(raw: np.ndarray, where: str) -> np.ndarray:
    """Map raw COCO-Stuff PNG values to train ids 0..170 / 255, raising on undefined values."""
    if raw.size and (int(raw.max()) > 255 or int(raw.min()) < 0):
        raise PixelwiseError(
            f"Label {where} holds the value {int(raw.max())}; stuffthingmaps PNGs are 8-bit "
            "(value = COCO-Stuff id - 1, 255 = unlabeled); re-extract the archive."
        )
    mapped = _LUT[raw]
    bad = mapped < 0
    if bad.any():
        ids = (np.unique(raw[bad])[:5] + 1).tolist()
        raise PixelwiseError(
            f"Label {where} holds COCO-Stuff ids {ids} that no class uses (the unused thing ids "
            f"{UNUSED_IDS} or ids above 182); check that it is a stuffthingmaps PNG (value = id - 1)."
        )
    return mapped


@register_dataset("coco_stuff")
class COCOStuff(SegmentationDataset):
    """COCO-Stuff 164k, 171 classes: 118,287 train / 5,000 val images.

    Args:
        root: folder holding ``images/`` and ``annotations/``.
        split: ``"train"`` or ``"val"``.
        transforms: joint transform of ``(image, mask)``.
        train_ids: read ``<id>_labelTrainIds.png`` (already 0..170 / 255) instead of ``<id>.png``.
    """

    home = "cocostuff"
    source = "the 2017 images from cocodataset.org and stuffthingmaps_trainval2017.zip from github.com/nightrome/cocostuff"

    classes = COCOSTUFF171_CLASSES
    palette = voc_colormap(len(COCOSTUFF171_CLASSES), start=1)
    splits = ("train", "val")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        *,
        train_ids: bool = False,
    ) -> None:
        super().__init__(root, split, transforms)
        self.train_ids = train_ids

    @property
    def expected_folders(self) -> tuple[str, ...]:  # type: ignore[override]
        return (f"images/{self.split}2017", f"annotations/{self.split}2017")

    def index_source(self) -> str:
        return f"the folder {self.root / 'images' / f'{self.split}2017'}"

    def build_index(self) -> list[tuple[Path, Path]]:
        images = self.root / "images" / f"{self.split}2017"
        labels = self.root / "annotations" / f"{self.split}2017"
        suffix = "_labelTrainIds.png" if self.train_ids else ".png"

        def scan() -> list[tuple[Path, Path]]:
            return [
                (path, labels / f"{path.stem}{suffix}") for path in sorted(images.glob("*.jpg"))
            ]

        key = ("coco_stuff", self.root.resolve(), self.split, suffix)
        return cached_index(key, [images, labels], scan)

    def load_image(self, sample: tuple[Path, Path]) -> Tensor:
        return read_image(sample[0])

    def load_mask(self, sample: tuple[Path, Path]) -> Tensor:
        raw = read_label_png(sample[1])
        if self.train_ids:  # converted already; the mask check flags anything above 170
            return to_mask(raw)
        return to_mask(raw_to_train_ids(raw, str(sample[1])))
