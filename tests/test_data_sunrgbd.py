"""SUN RGB-D 37 on a miniature copy of the flattened release (ankurhanda/sunrgbd-meta-data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.data import build_dataset
from pixelwise.data.base import voc_colormap
from pixelwise.data.sunrgbd import SUNRGBD37_CLASSES
from pixelwise.errors import PixelwiseError

H, W = 5, 7


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))


def _write(root: Path, n_train: int = 3, n_test: int = 2, lists: bool = True) -> None:
    """Label number ``k`` is filled with ``k`` so that each pairing can be read off the mask."""
    for folder in ("SUNRGBD-train_images", "SUNRGBD-test_images", "sunrgbd_train_test_labels"):
        (root / folder).mkdir(parents=True)
    for folder, count in (("SUNRGBD-train_images", n_train), ("SUNRGBD-test_images", n_test)):
        for k in range(1, count + 1):
            Image.fromarray(np.full((H, W, 3), k, dtype=np.uint8)).save(
                root / folder / f"img-{k:06d}.jpg"
            )
    # In the real tarball there are 5050 test labels before the train ones; write the used ones.
    numbers = list(range(1, n_test + 1)) + [5050 + k for k in range(1, n_train + 1)]
    for number in numbers:
        label = np.zeros((H, W), dtype=np.uint8)
        label[0] = number % 38  # a recognisable class per label file
        label[1, :3] = 37
        label[2, 0] = 1
        Image.fromarray(label, mode="L").save(
            root / "sunrgbd_train_test_labels" / f"img-{number:06d}.png"
        )
    if lists:
        for name, count in (("training", n_train), ("testing", n_test)):
            lines = [
                f"SUNRGBD/kv1/NYUdata/NYU{k:04d}/image/NYU{k:04d}.jpg" for k in range(1, count + 1)
            ]
            (root / f"sunrgbd_{name}_images.txt").write_text("\n".join(lines) + "\n")


def test_train_pairs_with_labels_after_the_test_ones(tmp_path):
    _write(tmp_path)
    dataset = build_dataset("sunrgbd", tmp_path, split="train")
    assert len(dataset) == 3 and dataset.num_classes == 37
    image, mask = dataset[1]  # train img-000002 <-> label img-005052
    assert image.shape == (3, H, W) and image.dtype == torch.uint8
    assert dataset.samples[1][1].name == "img-005052.png"
    expected = np.full((H, W), 255)
    expected[0] = 5052 % 38 - 1
    expected[1, :3] = 36  # bag
    expected[2, 0] = 0  # wall
    assert mask.dtype == torch.int64 and mask.tolist() == expected.tolist()


def test_test_split_pairs_same_numbers_and_lists_are_optional(tmp_path):
    _write(tmp_path, lists=False)
    dataset = build_dataset("sunrgbd", tmp_path, split="test")
    assert [s[1].name for s in dataset.samples] == ["img-000001.png", "img-000002.png"]
    _, mask = dataset[1]
    assert mask[0, 0] == 1 and mask[3, 0] == 255


def test_value_above_37_is_reported(tmp_path):
    _write(tmp_path)
    path = tmp_path / "sunrgbd_train_test_labels" / "img-000001.png"
    Image.fromarray(np.full((H, W), 38, dtype=np.uint8), mode="L").save(path)
    with pytest.raises(PixelwiseError, match=r"\[38\]"):
        build_dataset("sunrgbd", tmp_path, split="test")[0]


def test_wrong_root_names_the_folder(tmp_path):
    with pytest.raises(PixelwiseError, match="SUNRGBD-train_images"):
        len(build_dataset("sunrgbd", tmp_path, split="train"))


def test_classes_and_palette():
    assert len(SUNRGBD37_CLASSES) == 37
    assert SUNRGBD37_CLASSES[0] == "wall" and SUNRGBD37_CLASSES[-1] == "bag"
    palette = voc_colormap(37, start=1)
    assert palette[0] == (128, 0, 0) and palette[1] == (0, 128, 0) and palette[6] == (128, 128, 128)
    assert len(set(palette)) == 37
