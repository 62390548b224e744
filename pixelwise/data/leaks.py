"""Splits that cannot leak: an image of one split that is also in a split it must not meet.

``datasets check NAME ROOT --split S`` indexes the other splits of the dataset too (their lists or
folders only; no image is decoded) and counts every sample of ``S`` whose image is also in a split
``S`` must be kept apart from (problem kind ``split_leak``). An image's identity is:

* the image id where the dataset has one that names the same picture wherever its file lies: VOC
  and SBD share the VOC ids (``2008_000123``), so SBD's ``img/2008_000123.jpg`` is VOC's
  ``JPEGImages/2008_000123.jpg``; COCO samples carry the image id; NYUDv2's official layout
  numbers the frames of the one ``.mat`` file (the generated ``shapes`` numbers each split's own);
* otherwise the image file itself (its resolved path), for every other reader and for ``folder``.
  SUN RGB-D numbers train and test images from 1 each, so a file name is no identity there.

Which splits must be kept apart: for VOC, the training splits ``train``, ``trainaug`` and
``sbd_train`` against the evaluation splits ``val`` and ``seg11valid``, except ``sbd_train`` with
``val``: SBD's train holds about a third of VOC 2012 val by construction, which is why FCN
evaluates on ``seg11valid`` (VOC 2011 val less SBD train) after training on ``sbd_train``, and why
``trainaug`` removes VOC val. For every other dataset, each pair of its base splits (``train``,
``val``, ``test``, ``train_extra``); the unions (``trainval``, ``all``) contain their parts by
definition and are never compared.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pixelwise.data.base import SegmentationDataset, index_missing_files
from pixelwise.errors import PixelwiseError

#: Datasets whose integer samples number the frames of one file shared by every split.
FRAME_NUMBERED = frozenset({"nyudv2"})
#: Splits that are unions of others; they overlap their parts by definition.
UNION_SPLITS = frozenset({"trainval", "all"})
#: The pairs of VOC splits that must share no image (see the module docstring).
VOC_APART = frozenset(
    {
        frozenset(p)
        for p in (
            ("train", "val"), ("train", "seg11valid"), ("trainaug", "val"),
            ("trainaug", "seg11valid"), ("sbd_train", "seg11valid"), ("sbd_train", "sbd_val"),
        )
    }
)  # fmt: skip


def must_be_apart(name: str, first: str, second: str) -> bool:
    """True when splits ``first`` and ``second`` of dataset ``name`` must share no image."""
    if first == second:
        return False
    if name in ("voc", "voc_instances"):
        return frozenset((first, second)) in VOC_APART
    return first not in UNION_SPLITS and second not in UNION_SPLITS


def image_identity(dataset: SegmentationDataset) -> Callable[[Any], Any]:
    """The function that names the picture of a sample of ``dataset`` (see the module docstring)."""
    own = getattr(dataset, "image_identity", None)
    if callable(own):
        return own
    if dataset.name in ("voc", "voc_instances"):
        return lambda sample: ("voc", Path(sample[0]).stem)
    from pixelwise.data.check import sample_files

    def by_file(sample: Any) -> Any:
        if isinstance(sample, int):
            # NYUDv2 numbers the frames of its one .mat file; a generated dataset (shapes) numbers
            # each split's own samples, which are different pictures
            return ("frame", sample) if dataset.name in FRAME_NUMBERED else (dataset.split, sample)
        ids = [v for v in sample if isinstance(v, int)] if isinstance(sample, tuple) else []
        if ids:  # COCO: (image path, image id)
            return ("id", ids[0])
        image = sample_files(dataset, sample).get("image")
        return ("file", str(Path(image).resolve())) if image is not None else repr(sample)

    return by_file


def split_identities(
    name: str, root: str | Path, split: str, options: dict[str, Any] | None
) -> set[Any]:
    """The identities of the images of ``split``; none when the root does not hold that split."""
    from pixelwise.data import build_dataset

    try:
        dataset = build_dataset(name, root, split=split, **(options or {}))
        with index_missing_files():
            samples = list(dataset.samples)
    except PixelwiseError:
        return set()
    identity = image_identity(dataset)
    return {identity(s) for s in samples}


def find_leaks(
    name: str,
    root: str | Path,
    split: str,
    dataset: SegmentationDataset,
    samples: Sequence[Any],
    options: dict[str, Any] | None = None,
) -> list[str]:
    """One line per sample of ``split`` whose image is also in a split it must be kept apart
    from, naming the image and the other split."""
    identity = image_identity(dataset)
    mine = {identity(s): s for s in samples}
    lines = []
    for other in dataset.splits:
        if not must_be_apart(name, split, other):
            continue
        shared = mine.keys() & split_identities(name, root, other, options)
        for key in sorted(shared, key=repr):
            lines.append(
                f"{dataset.describe(mine[key])} of split {split!r} is also in split {other!r}"
            )
    return lines
