"""PASCAL VOC 2012 segmentation, with the SBD annotations of Hariharan et al. (2011).

VOC layout (``root`` = ``VOCdevkit/VOC2012``)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png          palette ("P") PNG: index = class, 255 = void/boundary
    ImageSets/Segmentation/{train,val,trainval}.txt     1464 / 1449 / 2913 ids
    SegmentationClassAug/<id>.png       optional, prepared by other toolkits: plain 8-bit indices
    ImageSets/Segmentation/trainaug.txt optional, the 10582 ids that go with it

SBD layout (option ``sbd_root`` = ``benchmark_RELEASE/dataset``)::

    img/<id>.jpg
    cls/<id>.mat        MATLAB struct GTcls; GTcls.Segmentation is the HxW uint8 class map (0..20)
    train.txt val.txt   8498 / 2857 ids

Label PNGs are read as palette indices, never as RGB: the palette is only for display. Index 255
(the cream-coloured boundary band) stays 255 = ignore; SBD has no void band.

Splits:

- ``train``, ``val``, ``trainval``: the VOC 2012 lists.
- ``trainaug``: VOC train + SBD train + SBD val minus VOC val (10582 images with the real data).
  The label is VOC's ``SegmentationClass/<id>.png`` when the id has one, else
  ``SegmentationClassAug/<id>.png`` when that folder exists, else SBD's ``cls/<id>.mat``. Without
  ``sbd_root`` it needs both ``SegmentationClassAug/`` and ``ImageSets/Segmentation/trainaug.txt``.
- ``seg11valid``: the 736 VOC 2011 val images that are not in SBD train, on which FCN reports its
  numbers. The list ships with pixelwise (``pixelwise/data/lists/voc_seg11valid.txt``).
- ``sbd_train``, ``sbd_val``: SBD's own lists, images and labels from ``sbd_root`` (FCN trains on
  ``sbd_train`` and validates on ``seg11valid``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from pixelwise.data.base import (
    SegmentationDataset,
    Transform,
    cached_index,
    error_text,
    file_names,
    parse_list_file,
    read_image,
    read_label_png,
    read_mat,
    register_dataset,
    to_mask,
    voc_colormap,
)
from pixelwise.errors import PixelwiseError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

LISTS_DIR = Path(__file__).with_name("lists")
SEG11VALID_LIST = LISTS_DIR / "voc_seg11valid.txt"

_VOC_SPLITS = ("train", "val", "trainval")
_SBD_SPLITS = {"sbd_train": "train", "sbd_val": "val"}


VOC_PALETTE = voc_colormap(len(VOC_CLASSES))


def read_sbd_mat(path: Path) -> np.ndarray:
    """The class map of one SBD ``cls/<id>.mat`` file: ``mat['GTcls'][0]['Segmentation'][0]``.

    ``GTcls`` is a 1x1 MATLAB struct; ``loadmat`` makes it a (1, 1) record array, so ``[0]`` picks
    the row, ``['Segmentation']`` the field (one object per column) and ``[0]`` the HxW array.
    """
    fix = "re-extract it from benchmark_RELEASE/dataset/cls of the SBD download."
    mat = read_mat(path, "Label", fix, variable_names=["GTcls"])
    try:
        segmentation = np.asarray(mat["GTcls"][0]["Segmentation"][0])
    except (KeyError, IndexError, ValueError, TypeError) as error:
        raise PixelwiseError(
            f"Label {path} is not an SBD class file with GTcls.Segmentation "
            f"({error_text(error)}); {fix}"
        ) from None
    if segmentation.ndim != 2 or segmentation.dtype.kind not in "iu":
        raise PixelwiseError(
            f"Label {path} has a GTcls.Segmentation of shape {segmentation.shape} and type "
            f"{segmentation.dtype}, not an HxW integer class map; {fix}"
        )
    return segmentation


@register_dataset("voc")
class VOC(SegmentationDataset):
    """PASCAL VOC 2012: 21 classes (background + 20 objects), optionally augmented with SBD."""

    classes = VOC_CLASSES
    palette = VOC_PALETTE
    splits = ("train", "val", "trainval", "trainaug", "seg11valid", "sbd_train", "sbd_val")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        *,
        sbd_root: str | Path | None = None,
    ) -> None:
        super().__init__(root, split, transforms)
        self.sbd_root = Path(sbd_root).expanduser() if sbd_root is not None else None

    @property
    def expected_folders(self) -> tuple[str, ...]:  # type: ignore[override]
        if self.split in _SBD_SPLITS:
            return ()  # everything comes from sbd_root
        return ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation")

    def _needs_sbd(self) -> bool:
        if self.split in _SBD_SPLITS:
            return True
        return self.split == "trainaug" and not self._has_prepared_aug()

    def _has_prepared_aug(self) -> bool:
        return (self.root / "SegmentationClassAug").is_dir() and (
            self.root / "ImageSets/Segmentation/trainaug.txt"
        ).is_file()

    def check_root(self) -> None:
        super().check_root()
        if not self._needs_sbd():
            return
        if self.sbd_root is None:
            raise PixelwiseError(
                f"Split {self.split!r} of voc needs the SBD annotations: pass the option "
                "sbd_root=<path to benchmark_RELEASE/dataset>"
                + (
                    " (or prepare SegmentationClassAug/ and ImageSets/Segmentation/trainaug.txt "
                    f"under {self.root})."
                    if self.split == "trainaug"
                    else "."
                )
            )
        for name in ("img", "cls", "train.txt", "val.txt"):
            if not (self.sbd_root / name).exists():
                raise PixelwiseError(
                    f"{self.sbd_root} is not an SBD root: expected {name} inside it; point sbd_root "
                    "at benchmark_RELEASE/dataset of the SBD download."
                )

    # -- index ---------------------------------------------------------------------------------
    def index_source(self) -> str:
        sets = self.root / "ImageSets/Segmentation"
        if self.split in _VOC_SPLITS:
            return str(sets / f"{self.split}.txt")
        if self.split == "seg11valid":
            return str(SEG11VALID_LIST)
        if self.split in _SBD_SPLITS:
            return str(Path(self.sbd_root or "") / f"{_SBD_SPLITS[self.split]}.txt")
        if self.sbd_root is None:
            return str(sets / "trainaug.txt")
        return f"{sets / 'train.txt'} with {self.sbd_root}/train.txt and val.txt, less {sets / 'val.txt'}"

    def build_index(self) -> list[tuple[Path, Path]]:
        sets = self.root / "ImageSets/Segmentation"
        # list files are watched themselves: editing one in place leaves its folder's mtime alone
        watch = [sets / f"{name}.txt" for name in ("train", "val", "trainval", "trainaug")]
        watch += [self.root / "JPEGImages", self.root / "SegmentationClass"]
        watch.append(self.root / "SegmentationClassAug")
        if self.sbd_root is not None:
            watch += [self.sbd_root / "train.txt", self.sbd_root / "val.txt", self.sbd_root / "cls"]
        key = ("voc", self.root.resolve(), self.split, self.sbd_root and self.sbd_root.resolve())
        return cached_index(key, watch, self._scan)

    def _scan(self) -> list[tuple[Path, Path]]:
        sets = self.root / "ImageSets/Segmentation"
        if self.split in _VOC_SPLITS:
            return [self._voc_pair(i) for i in parse_list_file(sets / f"{self.split}.txt")]
        if self.split == "seg11valid":
            return [self._voc_pair(i) for i in parse_list_file(SEG11VALID_LIST)]
        if self.split in _SBD_SPLITS:
            sbd = Path(self.sbd_root or "")  # check_root has made sure it is set
            ids = parse_list_file(sbd / f"{_SBD_SPLITS[self.split]}.txt")
            return [(sbd / "img" / f"{i}.jpg", sbd / "cls" / f"{i}.mat") for i in ids]
        return self._scan_trainaug()

    def _voc_pair(self, image_id: str) -> tuple[Path, Path]:
        return (
            self.root / "JPEGImages" / f"{image_id}.jpg",
            self.root / "SegmentationClass" / f"{image_id}.png",
        )

    def _scan_trainaug(self) -> list[tuple[Path, Path]]:
        sets = self.root / "ImageSets/Segmentation"
        if self.sbd_root is None:  # check_root allowed this only with a prepared Aug folder
            ids = parse_list_file(sets / "trainaug.txt")
        else:
            val = set(parse_list_file(sets / "val.txt"))
            candidates = parse_list_file(sets / "train.txt")
            candidates += parse_list_file(self.sbd_root / "train.txt")
            candidates += parse_list_file(self.sbd_root / "val.txt")
            # dict.fromkeys: drop repeats but keep the first-seen order, so the index is stable
            ids = [i for i in dict.fromkeys(candidates) if i not in val]
        voc_labels = file_names(self.root / "SegmentationClass")
        aug_labels = file_names(self.root / "SegmentationClassAug")
        voc_images = file_names(self.root / "JPEGImages")
        samples = []
        for image_id in ids:
            if f"{image_id}.jpg" in voc_images or self.sbd_root is None:
                image = self.root / "JPEGImages" / f"{image_id}.jpg"
            else:
                image = self.sbd_root / "img" / f"{image_id}.jpg"
            if f"{image_id}.png" in voc_labels:
                label = self.root / "SegmentationClass" / f"{image_id}.png"
            elif f"{image_id}.png" in aug_labels or self.sbd_root is None:
                label = self.root / "SegmentationClassAug" / f"{image_id}.png"
            else:
                label = self.sbd_root / "cls" / f"{image_id}.mat"
            samples.append((image, label))
        return samples

    # -- decoding ------------------------------------------------------------------------------
    def load_image(self, sample: tuple[Path, Path]) -> Tensor:
        return read_image(sample[0])

    def load_mask(self, sample: tuple[Path, Path]) -> Tensor:
        label = sample[1]
        raw = read_sbd_mat(label) if label.suffix == ".mat" else read_label_png(label)
        # VOC ids are the class ids already and 255 is already ignore; values 21..254 are left
        # for check_mask_values, which names the file.
        return to_mask(raw)
