"""The dataset contract every loader keeps, and the helpers loaders share.

A sample is ``(image, mask)``: image ``uint8`` 3xHxW RGB, mask ``int64`` HxW holding class ids
``0..C-1`` and 255 for ignore, whatever the dataset's own void convention is. When ``transforms``
is given it receives and returns the pair (see :mod:`pixelwise.data.transforms`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from pixelwise.errors import PixelwiseError
from pixelwise.outputs import write_text
from pixelwise.registry import Registry

IGNORE_INDEX = 255
#: The most pixels an image or label may have. The largest frames of the supported datasets are
#: about 4k x 4k (16.8 megapixels), so 80 megapixels leaves room for big user images while a
#: header that claims 100000 x 100000 is refused before anything is allocated. It also stays
#: under Pillow's own 89.5-megapixel warning threshold, so Pillow never warns first.
MAX_IMAGE_PIXELS = 80_000_000

Transform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]

DATASETS: Registry[type[SegmentationDataset]] = Registry("dataset")

# True only inside ``index_missing_files()``. A context variable rather than a dataset option, so
# that no user-facing constructor offers a switch that would let training skip or mis-pair files.
_INDEX_MISSING_FILES: ContextVar[bool] = ContextVar("index_missing_files", default=False)


@contextmanager
def index_missing_files() -> Iterator[None]:
    """Within this block readers index a sample whose image or label file is absent.

    ``pixelwise datasets check`` builds its index here so that it can count such samples as
    ``missing_image`` / ``missing_label``; everywhere else :func:`missing_file` raises, so a
    dataset used for training never skips or mis-pairs files. :func:`cached_index` keeps the
    indexes built here apart from the strict ones.
    """
    token = _INDEX_MISSING_FILES.set(True)
    try:
        yield
    finally:
        _INDEX_MISSING_FILES.reset(token)


def missing_file(error: PixelwiseError) -> None:
    """Raise ``error`` (one sentence naming the absent file) unless inside ``index_missing_files()``.

    A reader calls it where a file its index names is absent, then indexes the sample with the
    path the file should have, which the checker finds missing.
    """
    if not _INDEX_MISSING_FILES.get():
        raise error


def register_dataset(name: str):
    """Class decorator: register a :class:`SegmentationDataset` subclass under ``name``."""

    def wrap(cls: type[SegmentationDataset]) -> type[SegmentationDataset]:
        DATASETS.add(name, cls)
        cls.name = name
        return cls

    return wrap


class SegmentationDataset(Dataset):
    """Base class: a lazily built list of samples, decoded into the ``(image, mask)`` contract.

    Subclasses set ``classes``, ``palette`` and ``splits`` and implement :meth:`build_index`,
    :meth:`load_image` and :meth:`load_mask`. A sample is whatever ``build_index`` returns for one
    item, usually ``(image_path, label_path)``.
    """

    name: ClassVar[str] = ""
    classes: ClassVar[tuple[str, ...]] = ()
    palette: ClassVar[tuple[tuple[int, int, int], ...]] = ()
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    ignore_index: ClassVar[int] = IGNORE_INDEX
    #: What a sample is for: "semantic" (image, mask) or "instance" (image, target dict).
    task: ClassVar[str] = "semantic"
    #: Folder names that must exist under ``root``; ``datasets check`` exits 2 when one is absent.
    expected_folders: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self, root: str | Path, split: str = "train", transforms: Transform | None = None
    ) -> None:
        self.root = Path(root).expanduser()
        if split not in self.splits:
            raise PixelwiseError(
                f"Dataset {self.name!r} has no split {split!r}; choose one of {', '.join(self.splits)}."
            )
        self.split = split
        self.transforms = transforms
        self._samples: list[Any] | None = None

    # -- what subclasses provide -------------------------------------------------------------
    def build_index(self) -> list[Any]:
        raise NotImplementedError

    def load_image(self, sample: Any) -> Tensor:
        raise NotImplementedError

    def load_mask(self, sample: Any) -> Tensor:
        raise NotImplementedError

    def load_pair(self, sample: Any) -> tuple[Tensor, Tensor]:
        """Image and mask of one sample; override when both come from one decode."""
        return self.load_image(sample), self.load_mask(sample)

    def describe(self, sample: Any) -> str:
        """A short name of ``sample`` for error messages (the label file by default)."""
        return str(sample[-1]) if isinstance(sample, tuple | list) else str(sample)

    # -- the contract ------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index_source(self) -> str:
        """Where the samples of this split are listed, for the error an empty split raises.

        Subclasses name their list file or folder; the default is the root.
        """
        return f"the folder {self.root}"

    @property
    def samples(self) -> list[Any]:
        if self._samples is None:
            self.check_root()
            samples = self.build_index()
            # An empty split would train on nothing and make `datasets check` report no problems.
            if len(samples) == 0:
                raise PixelwiseError(
                    f"Split {self.split!r} of {self.name} has no samples: {self.index_source()} "
                    "gives none; check that the download was unpacked completely there."
                )
            self._samples = samples
        return self._samples

    def check_root(self) -> None:
        """Raise when ``root`` is not this dataset at all, naming the folder that was expected."""
        if not self.root.is_dir():
            raise PixelwiseError(
                f"Dataset root {self.root} does not exist; point root at the unpacked {self.name} download."
            )
        for folder in self.expected_folders:
            if not (self.root / folder).exists():
                raise PixelwiseError(
                    f"{self.root} is not a {self.name} root: expected the folder {folder}/ inside it; "
                    "point root at the unpacked download."
                )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        sample = self.samples[index]
        image, mask = self.load_pair(sample)
        if mask.ndim != 2:
            raise PixelwiseError(
                f"Label {self.describe(sample)} decodes to shape {tuple(mask.shape)}, not one HxW "
                "class map; re-extract it from the original download."
            )
        if image.shape[-2:] != mask.shape[-2:]:
            raise PixelwiseError(
                f"Image and label sizes differ for {self.describe(sample)}: image "
                f"{tuple(image.shape[-2:])}, label {tuple(mask.shape[-2:])}; fix or remove the pair."
            )
        check_mask_values(mask, self.num_classes, self.describe(sample))
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask

    def __repr__(self) -> str:
        n = len(self._samples) if self._samples is not None else "?"
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={n})"


# -- helpers loaders share ---------------------------------------------------------------------
def error_text(error: BaseException, limit: int = 160) -> str:
    """``"Type: message"`` of a library's exception on one line, cut to ``limit`` characters.

    Parsers put newlines and carets in their messages; ours must stay one sentence.
    """
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextmanager
def open_image(path: Path, role: str = "Image") -> Iterator[Image.Image]:
    """``PIL.Image.open`` that answers every broken file with one sentence naming it.

    A missing file, a header that claims more than :data:`MAX_IMAGE_PIXELS`, and anything the
    decoder raises on a corrupt or truncated file (Pillow raises OSError, SyntaxError, ValueError,
    but also struct, zlib and index errors on damaged data) become :class:`PixelwiseError`.
    ``role`` starts the sentence ("Image", "Label", "Mask").
    """
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise _too_large(path, role, img.width, img.height)
            yield img
    except PixelwiseError:
        raise
    except FileNotFoundError:
        raise PixelwiseError(
            f"{role} {path} does not exist; restore it or remove it from the list."
        ) from None
    except Image.DecompressionBombError:
        raise _too_large(path, role, None, None) from None
    except Exception as error:  # noqa: BLE001 - any decoder failure on a file is that file's fault
        raise PixelwiseError(
            f"{role} {path} could not be decoded ({error_text(error)}); re-extract it "
            "from the original download."
        ) from None


def _too_large(path: Path, role: str, width: int | None, height: int | None) -> PixelwiseError:
    size = f"{width}x{height} pixels" if width is not None else "a size"
    return PixelwiseError(
        f"{role} {path} claims {size} above pixelwise's limit of {MAX_IMAGE_PIXELS // 1_000_000} "
        "megapixels; re-extract it if the file is damaged, or downscale it if it is really that large."
    )


def read_image(path: Path) -> Tensor:
    """Decode an image file to ``uint8`` 3xHxW RGB; a corrupt or truncated file names itself."""
    with open_image(path, "Image") as img:
        array = np.asarray(_rgb8(img, path))
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _rgb8(img: Image.Image, path: Path) -> Image.Image:
    """8-bit RGB; 16-bit greyscale is scaled (65535 -> 255), where PIL's convert would clip at 255."""
    if img.mode.startswith("I;16") or img.mode == "I":
        values = np.asarray(img).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise PixelwiseError(
                f"Image {path} holds 32-bit values ({values.min()}..{values.max()}); save it as an "
                "8-bit or 16-bit image."
            )
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        raise PixelwiseError(
            f"Image {path} holds floating-point values; save it as an 8-bit or 16-bit image."
        )
    return img.convert("RGB")


