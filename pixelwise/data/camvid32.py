"""CamVid in its original release: 32 colour-coded classes (Brostow et al. 2008).

Layout (``root`` = the folder holding the unpacked archives)::

    701_StillsRaw_full/<seq>_<frame>.png         960x720 RGB, 701 images
    LabeledApproved_full/<seq>_<frame>_L.png     960x720 RGB, one colour per class
    label_colors.txt                             "R G B<tab>Name", 32 lines (optional here)

Sequences: 0001TP, 0006R0, 0016E5, Seq05VD. The 32 entries of ``label_colors.txt`` are 31
classes and ``Void`` (0, 0, 0), which becomes 255. Colours are turned into class ids through the
palette with one vectorised lookup; a colour outside the table raises, naming file and colour.
When ``label_colors.txt`` is present it must agree with the built-in table (a different table is
a different dataset, and silently mixing them would shift every class).

Splits. ``train``/``val``/``test`` are the 367/101/233 frames of the standard split (Sturgess et
al. 2009) that SegNet's tutorial uses for its 11-class version: the train and val frame names
ship with pixelwise (``pixelwise/data/lists/camvid_{train,val}.txt``, taken from the tutorial's
``train.txt``/``val.txt``), and ``test`` is every frame in neither (the later part of 0001TP
and all of Seq05VD). ``trainval`` joins train and val, ``all`` is every labelled frame.
Option ``split_file`` replaces the built-in list of the chosen split by your own: one frame per
line, either a bare name (``0001TP_006690``) or a SegNet-style line ``IMAGE LABEL`` whose first
path's file name gives the frame.
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

#: ``label_colors.txt`` of the release, in its order (alphabetical; Void kept in its place).
CAMVID32_LABEL_COLORS = (
    ((64, 128, 64), "Animal"), ((192, 0, 128), "Archway"), ((0, 128, 192), "Bicyclist"),
    ((0, 128, 64), "Bridge"), ((128, 0, 0), "Building"), ((64, 0, 128), "Car"),
    ((64, 0, 192), "CartLuggagePram"), ((192, 128, 64), "Child"), ((192, 192, 128), "Column_Pole"),
    ((64, 64, 128), "Fence"), ((128, 0, 192), "LaneMkgsDriv"), ((192, 0, 64), "LaneMkgsNonDriv"),
    ((128, 128, 64), "Misc_Text"), ((192, 0, 192), "MotorcycleScooter"),
    ((128, 64, 64), "OtherMoving"), ((64, 192, 128), "ParkingBlock"), ((64, 64, 0), "Pedestrian"),
    ((128, 64, 128), "Road"), ((128, 128, 192), "RoadShoulder"), ((0, 0, 192), "Sidewalk"),
    ((192, 128, 128), "SignSymbol"), ((128, 128, 128), "Sky"), ((64, 128, 192), "SUVPickupTruck"),
    ((0, 0, 64), "TrafficCone"), ((0, 64, 64), "TrafficLight"), ((192, 64, 128), "Train"),
    ((128, 128, 0), "Tree"), ((192, 128, 192), "Truck_Bus"), ((64, 0, 64), "Tunnel"),
    ((192, 192, 0), "VegetationMisc"), ((0, 0, 0), "Void"), ((64, 192, 0), "Wall"),
)  # fmt: skip
VOID = "Void"

_CLASS_ENTRIES = tuple(entry for entry in CAMVID32_LABEL_COLORS if entry[1] != VOID)
CAMVID32_CLASSES = tuple(name for _, name in _CLASS_ENTRIES)
CAMVID32_PALETTE = tuple(colour for colour, _ in _CLASS_ENTRIES)
# The colour -> id table rgb_to_index looks up: the 31 classes, then Void -> ignore.
_DECODE_COLOURS = (*CAMVID32_PALETTE, (0, 0, 0))
_DECODE_VALUES = (*range(len(CAMVID32_CLASSES)), IGNORE_INDEX)

IMAGES_FOLDER = "701_StillsRaw_full"
LABELS_FOLDER = "LabeledApproved_full"
LISTS_DIR = Path(__file__).with_name("lists")


def parse_label_colors(path: Path) -> list[tuple[tuple[int, int, int], str]]:
    """The ``(colour, name)`` entries of a ``label_colors.txt`` ("R G B Name" per line)."""
    entries = []
    for line in parse_list_file(path):
        fields = line.split()
        try:
            colour = (int(fields[0]), int(fields[1]), int(fields[2]))
            name = " ".join(fields[3:])
        except (IndexError, ValueError):
            raise PixelwiseError(f"{path}: line {line!r} should read 'R G B Name'.") from None
        if not name:
            raise PixelwiseError(f"{path}: line {line!r} has no class name after 'R G B'.")
        entries.append((colour, name))
    return entries


def _frame(line: str) -> str:
    """The frame name of a list line: "0001TP_006690", "x/0001TP_006690.png y.png", ..."""
    return Path(line.split()[0]).stem


@register_dataset("camvid32")
class CamVid32(SegmentationDataset):
    """CamVid, original 32-colour release: 31 classes + Void (ignore), 701 frames at 960x720."""

    home = "CamVid32"
    source = "the CamVid stills and labels of mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid (701_StillsRaw_full/, LabeledApproved_full/)"

    classes = CAMVID32_CLASSES
    palette = CAMVID32_PALETTE
    splits = ("train", "val", "test", "trainval", "all")
    expected_folders = (IMAGES_FOLDER, LABELS_FOLDER)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        *,
        split_file: str | Path | None = None,
    ) -> None:
        super().__init__(root, split, transforms)
        if split_file is not None and split == "all":
            raise PixelwiseError(
                "Split 'all' takes every frame; drop split_file or choose another split."
            )
        self.split_file = Path(split_file).expanduser() if split_file is not None else None

    def check_root(self) -> None:
        super().check_root()
        colours_file = self.root / "label_colors.txt"
        if colours_file.is_file():
            found = parse_label_colors(colours_file)
            if sorted(found) != sorted(CAMVID32_LABEL_COLORS):
                extra = sorted(set(found) - set(CAMVID32_LABEL_COLORS))
                missing = sorted(set(CAMVID32_LABEL_COLORS) - set(found))
                raise PixelwiseError(
                    f"{colours_file} differs from the official 32-class table (extra {extra[:3]}, "
                    f"missing {missing[:3]}); restore the file from the CamVid download."
                )

    def index_source(self) -> str:
        if self.split_file is not None:
            return str(self.split_file)
        if self.split in ("train", "val", "trainval"):
            return f"the built-in list of split {self.split!r} matched against {self.root / IMAGES_FOLDER}"
        return f"the folder {self.root / IMAGES_FOLDER}"

    def build_index(self) -> list[tuple[Path, Path]]:
        watch = [self.root / IMAGES_FOLDER, self.root / LABELS_FOLDER]
        if self.split_file is not None:
            watch.append(self.split_file)
        key = (
            "camvid32",
            self.root.resolve(),
            self.split,
            self.split_file and self.split_file.resolve(),
        )
        return cached_index(key, watch, self._scan)

    def _scan(self) -> list[tuple[Path, Path]]:
        images = self.root / IMAGES_FOLDER
        labels = self.root / LABELS_FOLDER
        label_names = file_names(labels)
        # Every frame with an image; a frame without its _L.png label raises below, not skipped.
        all_frames = sorted(Path(n).stem for n in file_names(images) if n.lower().endswith(".png"))
        frames = self._frames(all_frames)
        on_disk = set(all_frames)
        samples = []
        for frame in frames:
            if frame not in on_disk:
                missing_file(
                    PixelwiseError(
                        f"Frame {frame} of split {self.split!r} has no image "
                        f"{images / (frame + '.png')}; restore it or fix the split list."
                    )
                )
            if f"{frame}_L.png" not in label_names:
                missing_file(
                    PixelwiseError(
                        f"Image {images / (frame + '.png')} has no label: expected "
                        f"{labels / (frame + '_L.png')}; restore it from LabeledApproved_full.zip."
                    )
                )
            samples.append((images / f"{frame}.png", labels / f"{frame}_L.png"))
        return samples

    def _frames(self, all_frames: list[str]) -> list[str]:
        """The frame names of this split, in list order (or sorted for the computed splits)."""
        if self.split_file is not None:
            return [_frame(line) for line in parse_list_file(self.split_file)]
        if self.split == "all":
            return all_frames
        train = [_frame(line) for line in parse_list_file(LISTS_DIR / "camvid_train.txt")]
        val = [_frame(line) for line in parse_list_file(LISTS_DIR / "camvid_val.txt")]
        if self.split == "train":
            return train
        if self.split == "val":
            return val
        if self.split == "trainval":
            return train + val
        known = set(train) | set(val)
        return [frame for frame in all_frames if frame not in known]

    def load_image(self, sample: tuple[Path, Path]) -> Tensor:
        return read_image(sample[0])

    def load_mask(self, sample: tuple[Path, Path]) -> Tensor:
        return to_mask(
            rgb_to_index(read_colour_label(sample[1]), _DECODE_COLOURS, _DECODE_VALUES, sample[1])
        )


def read_colour_label(path: Path) -> np.ndarray:
    """Decode a colour-coded label to HxWx3 ``uint8`` RGB, naming the file when it is broken.

    RGB, RGBA and palette PNGs are colours; a greyscale label is refused, since turning grey
    levels into RGB would give colours that mean nothing (or, for grey 0, Void).
    """
    with open_image(path, "Label") as img:
        if img.mode not in ("RGB", "RGBA", "P", "PA"):
            raise PixelwiseError(
                f"Label {path} is a {img.mode} (greyscale) image; CamVid-32 labels are colour-coded "
                "RGB PNGs from LabeledApproved_full (the 11-class greyscale labels are dataset "
                "'camvid')."
            )
        return np.asarray(img.convert("RGB"))
