"""Cityscapes: a miniature copy in the official layout, label ids mapped to train ids value by value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.data import build_dataset
from pixelwise.data.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    Cityscapes,
    to_label_ids,
)
from pixelwise.errors import PixelwiseError

H, W = 8, 12

# The oracle, written out from cityscapesscripts' labels.py (id -> trainId; absent = 255).
TRAIN_ID_OF = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
FRAMES = {
    "train": [("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")],
    "val": [("frankfurt", "frankfurt_000000_000294")],
    "test": [("berlin", "berlin_000000_000019")],
}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))


def label_ids(seed: int) -> np.ndarray:
    """Every official id 0..33 appears, shuffled, in an 8x12 labelIds image."""
    rng = np.random.default_rng(seed)
    values = np.concatenate([np.arange(34), rng.integers(0, 34, size=H * W - 34)])
    return rng.permutation(values).reshape(H, W).astype(np.uint8)


def expected_train_ids(ids: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: TRAIN_ID_OF.get(int(v), 255))(ids).astype(np.int64)


def write_frame(root: Path, gt: str, split: str, city: str, base: str, ids: np.ndarray) -> None:
    image = root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png"
    label = root / gt / split / city / f"{base}_{gt}_labelIds.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    label.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 90, np.uint8)).save(image)
    Image.fromarray(ids, mode="L").save(label)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    for split, frames in FRAMES.items():
        for k, (city, base) in enumerate(frames):
            ids = np.zeros((H, W), np.uint8) if split == "test" else label_ids(k)
            write_frame(root, "gtFine", split, city, base, ids)
    return root


def test_class_table() -> None:
    assert len(CITYSCAPES_CLASSES) == 19
    assert CITYSCAPES_CLASSES[:3] == ("road", "sidewalk", "building")
    assert CITYSCAPES_CLASSES[-1] == "bicycle"
    assert CITYSCAPES_PALETTE[0] == (128, 64, 128) and CITYSCAPES_PALETTE[-1] == (119, 11, 32)
    assert Cityscapes.train_id_to_label_id == {t: i for i, t in TRAIN_ID_OF.items()}


@pytest.mark.parametrize("split", ["train", "val"])
def test_label_ids_become_train_ids(root: Path, split: str) -> None:
    dataset = build_dataset("cityscapes", root, split=split)
    assert len(dataset) == len(FRAMES[split])
    for k, (image, mask) in enumerate(dataset):
        assert image.dtype == torch.uint8 and image.shape == (3, H, W)
        assert mask.dtype == torch.int64 and mask.shape == (H, W)
        np.testing.assert_array_equal(mask.numpy(), expected_train_ids(label_ids(k)))


def test_test_split_has_only_ignore(root: Path) -> None:
    _, mask = Cityscapes(root, split="test")[0]
    assert (mask == 255).all()


def test_label_train_ids_preferred_when_present(root: Path) -> None:
    city, base = FRAMES["train"][0]
    train_ids = np.full((H, W), 13, np.uint8)
    train_ids[0] = 255
    path = root / "gtFine" / "train" / city / f"{base}_gtFine_labelTrainIds.png"
    Image.fromarray(train_ids, mode="L").save(path)
    dataset = Cityscapes(root, split="train")
    assert dataset.samples[0][1] == path
    np.testing.assert_array_equal(dataset[0][1].numpy(), train_ids)
    np.testing.assert_array_equal(dataset[1][1].numpy(), expected_train_ids(label_ids(1)))


def test_coarse_mode_and_train_extra(root: Path) -> None:
    write_frame(root, "gtCoarse", "train_extra", "augsburg", "augsburg_000000_000000", label_ids(5))
    dataset = Cityscapes(root, split="train_extra", mode="coarse")
    assert dataset.samples[0][1].name == "augsburg_000000_000000_gtCoarse_labelIds.png"
    np.testing.assert_array_equal(dataset[0][1].numpy(), expected_train_ids(label_ids(5)))
    with pytest.raises(PixelwiseError, match="train_extra"):
        Cityscapes(root, split="train_extra")
    with pytest.raises(PixelwiseError, match="mode"):
        Cityscapes(root, split="train", mode="medium")


def test_to_label_ids_round_trip() -> None:
    train = torch.tensor([[0, 1, 18, 255], [13, 10, 5, 2]])
    out = to_label_ids(train)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[7, 8, 33, 0], [26, 23, 17, 11]])
    ids = label_ids(3)
    back = to_label_ids(expected_train_ids(ids))
    trained = np.isin(ids, list(TRAIN_ID_OF))
    np.testing.assert_array_equal(back[trained], ids[trained])
    assert (back[~trained] == 0).all()
    with pytest.raises(PixelwiseError, match=r"\[19\]"):
        to_label_ids(np.array([[19]]))


def test_not_a_cityscapes_root_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(PixelwiseError, match="leftImg8bit/train"):
        len(Cityscapes(tmp_path, split="train"))


def test_missing_label_names_image_and_expected_label(root: Path) -> None:
    city, base = FRAMES["val"][0]
    (root / "gtFine" / "val" / city / f"{base}_gtFine_labelIds.png").unlink()
    with pytest.raises(PixelwiseError, match=f"{base}_leftImg8bit.png.*{base}_gtFine_labelIds.png"):
        len(Cityscapes(root, split="val"))


def test_unknown_label_id_names_the_file(root: Path) -> None:
    city, base = FRAMES["val"][0]
    ids = label_ids(0)
    ids[2, 2] = 40
    write_frame(root, "gtFine", "val", city, base, ids)
    with pytest.raises(PixelwiseError, match=rf"{base}_gtFine_labelIds.png.*\[40\]"):
        Cityscapes(root, split="val")[0]


def test_size_mismatch_names_the_file(root: Path) -> None:
    city, base = FRAMES["val"][0]
    image = root / "leftImg8bit" / "val" / city / f"{base}_leftImg8bit.png"
    Image.fromarray(np.zeros((H + 1, W, 3), np.uint8)).save(image)
    with pytest.raises(PixelwiseError, match=f"{base}_gtFine_labelIds.png"):
        Cityscapes(root, split="val")[0]


def test_second_open_uses_the_cache(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Cityscapes(root, split="train").samples

    def no_scan(self: Cityscapes) -> None:
        raise AssertionError("the index was scanned again")

    monkeypatch.setattr(Cityscapes, "_scan", no_scan)
    assert Cityscapes(root, split="train").samples == first


def test_check_counts_a_missing_label_and_training_still_refuses(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixelwise.cli import main

    city, base = FRAMES["train"][1]
    label = root / "gtFine" / "train" / city / f"{base}_gtFine_labelIds.png"
    label.unlink()
    assert main(["datasets", "check", "cityscapes", str(root), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert "2 samples checked" in out and "missing labels: 1" in out and str(label) in out
    # The lenient index the check cached must not stand in for the strict one training builds.
    with pytest.raises(PixelwiseError, match=f"{base}_leftImg8bit.png has no label"):
        len(build_dataset("cityscapes", root, split="train"))