def read_label_png(path: Path) -> np.ndarray:
    """Decode a label PNG to its raw values (palette PNGs give their indices, never RGB)."""
    with open_image(path, "Label") as img:
        if img.mode not in ("L", "P", "I", "I;16", "1"):
            raise PixelwiseError(
                f"Label {path} is a {img.mode} image; labels must be single-channel index or "
                "palette PNGs (convert colour labels through the dataset palette first)."
            )
        array = np.asarray(img)
    # A 1-bit label gives a bool array, which numpy would take as a mask, not as indices.
    return array.astype(np.uint8) if array.dtype == bool else array


def read_mat(path: Path, what: str, fix: str, **kwargs: Any) -> dict[str, Any]:
    """``scipy.io.loadmat`` whose every failure is one sentence naming the file and ``fix``.

    scipy raises MatReadError on an empty or foreign file, NotImplementedError on a v7.3 (HDF5)
    file, and assorted errors on a damaged one; all of them mean the file is not what it should be.
    """
    import scipy.io

    if not path.is_file():
        raise PixelwiseError(f"{what} {path} does not exist; {fix}")
    try:
        return scipy.io.loadmat(str(path), **kwargs)
    except NotImplementedError:
        raise PixelwiseError(
            f"{what} {path} is a MATLAB v7.3 (HDF5) file, not the v5 .mat this dataset ships; {fix}"
        ) from None
    except Exception as error:  # noqa: BLE001 - any parser failure on a file is that file's fault
        raise PixelwiseError(
            f"{what} {path} could not be read ({error_text(error)}); {fix}"
        ) from None


