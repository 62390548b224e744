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

``voc_instances`` reads the objects of the same images: ``SegmentationObject/<id>.png`` (palette
indices: 0 background, 1..K one per object, 255 the void band) for ``train``, ``val`` and
``trainval``, and SBD's ``inst/<id>.mat`` (struct ``GTinst``, field ``Segmentation``: 0
background, 1..K objects) for ``sbd_train`` and ``sbd_val``. An object's class is the majority of
the class map under its pixels (``SegmentationClass/<id>.png``, or SBD's ``cls/<id>.mat``),
ignoring 0 and 255, so both sources go through one rule; ``GTinst.Categories`` is not read. The
20 classes are labels 1..20 (= their VOC class index); VOC has no crowd regions, and its void
band is ignore in the painted class map.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

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
from pixelwise.data.home import home_root
from pixelwise.data.instances import InstanceDataset, Objects
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


def read_sbd_mat(path: Path, struct: str = "GTcls") -> np.ndarray:
    """The map of one SBD ``.mat`` file: ``mat[struct][0]['Segmentation'][0]``.

    ``struct`` is ``"GTcls"`` for ``cls/<id>.mat`` (class ids) or ``"GTinst"`` for
    ``inst/<id>.mat`` (instance ids). It is a 1x1 MATLAB struct; ``loadmat`` makes it a (1, 1)
    record array, so ``[0]`` picks the row, ``['Segmentation']`` the field (one object per
    column) and ``[0]`` the HxW array.
    """
    folder = "inst" if struct == "GTinst" else "cls"
    fix = f"re-extract it from benchmark_RELEASE/dataset/{folder} of the SBD download."
    mat = read_mat(path, "Label", fix, variable_names=[struct])
    try:
        segmentation = np.asarray(mat[struct][0]["Segmentation"][0])
    except (KeyError, IndexError, ValueError, TypeError) as error:
        raise PixelwiseError(
            f"Label {path} is not an SBD {folder} file with {struct}.Segmentation "
            f"({error_text(error)}); {fix}"
        ) from None
    if segmentation.ndim != 2 or segmentation.dtype.kind not in "iu":
        raise PixelwiseError(
            f"Label {path} has a {struct}.Segmentation of shape {segmentation.shape} and type "
            f"{segmentation.dtype}, not an HxW integer map; {fix}"
        )
    return segmentation


#: Where SBD lives in the data home when no sbd_root is given.
SBD_HOME = "benchmark_RELEASE/dataset"


@register_dataset("voc")
class VOC(SegmentationDataset):
    """PASCAL VOC 2012: 21 classes (background + 20 objects), optionally augmented with SBD."""

    home = "VOCdevkit/VOC2012"
    source = "VOCtrainval_11-May-2012.tar from host.robots.ox.ac.uk/pascal/VOC/voc2012"

    classes = VOC_CLASSES
    palette = VOC_PALETTE
    splits = ("train", "val", "trainval", "trainaug", "seg11valid", "sbd_train", "sbd_val")
    #: What ``sbd_root`` must hold for the splits that read SBD.
    _sbd_entries: ClassVar[tuple[str, ...]] = ("img", "cls", "train.txt", "val.txt")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        *,
        sbd_root: str | Path | None = None,
    ) -> None:
        super().__init__(root, split, transforms)
        if sbd_root is None and home_root(SBD_HOME).is_dir():
            sbd_root = home_root(SBD_HOME)  # SBD unpacked beside VOC in the data home
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
                f"sbd_root=<path to benchmark_RELEASE/dataset>, or unpack SBD at {home_root(SBD_HOME)}"
                + (
                    " (or prepare SegmentationClassAug/ and ImageSets/Segmentation/trainaug.txt "
                    f"under {self.root})."
                    if self.split == "trainaug"
                    else "."
                )
            )
        for name in self._sbd_entries:
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


