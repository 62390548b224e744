"""The dataset contract every loader keeps, and the helpers loaders share.

A sample is ``(image, mask)``: image ``uint8`` 3xHxW RGB, mask ``int64`` HxW holding class ids
``0..C-1`` and 255 for ignore, whatever the dataset's own void convention is. When ``transforms``
is given it receives and returns the pair (see :mod:`pixelwise.data.transforms`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image, ImageOps
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
    #: Its folder under the data home (:mod:`pixelwise.data.home`); empty: the registered name.
    home: ClassVar[str] = ""
    #: Where the official download is, said when the dataset is not found.
    source: ClassVar[str] = ""

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

    @classmethod
    def home_folder(cls) -> str:
        """Its folder under the data home."""
        return cls.home or cls.name

    def check_root(self) -> None:
        """Raise when ``root`` is not this dataset at all, naming the folder that was expected; a
        root that holds the dataset but not this split's folder is told so, naming the split."""
        if not self.root.is_dir():
            raise PixelwiseError(self._missing_root())
        missing = [f for f in self.expected_folders if not (self.root / f).exists()]
        if not missing:
            return
        if len(missing) < len(self.expected_folders) or self._holds_another_split():
            raise PixelwiseError(
                f"{self.root} holds {self.name} but not the folder {missing[0]}/ of its split "
                f"{self.split!r}; choose a split it has (data.val_split, --split) or unpack that "
                "part of the download there."
            )
        raise PixelwiseError(
            f"{self.root} is not a {self.name} root: expected the folder {missing[0]}/ inside it; "
            "point root at the unpacked download."
        )

    def _holds_another_split(self) -> bool:
        """Whether the root has the folders of some other split (only the asked one is absent)."""
        for split in self.splits:
            if split == self.split:
                continue
            try:
                other = type(self).__new__(type(self))
                other.__dict__.update(self.__dict__)
                other.split = split
                folders = other.expected_folders
            except Exception:  # noqa: BLE001 - a reader whose folders need more state: no hint
                continue
            if folders and all((self.root / f).exists() for f in folders):
                return True
        return False

    def _missing_root(self) -> str:
        from pixelwise.data.home import describe_home, home_root

        where = self.source or "its official download"
        if self.root == home_root(self.home_folder()):
            return (
                f"Dataset {self.name} is not in {describe_home()}: expected {self.root}; unpack "
                f"{where} there, or set data.root (--root) to where it is."
            )
        return (
            f"Dataset root {self.root} does not exist; point root at the unpacked {self.name} "
            f"download ({where})."
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


def image_size(path: Path, role: str = "Image") -> tuple[int, int]:
    """``(height, width)`` from the file's header, without decoding its pixels.

    Raises :class:`PixelwiseError` as :func:`open_image` does: a file that is absent, is not an
    image, or claims more than :data:`MAX_IMAGE_PIXELS`. The size is the stored one, before any
    EXIF orientation.
    """
    # The header's metadata may make Pillow warn; :func:`read_photo` reports that, not this.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_image(path, role) as img:
            return img.height, img.width


def read_image(path: Path) -> Tensor:
    """Decode a dataset's image file to ``uint8`` 3xHxW RGB; a corrupt or truncated file names itself.

    The pixels stay in their stored order, whatever EXIF orientation the file carries: a
    dataset's labels were drawn on the stored pixels, so turning the image would misalign every
    label. A user's photo goes through :func:`read_photo` instead.
    """
    with open_image(path, "Image") as img:
        array = np.asarray(_rgb8(img, path))
    return _to_chw(array)


@dataclass(frozen=True)
class Photo:
    """A user's picture as :func:`read_photo` decoded it.

    Attributes:
        image: ``uint8`` 3xHxW RGB, turned upright as its EXIF orientation says.
        notes: what the decoder warned about (damaged metadata, say), each naming the file.
    """

    image: Tensor
    notes: tuple[str, ...] = ()


def read_photo(path: Path) -> Photo:
    """Decode a user's picture for ``predict``: upright, and refused when its data is damaged.

    Unlike :func:`read_image` it applies the EXIF orientation (``PIL.ImageOps.exif_transpose``),
    so the label and overlay match the photo as every viewer shows it: a phone stores a portrait
    photo as landscape pixels plus an orientation tag. It also checks the file's own structure
    (:func:`stream_damage`), because decoders fill damaged JPEG data with grey or smeared blocks
    without a word, and segmenting that would look like a result.

    Raises:
        PixelwiseError: the file is absent, not an image, too large, truncated or damaged.
    """
    # Pillow warns through Python's warnings (a damaged EXIF block, say) while opening and while
    # reading the orientation; caught here, each becomes one line naming the file.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_image(path, "Image") as img:
            array = np.asarray(_rgb8(ImageOps.exif_transpose(img), path))
            # After the decode, so a file the decoder refuses keeps the decoder's own words.
            damage = stream_damage(path, img.format)
    if damage is not None:
        raise PixelwiseError(
            f"Image {path} is damaged: {damage}; its pixels would be partly made up, so copy "
            "the file again from where it came from."
        )
    messages = dict.fromkeys(" ".join(str(w.message).split()) for w in caught)  # once each
    return Photo(_to_chw(array), tuple(f"{path}: {m}" for m in messages))


def _to_chw(array: np.ndarray) -> Tensor:
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def stream_damage(path: Path, image_format: str | None) -> str | None:
    """What is wrong with the stored data of a JPEG or PNG file, or None when nothing shows.

    Pillow decodes a JPEG whose entropy-coded data holds garbage without any error or warning
    (it silences libjpeg's "Corrupt JPEG data" warnings) and reads a PNG row whose bytes changed
    without checking the chunk's CRC. So the file itself is walked: a PNG's chunks must all pass
    their CRC and end with IEND; a JPEG's segments must be well formed, its image data may hold
    no byte pair that is not a marker, its restart markers must run 0..7 in turn and be as many
    as its header implies, and it must end with the end-of-image marker. Other formats pass.

    What this cannot see: changed JPEG bytes that happen to form valid data in a file without
    restart markers; only a full Huffman decode, which Pillow does not report on, would.
    """
    if image_format not in ("JPEG", "MPO", "PNG"):
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None  # the decoder reports an unreadable file in its own words
    return _png_damage(data) if image_format == "PNG" else _jpeg_damage(data)


_TRUNCATED = "the file ends early (it is truncated)"


def _png_damage(data: bytes) -> str | None:
    """Every chunk of a PNG passes its CRC and IEND closes it (see :func:`stream_damage`)."""
    view = memoryview(data)
    position = 8  # after the signature, which Pillow has already matched
    while position + 12 <= len(data):
        length = int.from_bytes(view[position : position + 4], "big")
        kind = bytes(view[position + 4 : position + 8]).decode("latin-1")
        end = position + 12 + length
        if end > len(data):
            return _TRUNCATED
        stored = int.from_bytes(view[end - 4 : end], "big")
        if zlib.crc32(view[position + 4 : end - 4]) != stored:
            return (
                f"its {kind} chunk at byte {position} fails its checksum (bytes in it were changed)"
            )
        if kind == "IEND":
            return None
        position = end
    return _TRUNCATED


# Start-of-frame markers (baseline, extended, progressive, lossless; Huffman or arithmetic).
_JPEG_SOF = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_JPEG_EOI, _JPEG_SOS, _JPEG_DRI = 0xD9, 0xDA, 0xDD


@dataclass
class _JpegFrame:
    height: int
    width: int
    sampling: dict[int, tuple[int, int]]  # component id -> (horizontal, vertical) factor


def _jpeg_damage(data: bytes) -> str | None:
    """Walk a JPEG's markers and image data (see :func:`stream_damage`)."""
    raw = np.frombuffer(data, dtype=np.uint8)
    # Every 0xFF that has a byte after it: in image data each must be stuffing (FF 00), fill
    # (FF FF) or a restart marker (FF D0..D7); anything else ends the scan.
    ffs = np.flatnonzero(raw[:-1] == 0xFF)
    frame: _JpegFrame | None = None
    interval = 0
    position = 2  # after SOI, which Pillow has already matched
    while True:
        position = _next_marker(data, position)
        if position < 0:
            return _TRUNCATED
        marker = data[position + 1]
        if marker == _JPEG_EOI:
            return None  # what follows (a second picture of an MPO, a motion clip) is not ours
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            position += 2  # markers without a length
            continue
        if marker < 0xC0 or marker == 0xD8:
            return f"0xFF{marker:02X} at byte {position} is not a JPEG marker"
        if position + 4 > len(data):
            return _TRUNCATED
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if end > len(data):
            return _TRUNCATED
        segment = data[position + 4 : end]
        if marker in _JPEG_SOF:
            frame = _jpeg_frame(segment)
        elif marker == _JPEG_DRI and len(segment) >= 2:
            interval = int.from_bytes(segment[:2], "big")
        if marker != _JPEG_SOS:
            position = end
            continue
        restarts = _restarts_expected(frame, segment, interval)
        position, damage = _jpeg_scan(raw, ffs, end, restarts)
        if damage is not None:
            return damage


def _next_marker(data: bytes, position: int) -> int:
    """Where the next marker (0xFF, then a byte other than 0x00 or 0xFF) starts, or -1.

    Stray bytes between two segments are passed over, as libjpeg does: they cost no pixel.
    """
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return -1
        if data[position + 1] not in (0x00, 0xFF):
            return position
        position += 1


def _jpeg_frame(segment: bytes) -> _JpegFrame | None:
    if len(segment) < 6 or len(segment) < 6 + 3 * segment[5]:
        return None
    height = int.from_bytes(segment[1:3], "big")
    width = int.from_bytes(segment[3:5], "big")
    sampling = {
        segment[6 + 3 * i]: (segment[7 + 3 * i] >> 4, segment[7 + 3 * i] & 15)
        for i in range(segment[5])
    }
    return _JpegFrame(height, width, sampling)


def _restarts_expected(frame: _JpegFrame | None, sos: bytes, interval: int) -> int | None:
    """Restart markers a scan holds: one between every ``interval`` MCUs (None: unknown)."""
    if interval == 0 or frame is None or frame.height == 0 or not sos:
        return None
    components = [sos[1 + 2 * i] for i in range(sos[0]) if 1 + 2 * i < len(sos)]
    if not components or any(c not in frame.sampling for c in components):
        return None
    h_max = max(h for h, _ in frame.sampling.values())
    v_max = max(v for _, v in frame.sampling.values())
    if h_max == 0 or v_max == 0:
        return None
    if len(components) == 1:  # a non-interleaved scan: one MCU per 8x8 block of the component
        h, v = frame.sampling[components[0]]
        wide = math.ceil(math.ceil(frame.width * h / h_max) / 8)
        high = math.ceil(math.ceil(frame.height * v / v_max) / 8)
    else:
        wide = math.ceil(frame.width / (8 * h_max))
        high = math.ceil(frame.height / (8 * v_max))
    return math.ceil(wide * high / interval) - 1


def _jpeg_scan(
    raw: np.ndarray, ffs: np.ndarray, start: int, restarts: int | None
) -> tuple[int, str | None]:
    """Check the image data from ``start``; return where the marker that ends it stands."""
    candidates = ffs[np.searchsorted(ffs, start) :]
    following = raw[candidates + 1]
    is_restart = (following >= 0xD0) & (following <= 0xD7)
    in_data = (following == 0x00) | (following == 0xFF) | is_restart
    ends = np.flatnonzero(~in_data)
    if ends.size == 0:
        return len(raw), _TRUNCATED
    stop = int(ends[0])
    position = int(candidates[stop])
    numbers = following[:stop][is_restart[:stop]].astype(np.int64) - 0xD0
    wrong = np.flatnonzero(numbers != np.arange(numbers.size) % 8)
    if wrong.size:
        at = int(candidates[:stop][is_restart[:stop]][wrong[0]])
        return (
            position,
            f"its restart markers skip or repeat one at byte {at} (data is missing there)",
        )
    # Some encoders also close the last interval with a marker, so one more is tolerated.
    if restarts is not None and not restarts <= numbers.size <= restarts + 1:
        return position, (
            f"its image data holds {numbers.size} restart markers where its header implies "
            f"{restarts} (data is missing or repeated)"
        )
    marker = int(following[stop])
    if marker < 0xC0 or marker == 0xD8:
        return (
            position,
            f"0xFF{marker:02X} at byte {position} inside its image data is not a JPEG marker",
        )
    return position, None


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