def lookup_table(
    mapping: dict[int, int], size: int = 256, default: int = IGNORE_INDEX
) -> np.ndarray:
    """An array ``lut`` with ``lut[raw] = mapping.get(raw, default)`` for vectorised id remapping."""
    lut = np.full(size, default, dtype=np.int64)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


def apply_lut(
    raw: np.ndarray, lut: np.ndarray, path: Path, what: str = "label values"
) -> np.ndarray:
    """``lut[raw]``, raising when a raw value maps to -1 (a value the dataset never uses).

    Build ``lut`` with ``lookup_table(mapping, default=-1)`` and map the void values explicitly,
    so that a corrupt or foreign label file is reported instead of silently becoming ignore.
    Values outside the table (a 16-bit or signed label given to an 8-bit table) raise the same
    way instead of failing to index or, for negative values, wrapping around to the table's end.
    """
    raw = np.asarray(raw)
    if raw.dtype == bool or raw.dtype.kind not in "iub":
        raise PixelwiseError(
            f"Label {path} holds {raw.dtype} values, not integer class ids; re-extract the file."
        )
    outside = (raw < 0) | (raw >= lut.size)
    if bool(outside.any()):
        values = np.unique(raw[outside])[:5].tolist()
        raise PixelwiseError(
            f"Label {path} holds {what} {values} outside 0..{lut.size - 1}, which this dataset "
            "does not define; check that the dataset name and root match the labels, or "
            "re-extract the file."
        )
    out = lut[raw.astype(np.int64)]
    bad = out < 0
    if bool(bad.any()):
        values = np.unique(raw[bad])[:5].tolist()
        raise PixelwiseError(
            f"Label {path} holds {what} {values} that this dataset does not define; check that the "
            "dataset name and root match the labels, or re-extract the file."
        )
    return out


def rgb_to_index(
    rgb: np.ndarray, colours: Sequence[Sequence[int]], values: Sequence[int], path: Path
) -> np.ndarray:
    """Map an HxWx3 colour label to ``values[k]`` where the pixel has ``colours[k]``.

    Vectorised: each colour becomes one 24-bit integer, looked up with ``np.searchsorted`` in the
    sorted codes of the table. A colour not in the table raises, naming the file and the colour.
    """
    table = np.asarray(colours, dtype=np.int64).reshape(-1, 3)
    table_codes = (table[:, 0] << 16) | (table[:, 1] << 8) | table[:, 2]
    order = np.argsort(table_codes)
    sorted_codes = table_codes[order]
    sorted_values = np.asarray(values, dtype=np.int64)[order]
    pixels = rgb[..., :3].astype(np.int64)
    codes = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    position = np.minimum(np.searchsorted(sorted_codes, codes), len(sorted_codes) - 1)
    unknown = sorted_codes[position] != codes
    if bool(unknown.any()):
        code = int(codes[unknown][0])
        colour = (code >> 16, (code >> 8) & 255, code & 255)
        raise PixelwiseError(
            f"Label {path} holds the colour {colour}, which is not in the palette; add it to the "
            "class table or fix the label."
        )
    return sorted_values[position]