def objects_from_maps(
    instances: np.ndarray,
    classes: np.ndarray,
    instance_file: Path,
    class_file: Path,
    *,
    void: int | None,
) -> Objects:
    """The objects of an instance-id map, each given the majority class under its pixels.

    ``void`` is the instance map's value for unlabelled pixels (255 in VOC's PNGs, None for SBD).
    Class values 0 and 255 do not vote; an object under which no pixel holds a class 1..20 means
    the two files do not belong together and raises, as does a class value outside 0..20 and 255.
    """
    if instances.shape != classes.shape:
        raise PixelwiseError(
            f"Label {instance_file} is {instances.shape[1]}x{instances.shape[0]} but its class map "
            f"{class_file} is {classes.shape[1]}x{classes.shape[0]}; re-extract both."
        )
    classes = classes.astype(np.int64)
    outside = ((classes < 0) | (classes > 20)) & (classes != 255)
    if bool(outside.any()):
        raise PixelwiseError(
            f"Label {class_file} holds class values {np.unique(classes[outside])[:5].tolist()} "
            "outside the 20 VOC classes (0..20, 255 = void); check that the dataset name and root "
            "match the labels."
        )
    instances = instances.astype(np.int64)
    if instances.min(initial=0) < 0:
        raise PixelwiseError(f"Label {instance_file} holds negative instance ids; re-extract it.")
    objects = instances > 0
    if void is not None:
        objects &= instances != void
    ids = np.unique(instances[objects])
    votes = np.zeros((len(ids), 21), dtype=np.int64)
    if len(ids):
        voting = objects & (classes >= 1) & (classes <= 20)
        slot = np.searchsorted(ids, instances[voting])
        np.add.at(votes, (slot, classes[voting]), 1)
    silent = votes.sum(axis=1) == 0
    if bool(silent.any()):
        raise PixelwiseError(
            f"Label {instance_file}: objects {ids[silent][:5].tolist()} cover no class pixels in "
            f"{class_file}; the two files do not belong together, re-extract them."
        )
    return Objects(
        masks=(instances[None] == ids[:, None, None]).astype(np.uint8),
        labels=votes.argmax(axis=1),
        iscrowd=np.zeros(len(ids), dtype=np.int64),
        void=instances == void if void is not None else None,
    )


@register_dataset("voc_instances")
class VOCInstances(InstanceDataset, VOC):
    """PASCAL VOC 2012 objects (and SBD's): 20 classes + background (see the module docstring).

    Args:
        root: ``VOCdevkit/VOC2012``.
        split: ``train``, ``val``, ``trainval`` (VOC) or ``sbd_train``, ``sbd_val`` (SBD).
        transforms: joint transform of ``(image, target)``.
        sbd_root: ``benchmark_RELEASE/dataset`` of SBD, for the ``sbd_*`` splits.
    """

    category_ids = tuple(range(len(VOC_CLASSES)))
    splits = ("train", "val", "trainval", "sbd_train", "sbd_val")
    _sbd_entries = ("img", "inst", "cls", "train.txt", "val.txt")

    @property
    def expected_folders(self) -> tuple[str, ...]:  # type: ignore[override]
        if self.split in _SBD_SPLITS:
            return ()
        return ("JPEGImages", "SegmentationObject", "SegmentationClass", "ImageSets/Segmentation")

    def build_index(self) -> list[tuple[Path, Path, Path]]:
        sets = self.root / "ImageSets/Segmentation"
        watch = [sets / f"{name}.txt" for name in _VOC_SPLITS]
        watch += [self.root / d for d in ("JPEGImages", "SegmentationObject", "SegmentationClass")]
        if self.sbd_root is not None:
            watch += [self.sbd_root / n for n in ("train.txt", "val.txt", "inst", "cls")]
        key = (
            "voc_instances",
            self.root.resolve(),
            self.split,
            self.sbd_root and self.sbd_root.resolve(),
        )
        return cached_index(key, watch, self._scan)

    def _scan(self) -> list[tuple[Path, Path, Path]]:
        if self.split in _SBD_SPLITS:
            sbd = Path(self.sbd_root or "")  # check_root has made sure it is set
            ids = parse_list_file(sbd / f"{_SBD_SPLITS[self.split]}.txt")
            return [
                (sbd / "img" / f"{i}.jpg", sbd / "inst" / f"{i}.mat", sbd / "cls" / f"{i}.mat")
                for i in ids
            ]
        ids = parse_list_file(self.root / "ImageSets/Segmentation" / f"{self.split}.txt")
        return [
            (
                self.root / "JPEGImages" / f"{i}.jpg",
                self.root / "SegmentationObject" / f"{i}.png",
                self.root / "SegmentationClass" / f"{i}.png",
            )
            for i in ids
        ]

    def describe(self, sample: tuple[Path, Path, Path]) -> str:
        return str(sample[1])

    def sample_files(self, sample: tuple[Path, Path, Path]) -> dict[str, Path]:
        """The image and the object label, for ``datasets check`` (the class map is read too)."""
        return {"image": sample[0], "label": sample[1]}

    def load_objects(self, sample: tuple[Path, Path, Path]) -> Objects:
        _, instance_file, class_file = sample
        if instance_file.suffix == ".mat":
            instances = read_sbd_mat(instance_file, "GTinst")
            classes = read_sbd_mat(class_file)
            return objects_from_maps(instances, classes, instance_file, class_file, void=None)
        instances = read_label_png(instance_file)
        classes = read_label_png(class_file)
        return objects_from_maps(instances, classes, instance_file, class_file, void=255)
