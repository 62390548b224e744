"""ADE20K SceneParsing: a miniature copy in the official layout, plus the real sample files."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from pixelwise.data import build_dataset
from pixelwise.data.ade20k import ADE20K, ADE20K_CLASSES, ADE20K_PALETTE, short_name
from pixelwise.errors import PixelwiseError
from tests.paths import DATA

H, W = 8, 12
SAMPLES = DATA / "samples/ade20k"
FRAMES = {"train": ["ADE_train_00000001", "ADE_train_00000002"], "val": ["ADE_val_00000001"]}
FOLDERS = {"train": "training", "val": "validation"}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))


def annotation(seed: int) -> np.ndarray:
    """Raw values 0 (other objects), 1 and 150 always present, the rest random in 0..150."""
    array = np.random.default_rng(seed).integers(0, 151, size=(H, W)).astype(np.uint8)
    array[0, :3] = (0, 1, 150)
    return array


def expected(raw: np.ndarray) -> np.ndarray:
    return np.where(raw == 0, 255, raw.astype(np.int64) - 1)


def write_pair(root: Path, split: str, name: str, raw: np.ndarray) -> None:
    images = root / "images" / FOLDERS[split]
    labels = root / "annotations" / FOLDERS[split]
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*raw.shape, 3), 60, np.uint8)).save(images / f"{name}.jpg")
    Image.fromarray(raw, mode="L").save(labels / f"{name}.png")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    for split, names in FRAMES.items():
        for k, name in enumerate(names):
            write_pair(root, split, name, annotation(k))
    return root


@pytest.mark.parametrize("split", ["train", "val"])
def test_zero_becomes_ignore_and_ids_shift_down(root: Path, split: str) -> None:
    dataset = build_dataset("ade20k", root, split=split)
    assert [s[0].stem for s in dataset.samples] == FRAMES[split]
    for k, (image, mask) in enumerate(dataset):
        assert image.dtype == torch.uint8 and image.shape == (3, H, W)
        assert mask.dtype == torch.int64
        np.testing.assert_array_equal(mask.numpy(), expected(annotation(k)))
        assert mask[0, :3].tolist() == [255, 0, 149]


def test_value_above_150_names_the_file(root: Path) -> None:
    raw = annotation(0)
    raw[4, 4] = 151
    write_pair(root, "val", FRAMES["val"][0], raw)
    with pytest.raises(PixelwiseError, match=r"ADE_val_00000001.png.*\[151\]"):
        ADE20K(root, split="val")[0]


def test_not_an_ade20k_root_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(PixelwiseError, match="images/training"):
        len(ADE20K(tmp_path, split="train"))


def test_missing_annotation_names_image_and_expected_file(root: Path) -> None:
    (root / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    with pytest.raises(
        PixelwiseError, match="ADE_train_00000002.jpg.*annotations/training/ADE_train_00000002.png"
    ):
        len(ADE20K(root, split="train"))


def test_size_mismatch_names_the_file(root: Path) -> None:
    Image.fromarray(np.zeros((H, W + 3, 3), np.uint8)).save(
        root / "images/validation/ADE_val_00000001.jpg"
    )
    with pytest.raises(PixelwiseError, match="ADE_val_00000001.png"):
        ADE20K(root, split="val")[0]


def test_second_open_uses_the_cache(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ADE20K(root, split="train").samples

    def no_scan(self: ADE20K) -> None:
        raise AssertionError("the index was scanned again")

    monkeypatch.setattr(ADE20K, "_scan", no_scan)
    assert ADE20K(root, split="train").samples == first


def test_table_sizes() -> None:
    assert len(ADE20K_CLASSES) == len(set(ADE20K_CLASSES)) == len(ADE20K_PALETTE) == 150
    assert short_name(ADE20K_CLASSES[1]) == "building"
    assert ADE20K_PALETTE[:3] == ((120, 120, 120), (180, 120, 120), (6, 230, 230))


@pytest.mark.skipif(
    not (SAMPLES / "objectInfo150.csv").is_file(), reason="ADE20K samples not present"
)
def test_names_and_colours_match_the_devkit_files() -> None:
    with open(SAMPLES / "objectInfo150.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["Idx"]) for r in rows] == list(range(1, 151))
    assert ADE20K_CLASSES == tuple(r["Name"] for r in rows)
    colours = SAMPLES / "visualizationCode" / "color150.mat"
    if colours.is_file():
        table = scipy.io.loadmat(colours)["colors"]
        assert ADE20K_PALETTE == tuple(tuple(int(c) for c in row) for row in table)


@pytest.mark.skipif(not (SAMPLES / "sampleData").is_dir(), reason="ADE20K samples not present")
def test_real_sample_annotations_decode(tmp_path: Path) -> None:
    root = tmp_path / "ADEChallengeData2016"
    (root / "images/validation").mkdir(parents=True)
    (root / "annotations/validation").mkdir(parents=True)
    sources = sorted((SAMPLES / "sampleData/annotations").glob("*.png"))
    assert sources
    for label in sources:
        shutil.copy(label, root / "annotations/validation" / label.name)
        shutil.copy(SAMPLES / "sampleData/images" / f"{label.stem}.jpg", root / "images/validation")
    dataset = ADE20K(root, split="val")
    assert len(dataset) == len(sources)
    for (image, mask), label in zip(dataset, sources, strict=True):
        raw = np.asarray(Image.open(label))
        assert image.shape[-2:] == mask.shape == raw.shape
        np.testing.assert_array_equal(mask.numpy(), expected(raw))
        assert (mask == 255).any() and int(mask[mask != 255].max()) < 150


def test_check_counts_a_missing_annotation_and_training_still_refuses(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixelwise.cli import main

    label = root / "annotations" / "training" / "ADE_train_00000002.png"
    label.unlink()
    assert main(["datasets", "check", "ade20k", str(root), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert "2 samples checked" in out and "missing labels: 1" in out and str(label) in out
    # The lenient index the check cached must not stand in for the strict one training builds.
    with pytest.raises(PixelwiseError, match="ADE_train_00000002.jpg has no annotation"):
        len(build_dataset("ade20k", root, split="train"))