def file_names(folder: Path) -> set[str]:
    """Names of the entries in ``folder`` (empty when absent): one listing, not a stat per file."""
    try:
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return set()


def voc_colormap(count: int = 256, *, start: int = 0) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC devkit colormap, entries ``start .. start + count - 1``.

    The bits of the index are interleaved into the high bits of R, G, B: bit 0 goes to bit 7 of
    R, bit 1 to bit 7 of G, bit 2 to bit 7 of B, bit 3 to bit 6 of R and so on, so 1 = (128, 0, 0),
    2 = (0, 128, 0) and 255 = (224, 224, 192). Datasets without an official palette use it from
    ``start=1`` so that their class 0 does not get black.
    """
    colours = []
    for index in range(start, start + count):
        rgb = [0, 0, 0]
        value = index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        colours.append((rgb[0], rgb[1], rgb[2]))
    return tuple(colours)


def to_mask(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64))


def check_mask_values(mask: Tensor, num_classes: int, where: str) -> None:
    """Raise when the mask holds a value that is neither a class id nor 255."""
    bad = (mask >= num_classes) & (mask != IGNORE_INDEX) | (mask < 0)
    if bool(bad.any()):
        values = torch.unique(mask[bad])[:5].tolist()
        raise PixelwiseError(
            f"Label {where} holds values {values} outside the {num_classes} classes (0..{num_classes - 1}, "
            "255 = ignore); check that the dataset name and root match the labels."
        )


def parse_list_file(path: Path) -> list[str]:
    """Non-empty, stripped lines of a split list file, or a clear error when it is absent."""
    if not path.is_file():
        raise PixelwiseError(
            f"Split list {path} does not exist; it ships with the dataset download."
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PixelwiseError(
            f"Split list {path} is not a readable text file ({type(error).__name__}); restore it "
            "from the dataset download."
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _cache_dir() -> Path:
    base = os.environ.get("PIXELWISE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "pixelwise"
    )
    return Path(base) / "index"


class CachedItems(Sequence):
    """The items of a cached index, decoded from JSON one at a time when first asked for.

    Turning 100k entries into ``Path`` objects up front costs seconds; a training run touches one
    item per step, so decoding on access keeps opening a large dataset well under a second.
    """

    def __init__(self, raw: list[Any]) -> None:
        self._raw = raw
        self._decoded: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self._raw)
        if index not in self._decoded:
            self._decoded[index] = _from_json(self._raw[index])
        return self._decoded[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # mutable-like, as a list

    def __repr__(self) -> str:
        return f"CachedItems({len(self)} items)"


def cached_index(
    key: Sequence[object], watch: Sequence[Path], build: Callable[[], list[Any]]
) -> Sequence[Any]:
    """Build an index once and reuse it while the watched files and folders are unchanged.

    The index is a JSON list (paths stored as strings, tuples as lists) under
    ``$PIXELWISE_CACHE/index``. A folder's mtime changes when files are added or removed in it, so
    watching the split's folders (not every file) keeps the check cheap for 100k-file datasets.
    Indexes built inside :func:`index_missing_files` are cached under their own keys.
    """
    stamps = [(str(p), p.stat().st_mtime_ns if p.exists() else None) for p in watch]
    parts: list[Any] = [list(map(str, key)), stamps]
    # An index built inside index_missing_files() may name absent files; keyed apart, it is never
    # handed to a strict caller, which must rescan and raise. (Strict keys stay as they were.)
    if _INDEX_MISSING_FILES.get():
        parts.append("index_missing_files")
    digest = hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:20]
    path = _cache_dir() / f"{digest}.json"
    if path.is_file():
        try:
            return CachedItems(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass  # a damaged cache is rebuilt below
    items = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps([_to_json(item) for item in items]))
    except (OSError, PixelwiseError):
        pass  # a read-only home still works, just without the cache
    return items


def _to_json(item: Any) -> Any:
    if isinstance(item, Path):
        return {"p": str(item)}
    if isinstance(item, tuple | list):
        return [_to_json(x) for x in item]
    return item


def _from_json(item: Any) -> Any:
    if isinstance(item, dict) and set(item) == {"p"}:
        return Path(item["p"])
    if isinstance(item, list):
        return tuple(_from_json(x) for x in item)
    return item
