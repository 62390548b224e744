"""COCO-Stuff 164k on a miniature copy: 8-bit PNGs holding COCO-Stuff id - 1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.data import build_dataset
from pixelwise.data.coco_stuff import COCOSTUFF171_CLASSES, COCOSTUFF_NAMES, UNUSED_IDS, USED_IDS
from pixelwise.errors import PixelwiseError
from tests.paths import DATA

META = DATA / "meta/cocostuff_labels.txt"
H, W = 3, 4


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))


def _write(root: Path, raw: np.ndarray, split: str = "val", stem: str = "000000000139") -> Path:
    (root / "images" / f"{split}2017").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"{split}2017").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
        root / "images" / f"{split}2017" / f"{stem}.jpg"
    )
    label = root / "annotations" / f"{split}2017" / f"{stem}.png"
    Image.fromarray(raw.astype(np.uint8), mode="L").save(label)
    return label


def test_raw_values_map_to_171_train_ids(tmp_path):
    # raw = id - 1: person(1), bicycle(2), car(3), stop sign(13), hair drier(89), toothbrush(90),
    # banner(92), wood(182), unlabeled.
    raw = np.array([[0, 1, 2, 12], [88, 89, 91, 181], [255, 255, 0, 0]])
    _write(tmp_path, raw)
    dataset = build_dataset("coco_stuff", tmp_path, split="val")
    assert len(dataset) == 1 and dataset.num_classes == 171
    image, mask = dataset[0]
    assert image.shape == (3, H, W) and mask.dtype == torch.int64
    # stop sign comes right after street sign (12, unused) -> 11; banner is the 81st used id.
    assert mask.tolist() == [[0, 1, 2, 11], [78, 79, 80, 170], [255, 255, 0, 0]]
    names = [[COCOSTUFF171_CLASSES[v] if v != 255 else None for v in row] for row in mask.tolist()]
    assert names[0][3] == "stop sign" and names[1] == ["hair drier", "toothbrush", "banner", "wood"]


@pytest.mark.parametrize("raw_value", [11, 90, 200])  # street sign, hair brush (unused); beyond 182
def test_unused_or_unknown_ids_raise(tmp_path, raw_value):
    _write(tmp_path, np.full((H, W), raw_value))
    with pytest.raises(PixelwiseError, match=rf"ids \[{raw_value + 1}\]"):
        build_dataset("coco_stuff", tmp_path, split="val")[0]


def test_label_train_ids_files(tmp_path):
    _write(tmp_path, np.zeros((H, W)), stem="000000000139")
    label = tmp_path / "annotations" / "val2017" / "000000000139_labelTrainIds.png"
    Image.fromarray(np.array([[170, 0, 255, 5]] * H, dtype=np.uint8), mode="L").save(label)
    _, mask = build_dataset("coco_stuff", tmp_path, split="val", train_ids=True)[0]
    assert mask[0].tolist() == [170, 0, 255, 5]


def test_table():
    assert len(COCOSTUFF_NAMES) == 182 and len(USED_IDS) == 171 and len(UNUSED_IDS) == 11
    assert COCOSTUFF171_CLASSES[79] == "toothbrush" and COCOSTUFF171_CLASSES[80] == "banner"
    if META.is_file():
        lines = META.read_text().splitlines()
        assert [line.split(": ", 1)[1] for line in lines[1:]] == list(COCOSTUFF_NAMES)


def test_wrong_root(tmp_path):
    with pytest.raises(PixelwiseError, match="images/val2017"):
        len(build_dataset("coco_stuff", tmp_path, split="val"))
