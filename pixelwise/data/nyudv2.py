"""NYU Depth v2, the 1449 densely labelled indoor frames (Silberman et al. 2012), 40 or 13 classes.

Official layout (``root`` = the folder holding the three files)::

    nyu_depth_v2_labeled.mat   MATLAB v7.3, i.e. HDF5 (read with h5py), stored column-major so
                               that h5py sees every array transposed:
        images   (1449, 3, 640, 480) uint8   -> image i is images[i].transpose(0, 2, 1): 3x480x640
        labels   (1449, 640, 480)    uint16  -> labels[i].T; 0 = unlabeled, 1..894 index 'names'
        depths   (1449, 640, 480)    float   -> depths[i].T, metres (in-painted)
    splits.mat                 'trainNdxs' (795x1), 'testNdxs' (654x1), 1-based into the 1449
    classMapping40.mat         'mapClass' (1x894, values 1..40), 'className' (1x40)   (Gupta et al.)

``splits.mat`` and ``classMapping40.mat`` come from ``ankurhanda/nyuv2-meta-data`` (or the NYU
toolbox); both may also be given as options (``splits_file``, ``mapping40_file``). Splits:
``train`` = ``trainval`` = the 795 ``trainNdxs`` (FCN trains on these and calls them trainval),
``test`` = the 654 ``testNdxs``; there is no ``val`` in this layout.

FCN layout (``root`` = fcn.berkeleyvision.org's ``data/nyud``), found when the .mat file is absent::

    data/images/img_5001.png ...      RGB 640x480 (img_<5000 + 1-based index>)
    segmentation/img_5001.mat         'segmentation' uint8 HxW, 0 = void, 1..40 already mapped
    train.txt (381)  val.txt (414)  test.txt (654)  [trainval.txt (795) = train + val]

Classes. ``class_set=40`` (default): the 40 classes of Gupta et al. (FCN's ``classes.txt`` order);
raw id r -> ``mapClass[r] - 1``, 0 -> 255. ``class_set=13``: the 13 classes of Couprie et al.
2013 / Eigen & Fergus 2015 (bed, books, ceiling, chair, floor, furniture, objects, picture, sofa,
table, tv, wall, window). The official mapping (``class13Mapping.mat`` of
``ankurhanda/nyuv2-meta-data``, field ``classMapping13.mapClass``) maps the *40* classes to 13, so
the 13-class mask is 894 -> 40 -> 13; the 40 -> 13 table is shipped below
(``NYU40_TO_13``, as tabulated in ``howard-mahe/nyudv2_class_mapping``) and may be replaced by the
file through ``mapping13_file`` (a 40-entry or a direct 894-entry ``mapClass`` are both accepted).
A raw id outside the table is kept as is so that the mask check names it. There is no official
palette; classes are coloured with the VOC colormap (as pytorch-semseg does).

Depth. With ``depth=True`` (official layout only) a sample's image is **float32 4xHxW**: R, G, B
in 0..255 followed by depth in metres; :meth:`NYUDv2.load_image` still returns the ``uint8`` RGB
image and :meth:`NYUDv2.load_depth` the ``float32`` 1xHxW depth. The default transforms normalise
three channels, so RGB-D training needs transforms that handle the fourth.

The HDF5 file is opened lazily in each process (``h5py`` handles do not survive ``fork``), and
closed handles are never pickled into DataLoader workers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pixelwise.data.base import (
    IGNORE_INDEX,
    SegmentationDataset,
    Transform,
    cached_index,
    error_text,
    parse_list_file,
    read_image,
    read_mat,
    register_dataset,
    to_mask,
    voc_colormap,
)
from pixelwise.errors import PixelwiseError

NYU40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip
NYU13_CLASSES = (
    "bed", "books", "ceiling", "chair", "floor", "furniture", "objects", "picture", "sofa",
    "table", "tv", "wall", "window",
)  # fmt: skip
#: 1-based 13-class id of each 1-based 40-class id (class13Mapping.mat's mapClass).
NYU40_TO_13 = (
    12, 5, 6, 1, 4, 9, 10, 12, 13, 6, 8, 6, 13, 10, 6, 13, 6, 7, 7, 5,
    7, 3, 2, 6, 11, 7, 7, 7, 7, 7, 7, 6, 7, 7, 7, 7, 7, 7, 6, 7,
)  # fmt: skip

NUM_RAW_CLASSES = 894
LABELED_FILE = "nyu_depth_v2_labeled.mat"


_META_FIX = (
    "get it from github.com/ankurhanda/nyuv2-meta-data and put it in the dataset root or pass "
    "its path as an option."
)


def load_mat(path: Path, what: str) -> dict[str, Any]:
    """``scipy.io.loadmat`` with an error that names the file and where it comes from."""
    return read_mat(path, what, _META_FIX)


def mat_field(mat: dict[str, Any], key: str, path: Path, what: str) -> np.ndarray:
    """``mat[key]`` as an integer array, or one sentence naming the file and the missing field."""
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise PixelwiseError(
            f"{what} {path} has no {key!r} (it holds {', '.join(found) or 'nothing'}); {_META_FIX}"
        )
    array = np.asarray(mat[key])
    if array.dtype.kind not in "iuf" or array.size == 0:
        raise PixelwiseError(
            f"{what} {path} has a {key!r} of type {array.dtype} and size {array.size}, not a list "
            f"of integers; {_META_FIX}"
        )
    return array.ravel().astype(np.int64)


def read_mapping40(path: Path) -> np.ndarray:
    """``mapClass`` of classMapping40.mat: 894 values in 1..40 (entry r-1 for raw id r)."""
    what = "The 40-class mapping"
    mapping = mat_field(load_mat(path, what), "mapClass", path, what)
    if mapping.size != NUM_RAW_CLASSES or mapping.min() < 1 or mapping.max() > 40:
        raise PixelwiseError(
            f"{path} 'mapClass' has {mapping.size} entries in {mapping.min()}..{mapping.max()}; "
            "expected 894 in 1..40: use classMapping40.mat of ankurhanda/nyuv2-meta-data."
        )
    return mapping


def read_mapping13(path: Path) -> np.ndarray:
    """``mapClass`` of class13Mapping.mat (struct ``classMapping13``) or classMapping13.mat.

    Returns the 1-based 13-class ids of either the 40 classes or, directly, the 894 raw classes.
    """
    what = "The 13-class mapping"
    mat = load_mat(path, what)
    if "classMapping13" in mat:
        struct = np.asarray(mat["classMapping13"])
        names = struct.dtype.names or ()
        if "mapClass" not in names or struct.size != 1:
            raise PixelwiseError(
                f"{path} 'classMapping13' has no 'mapClass' field (it has "
                f"{', '.join(names) or 'no fields'}); use class13Mapping.mat of "
                "ankurhanda/nyuv2-meta-data."
            )
        mapping = mat_field({"mapClass": struct.ravel()[0]["mapClass"]}, "mapClass", path, what)
    elif "mapClass" in mat:
        mapping = mat_field(mat, "mapClass", path, what)
    else:
        raise PixelwiseError(
            f"{path} holds neither 'classMapping13' nor 'mapClass'; use class13Mapping.mat of "
            "ankurhanda/nyuv2-meta-data."
        )
    if mapping.size not in (40, NUM_RAW_CLASSES) or mapping.min() < 1 or mapping.max() > 13:
        raise PixelwiseError(
            f"{path} maps {mapping.size} classes to {mapping.min()}..{mapping.max()}; expected 40 "
            "or 894 entries in 1..13."
        )
    return mapping


def raw_to_13(table: np.ndarray, raw_to_40: np.ndarray | None, path: Path | None) -> np.ndarray:
    """The 13-class id of every raw label value, from a 40-entry or an 894-entry ``table``.

    ``raw_to_40`` is the 894 -> 40 mapping of the official layout, or None for FCN's labels,
    which hold the 40 classes already. A 40-entry table is indexed by the 40-class ids; an
    894-entry table is indexed by the raw ids, which FCN's labels no longer hold, so it is refused
    there rather than read at the wrong positions.
    """
    if table.size == 40:
        return table if raw_to_40 is None else table[raw_to_40 - 1]
    if raw_to_40 is None:
        raise PixelwiseError(
            f"{path} maps the 894 raw NYUDv2 classes, but FCN's data/nyud labels hold the 40 classes "
            "already; give a 40-entry table (class13Mapping.mat) or leave mapping13_file out to "
            "use the built-in 40 -> 13 table."
        )
    return table


def label_lut(raw_to_class: np.ndarray, size: int) -> np.ndarray:
    """LUT over raw values: 0 -> 255, r -> ``raw_to_class[r-1] - 1``, values beyond kept as is."""
    lut = np.arange(size, dtype=np.int64)
    lut[0] = IGNORE_INDEX
    lut[1 : raw_to_class.size + 1] = raw_to_class - 1
    return lut


@register_dataset("nyudv2")
class NYUDv2(SegmentationDataset):
    """NYU Depth v2 labelled set: 795 train / 654 test frames at 640x480, 40 or 13 classes.

    Args:
        root: folder holding ``nyu_depth_v2_labeled.mat`` (or FCN's ``data/nyud`` folder).
        split: ``train`` / ``trainval`` (795) or ``test`` (654); FCN layout: also ``val``, and
            ``train`` is its 381-image half.
        transforms: joint transform of ``(image, mask)``.
        class_set: 40 (Gupta et al.) or 13 (Couprie et al.). Named ``class_set`` because
            ``classes`` is the tuple of class names every dataset exposes.
        depth: append depth in metres as a fourth, float channel (see the module docstring).
        labeled_file, splits_file, mapping40_file, mapping13_file: paths of the files when they
            are not ``root/nyu_depth_v2_labeled.mat``, ``root/splits.mat``,
            ``root/classMapping40.mat`` (the 13-class table is built in when not given).
    """

    home = "nyudv2"
    source = "nyu_depth_v2_labeled.mat from cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html, with splits.mat and classMapping40.mat"

    classes = NYU40_CLASSES
    palette = voc_colormap(len(NYU40_CLASSES), start=1)
    splits = ("train", "val", "test", "trainval")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        *,
        class_set: int = 40,
        depth: bool = False,
        labeled_file: str | Path | None = None,
        splits_file: str | Path | None = None,
        mapping40_file: str | Path | None = None,
        mapping13_file: str | Path | None = None,
    ) -> None:
        super().__init__(root, split, transforms)
        if class_set not in (40, 13):
            raise PixelwiseError(f"NYUDv2 class_set must be 40 or 13, not {class_set!r}.")
        self.class_set = class_set
        self.classes = NYU40_CLASSES if class_set == 40 else NYU13_CLASSES  # type: ignore[misc]
        self.palette = voc_colormap(len(self.classes), start=1)  # type: ignore[misc]
        self.depth = depth
        self.labeled_file = Path(labeled_file) if labeled_file else self.root / LABELED_FILE
        self.splits_file = Path(splits_file) if splits_file else self.root / "splits.mat"
        self.mapping40_file = (
            Path(mapping40_file) if mapping40_file else self.root / "classMapping40.mat"
        )
        self.mapping13_file = Path(mapping13_file) if mapping13_file else None
        self._lut: np.ndarray | None = None
        self._h5: Any = None
        self._h5_pid: int | None = None

    # -- layout ------------------------------------------------------------------------------
    @property
    def official(self) -> bool:
        """True for ``nyu_depth_v2_labeled.mat``, False for FCN's ``data/nyud`` layout."""
        return self.labeled_file.is_file() or not (self.root / "segmentation").is_dir()

    def check_root(self) -> None:
        super().check_root()
        if not self.labeled_file.is_file() and not (self.root / "segmentation").is_dir():
            raise PixelwiseError(
                f"{self.root} is not an NYUDv2 root: expected the file {LABELED_FILE} (or FCN's "
                "data/nyud folders data/images/ and segmentation/) inside it."
            )
        if self.depth and not self.official:
            raise PixelwiseError(
                f"depth=True needs {self.labeled_file}; FCN's data/nyud layout has no metric depth."
            )

    def build_index(self) -> list[Any]:
        return self._official_index() if self.official else self._fcn_index()

    def _official_index(self) -> list[int]:
        if self.split == "val":
            raise PixelwiseError(
                f"{self.splits_file.name} defines only train (795) and test (654); use split='test' "
                "to validate, or FCN's data/nyud layout for its train/val halves."
            )
        key = "testNdxs" if self.split == "test" else "trainNdxs"
        what = "The split file"
        indices = mat_field(load_mat(self.splits_file, what), key, self.splits_file, what)
        count = self._num_frames()
        if indices.size and (indices.min() < 1 or indices.max() > count):
            raise PixelwiseError(
                f"{self.splits_file} '{key}' holds indices {indices.min()}..{indices.max()} but "
                f"{self.labeled_file.name} has {count} frames; use the splits.mat of the same release."
            )
        return [int(i) - 1 for i in indices]  # MATLAB counts from 1

    def _num_frames(self) -> int:
        import h5py

        # Opened and closed here so that no handle exists when DataLoader workers fork.
        with self._open_h5(h5py) as f:
            try:
                shapes = {name: getattr(f[name], "shape", None) for name in ("images", "labels")}
            except Exception as error:  # noqa: BLE001 - h5py raises many types on a damaged file
                raise PixelwiseError(
                    f"{self.labeled_file} is not a readable MATLAB v7.3 (HDF5) file "
                    f"({error_text(error)}); download nyu_depth_v2_labeled.mat again."
                ) from None
        images, labels = shapes["images"], shapes["labels"]
        if images is None or labels is None or len(images) != 4 or len(labels) != 3:
            raise PixelwiseError(
                f"{self.labeled_file} holds 'images' of shape {images} and 'labels' of shape "
                f"{labels}, not (N, 3, W, H) and (N, W, H); download nyu_depth_v2_labeled.mat again."
            )
        return int(labels[0])

    def _fcn_index(self) -> list[tuple[Path, Path]]:
        parts = ("train", "val") if self.split == "trainval" else (self.split,)
        if self.split == "trainval" and (self.root / "trainval.txt").is_file():
            parts = ("trainval",)
        watch = [self.root / f"{part}.txt" for part in parts]

        def scan() -> list[tuple[Path, Path]]:
            return [
                (
                    self.root / "data" / "images" / f"img_{name}.png",
                    self.root / "segmentation" / f"img_{name}.mat",
                )
                for part in parts
                for name in parse_list_file(self.root / f"{part}.txt")
            ]

        return cached_index(("nyudv2-fcn", self.root.resolve(), self.split), watch, scan)

    def index_source(self) -> str:
        if self.official:
            key = "testNdxs" if self.split == "test" else "trainNdxs"
            return f"'{key}' of {self.splits_file}"
        if self.split == "trainval" and not (self.root / "trainval.txt").is_file():
            return f"{self.root / 'train.txt'} and {self.root / 'val.txt'}"
        return str(self.root / f"{self.split}.txt")

    def describe(self, sample: Any) -> str:
        if isinstance(sample, int):
            return f"{self.labeled_file} (frame {sample + 1})"
        return super().describe(sample)

    def sample_files(self, sample: Any) -> dict[str, Path]:
        """The files a sample is read from, for ``datasets check``."""
        if isinstance(sample, int):
            return {"image": self.labeled_file, "label": self.labeled_file}
        return {"image": sample[0], "label": sample[1]}

    # -- decoding ----------------------------------------------------------------------------
    def _open_h5(self, h5py: Any) -> Any:
        try:
            f = h5py.File(self.labeled_file, "r")
            missing = [name for name in ("images", "labels") if name not in f]
        except Exception as error:  # noqa: BLE001 - h5py raises many types on a damaged file
            raise PixelwiseError(
                f"{self.labeled_file} is not a readable MATLAB v7.3 (HDF5) file "
                f"({error_text(error)}); download nyu_depth_v2_labeled.mat again."
            ) from None
        if missing:
            f.close()
            raise PixelwiseError(
                f"{self.labeled_file} has no {', '.join(missing)} dataset; it must be the labelled "
                "NYUDv2 file nyu_depth_v2_labeled.mat, not the raw or toolbox data."
            )
        return f

    def _file(self) -> Any:
        """The HDF5 file of this process, opened on first use (never shared across a fork)."""
        if self._h5 is None or self._h5_pid != os.getpid():
            import h5py

            self._h5 = self._open_h5(h5py)
            self._h5_pid = os.getpid()
        return self._h5

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_h5"], state["_h5_pid"] = None, None
        return state

    def lut(self) -> np.ndarray:
        """Raw label value -> class id (or 255), built once from the mapping files."""
        if self._lut is None:
            # FCN's .mat labels hold the 40 classes already: no raw -> 40 table applies to them.
            raw_to_40 = read_mapping40(self.mapping40_file) if self.official else None
            size = 1 << 16 if self.official else 256
            if self.class_set == 13:
                table = (
                    read_mapping13(self.mapping13_file)
                    if self.mapping13_file
                    else np.asarray(NYU40_TO_13)
                )
                raw_to_class = raw_to_13(table, raw_to_40, self.mapping13_file)
            else:
                raw_to_class = raw_to_40 if raw_to_40 is not None else np.arange(1, 41)
            self._lut = label_lut(raw_to_class, size)
        return self._lut

    def _frame(self, name: str, sample: int, ndim: int) -> np.ndarray:
        """Array ``name`` of frame ``sample`` from the HDF5 file, naming the file when it is broken."""
        try:
            array = np.asarray(self._file()[name][sample])
        except PixelwiseError:
            raise
        except Exception as error:  # noqa: BLE001 - h5py raises many types on a damaged file
            raise PixelwiseError(
                f"{self.labeled_file} could not be read at '{name}' frame {sample + 1} "
                f"({error_text(error)}); download nyu_depth_v2_labeled.mat again."
            ) from None
        if array.ndim != ndim or array.dtype.kind not in "iuf":
            raise PixelwiseError(
                f"{self.labeled_file} '{name}' frame {sample + 1} has shape {array.shape} and type "
                f"{array.dtype}; download nyu_depth_v2_labeled.mat again."
            )
        return array

    def load_image(self, sample: Any) -> Tensor:
        if isinstance(sample, int):
            array = self._frame("images", sample, 3)  # 3 x W x H
            if array.shape[0] != 3 or array.dtype != np.uint8:
                raise PixelwiseError(
                    f"{self.labeled_file} 'images' frame {sample + 1} is {array.dtype} of shape "
                    f"{array.shape}, not 3xWxH uint8; download nyu_depth_v2_labeled.mat again."
                )
            return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 2, 1)))
        return read_image(sample[0])

    def load_mask(self, sample: Any) -> Tensor:
        if isinstance(sample, int):
            raw = self._frame("labels", sample, 2).T
            where = self.describe(sample)
        else:
            raw = self._read_fcn_label(sample[1])
            where = str(sample[1])
        if raw.dtype.kind == "f":
            if not bool(np.all(np.isfinite(raw) & (raw == np.round(raw)))):
                raise PixelwiseError(
                    f"Label {where} holds non-integer values; labels are class ids, re-extract it."
                )
        raw = raw.astype(np.int64)
        if raw.size and int(raw.min()) < 0:
            raise PixelwiseError(
                f"Label {where} holds the negative value {int(raw.min())}; NYUDv2 labels are 0 "
                "(unlabeled) and class ids from 1; re-extract it."
            )
        lut = self.lut()
        # Values beyond the table stay raw so that the mask check names them.
        return to_mask(np.where(raw < lut.size, lut[np.minimum(raw, lut.size - 1)], raw))

    def _read_fcn_label(self, path: Path) -> np.ndarray:
        fix = "restore it from FCN's data/nyud."
        mat = read_mat(path, "Label", fix)
        if "segmentation" not in mat:
            raise PixelwiseError(f"Label {path} has no 'segmentation' array; {fix}")
        array = np.asarray(mat["segmentation"])
        if array.ndim != 2 or array.dtype.kind not in "iuf":
            raise PixelwiseError(
                f"Label {path} has a 'segmentation' of shape {array.shape} and type {array.dtype}, "
                f"not an HxW class map; {fix}"
            )
        return array

    def load_depth(self, sample: Any) -> Tensor:
        """Depth in metres, ``float32`` 1xHxW (official layout only)."""
        if not isinstance(sample, int):
            raise PixelwiseError(
                f"Depth of {self.describe(sample)} is unavailable: FCN's layout has no metric depth; "
                f"use {LABELED_FILE}."
            )
        f = self._file()
        if "depths" not in f:
            raise PixelwiseError(f"{self.labeled_file} has no 'depths' dataset; download it again.")
        depth = self._frame("depths", sample, 2).astype(np.float32).T
        return torch.from_numpy(np.ascontiguousarray(depth))[None]

    def load_pair(self, sample: Any) -> tuple[Tensor, Tensor]:
        image, mask = self.load_image(sample), self.load_mask(sample)
        if self.depth:
            image = torch.cat([image.float(), self.load_depth(sample)], dim=0)
        return image, mask
