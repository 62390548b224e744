"""SUN RGB-D, the 37-class semantic segmentation release (Song et al. 2015; Handa et al.).

SUN RGB-D's own labels live in ``SUNRGBD2Dseg.mat`` (64 GB of RAM to load); the community uses
the flattened release of ``ankurhanda/sunrgbd-meta-data`` instead, which this loader reads.

Layout (``root`` = the folder holding the unpacked downloads)::

    SUNRGBD-train_images/img-000001.jpg .. img-005285.jpg    (SUNRGBD-train_images.tgz)
    SUNRGBD-test_images/img-000001.jpg .. img-005050.jpg     (SUNRGBD-test_images.tgz)
    sunrgbd_train_test_labels/img-000001.png .. img-010335.png  (sunrgbd_train_test_labels.tar.gz)
    sunrgbd_training_images.txt   5285 lines, the original SUNRGBD/... path of each train image
    sunrgbd_testing_images.txt    5050 lines, likewise for test

The label tarball numbers test and train in one sequence: labels 1..5050 are the test images in
order, labels 5051..10335 the train images, so train image ``img-k`` pairs with label
``img-(5050+k)`` and test image ``img-k`` with label ``img-k``. The list files fix the order and the
counts; when they are absent the image folders are listed instead.

Labels are 8-bit PNGs: 0 = unlabeled (-> 255), 1..37 the classes of ``seg37list.mat``
(-> 0..36). A raw value above 37 is kept as it is so that the mask check names it (255 stays
ignore). There is no official palette; like pytorch-semseg we colour class ``c`` with the
PASCAL VOC bit-interleaved colormap entry ``c + 1`` (entry 0, black, is left for void).
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
    parse_list_file,
    read_image,
    read_label_png,
    register_dataset,
    to_mask,
    voc_colormap,
)
from pixelwise.errors import PixelwiseError

SUNRGBD37_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor_mat", "clothes", "ceiling", "books", "fridge", "tv", "paper", "towel", "shower_curtain",
    "box", "whiteboard", "person", "night_stand", "toilet", "sink", "lamp", "bathtub", "bag",
)  # fmt: skip

#: Number of test images; the label tarball numbers them first.
NUM_TEST = 5050
NUM_TRAIN = 5285


def raw_to_train_lut(num_classes: int) -> np.ndarray:
    """LUT for "0 = void, 1..C = classes": 0 -> 255, c -> c-1, anything above C kept as is.

    Keeping out-of-range raw values (rather than sending them to 255) lets the mask check report
    them by their real value instead of silently ignoring a labelling mistake.
    """
    lut = np.arange(256, dtype=np.int64)
    lut[0] = IGNORE_INDEX
    lut[1 : num_classes + 1] = np.arange(num_classes)
    return lut


_LUT = raw_to_train_lut(len(SUNRGBD37_CLASSES))


@register_dataset("sunrgbd")
class SUNRGBD(SegmentationDataset):
    """SUN RGB-D 37 classes: 5285 train / 5050 test images of four RGB-D sensors.

    Args:
        root: folder holding the three unpacked downloads and the two list files.
        split: ``"train"`` or ``"test"``.
        transforms: joint transform of ``(image, mask)``.
        train_images, test_images, labels: folder names, when the downloads were unpacked
            elsewhere under ``root``.
    """

    home = "sunrgbd"
    source = "SUNRGBD.zip and its 37-class labels from rgbd.cs.princeton.edu"

    classes = SUNRGBD37_CLASSES
    palette = voc_colormap(len(SUNRGBD37_CLASSES), start=1)
    splits = ("train", "test")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        *,
        train_images: str = "SUNRGBD-train_images",
        test_images: str = "SUNRGBD-test_images",
        labels: str = "sunrgbd_train_test_labels",
    ) -> None:
        super().__init__(root, split, transforms)
        self.image_folder = train_images if split == "train" else test_images
        self.label_folder = labels

    @property
    def expected_folders(self) -> tuple[str, ...]:  # type: ignore[override]
        return (self.image_folder, self.label_folder)

    @property
    def list_file(self) -> Path:
        name = "training" if self.split == "train" else "testing"
        return self.root / f"sunrgbd_{name}_images.txt"

    def index_source(self) -> str:
        if self.list_file.is_file():
            return str(self.list_file)
        return f"the folder {self.root / self.image_folder}"

    def build_index(self) -> list[tuple[Path, Path]]:
        watch = [self.list_file, self.root / self.image_folder, self.root / self.label_folder]
        key = ("sunrgbd", self.root.resolve(), self.split, self.image_folder, self.label_folder)
        return cached_index(key, watch, self._scan)

    def _count(self) -> int:
        if self.list_file.is_file():
            return len(parse_list_file(self.list_file))
        images = sorted(
            p for p in (self.root / self.image_folder).glob("img-*.jpg") if p.stem[4:].isdigit()
        )
        if not images:
            raise PixelwiseError(
                f"{self.root / self.image_folder} holds no img-NNNNNN.jpg files and "
                f"{self.list_file.name} is absent; unpack SUNRGBD-{self.split}_images.tgz there."
            )
        return max(int(p.stem[4:]) for p in images)

    def _scan(self) -> list[tuple[Path, Path]]:
        # Train labels come after the 5050 test labels in the one numbered sequence.
        offset = NUM_TEST if self.split == "train" else 0
        images, labels = self.root / self.image_folder, self.root / self.label_folder
        return [
            (images / f"img-{k:06d}.jpg", labels / f"img-{k + offset:06d}.png")
            for k in range(1, self._count() + 1)
        ]

    def load_image(self, sample: tuple[Path, Path]) -> Tensor:
        return read_image(sample[0])

    def load_mask(self, sample: tuple[Path, Path]) -> Tensor:
        raw = read_label_png(sample[1])
        if raw.size and (int(raw.max()) > 255 or int(raw.min()) < 0):
            value = int(raw.max()) if int(raw.max()) > 255 else int(raw.min())
            raise PixelwiseError(
                f"Label {sample[1]} holds the value {value}; SUN RGB-D labels are 0..37 "
                "(0 = unlabeled); re-extract sunrgbd_train_test_labels.tar.gz."
            )
        return to_mask(_LUT[raw])
