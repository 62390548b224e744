"""PASCAL VOC 2012 + SBD: a miniature copy in the official layout, decoded value by value."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from pixelwise.data import build_dataset
from pixelwise.data.base import voc_colormap
from pixelwise.data.voc import SEG11VALID_LIST, VOC, VOC_CLASSES, VOC_PALETTE
from pixelwise.errors import PixelwiseError
from tests.paths import DATA

H, W = 8, 12
SAMPLES = DATA / "samples/voc"
REAL_SEG11VALID = DATA / "meta/data/pascal/seg11valid.txt"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))


def label_array(seed: int) -> np.ndarray:
    """Classes 0..20 in blocks with a 255 boundary band, like a real VOC annotation."""
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 21, size=(H, W)).astype(np.uint8)
    array[0, :] = 255
    array[:, -1] = 255
    return array


def write_palette_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array, mode="P")
    img.putpalette([c for rgb in voc_colormap(256) for c in rgb])
    img.save(path)


def write_jpg(path: Path, h: int = H, w: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 120, np.uint8)).save(path)


def write_sbd_mat(path: Path, array: np.ndarray) -> None:
    """A cls/<id>.mat as SBD writes it: a 1x1 struct GTcls with a Segmentation field."""
    path.parent.mkdir(parents=True, exist_ok=True)
    present = np.unique(array[array > 0]).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(path, {"GTcls": {"Segmentation": array, "CategoriesPresent": present}})


def write_list(path: Path, ids: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


VOC_TRAIN = ["2007_000032", "2008_000001"]
VOC_VAL = ["2007_000033"]
SBD_TRAIN = ["2008_000001", "2009_000010", "2007_000033"]  # one in VOC train, one in VOC val
SBD_VAL = ["2010_000005"]


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    for k, image_id in enumerate(VOC_TRAIN + VOC_VAL):
        write_jpg(root / "JPEGImages" / f"{image_id}.jpg")
        write_palette_png(root / "SegmentationClass" / f"{image_id}.png", label_array(k))
    sets = root / "ImageSets" / "Segmentation"
    write_list(sets / "train.txt", VOC_TRAIN)
    write_list(sets / "val.txt", VOC_VAL)
    write_list(sets / "trainval.txt", VOC_TRAIN + VOC_VAL)
    return root


@pytest.fixture
def sbd_root(tmp_path: Path) -> Path:
    root = tmp_path / "benchmark_RELEASE" / "dataset"
    for k, image_id in enumerate(SBD_TRAIN + SBD_VAL):
        write_jpg(root / "img" / f"{image_id}.jpg")
        write_sbd_mat(root / "cls" / f"{image_id}.mat", sbd_array(k))
    write_list(root / "train.txt", SBD_TRAIN)
    write_list(root / "val.txt", SBD_VAL)
    (root / "inst").mkdir()
    return root


def sbd_array(seed: int) -> np.ndarray:
    """SBD class maps hold 0..20 and no void band."""
    return np.random.default_rng(100 + seed).integers(0, 21, size=(H, W)).astype(np.uint8)


def test_class_table_and_bit_interleaved_palette() -> None:
    assert (
        len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background" and VOC_CLASSES[-1] == "tvmonitor"
    )
    assert VOC_PALETTE[:4] == ((0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0))
    assert VOC_PALETTE[15] == (192, 128, 128)  # person
    assert voc_colormap(256)[255] == (224, 224, 192)  # the boundary band's cream colour


@pytest.mark.parametrize(
    ("split", "ids"), [("train", VOC_TRAIN), ("val", VOC_VAL), ("trainval", VOC_TRAIN + VOC_VAL)]
)
def test_voc_splits_decode_palette_indices(voc_root: Path, split: str, ids: list[str]) -> None:
    dataset = build_dataset("voc", voc_root, split=split)
    assert len(dataset) == len(ids)
    order = VOC_TRAIN + VOC_VAL
    for (image, mask), image_id in zip(dataset, ids, strict=True):
        assert image.dtype == torch.uint8 and image.shape == (3, H, W)
        assert mask.dtype == torch.int64 and mask.shape == (H, W)
        expected = label_array(order.index(image_id)).astype(np.int64)
        np.testing.assert_array_equal(mask.numpy(), expected)
        assert (mask[0] == 255).all()  # the void band stays ignore


def test_sbd_mat_struct_matches_real_indexing(sbd_root: Path) -> None:
    mat = scipy.io.loadmat(sbd_root / "cls" / "2009_000010.mat")
    assert mat["GTcls"].shape == (1, 1)  # a 1x1 MATLAB struct, as in the release
    np.testing.assert_array_equal(mat["GTcls"][0]["Segmentation"][0], sbd_array(1))


@pytest.mark.parametrize(("split", "ids"), [("sbd_train", SBD_TRAIN), ("sbd_val", SBD_VAL)])
def test_sbd_splits(voc_root: Path, sbd_root: Path, split: str, ids: list[str]) -> None:
    dataset = VOC(voc_root, split=split, sbd_root=sbd_root)
    assert [s[1].name for s in dataset.samples] == [f"{i}.mat" for i in ids]
    order = SBD_TRAIN + SBD_VAL
    for (_, mask), image_id in zip(dataset, ids, strict=True):
        np.testing.assert_array_equal(mask.numpy(), sbd_array(order.index(image_id)))


def test_trainaug_union_minus_val_prefers_voc_labels(voc_root: Path, sbd_root: Path) -> None:
    dataset = build_dataset("voc", voc_root, split="trainaug", sbd_root=sbd_root)
    ids = [s[0].stem for s in dataset.samples]
    assert ids == ["2007_000032", "2008_000001", "2009_000010", "2010_000005"]  # no VOC val id
    labels = {s[0].stem: s[1] for s in dataset.samples}
    assert labels["2008_000001"] == voc_root / "SegmentationClass" / "2008_000001.png"
    assert labels["2009_000010"] == sbd_root / "cls" / "2009_000010.mat"
    images = {s[0].stem: s[0] for s in dataset.samples}
    assert images["2009_000010"] == sbd_root / "img" / "2009_000010.jpg"  # not in JPEGImages here
    _, mask = dataset[ids.index("2008_000001")]
    np.testing.assert_array_equal(mask.numpy(), label_array(1))
    _, mask = dataset[ids.index("2009_000010")]
    np.testing.assert_array_equal(mask.numpy(), sbd_array(1))


def test_trainaug_without_sbd_root_names_the_option(voc_root: Path) -> None:
    with pytest.raises(PixelwiseError, match="sbd_root"):
        len(VOC(voc_root, split="trainaug"))


def test_trainaug_from_prepared_aug_folder(voc_root: Path) -> None:
    aug = voc_root / "SegmentationClassAug"
    aug.mkdir()
    extra = np.full((H, W), 7, np.uint8)
    Image.fromarray(extra, mode="L").save(aug / "2011_000001.png")
    write_jpg(voc_root / "JPEGImages" / "2011_000001.jpg")
    write_list(voc_root / "ImageSets/Segmentation/trainaug.txt", ["2007_000032", "2011_000001"])
    dataset = VOC(voc_root, split="trainaug")
    assert [s[1].parent.name for s in dataset.samples] == [
        "SegmentationClass",
        "SegmentationClassAug",
    ]
    np.testing.assert_array_equal(dataset[1][1].numpy(), extra)


def test_seg11valid_ships_with_the_package(voc_root: Path) -> None:
    ids = SEG11VALID_LIST.read_text().split()
    assert len(ids) == len(set(ids)) == 736
    if REAL_SEG11VALID.is_file():
        assert ids == REAL_SEG11VALID.read_text().split()
    dataset = VOC(voc_root, split="seg11valid")
    assert len(dataset) == 736
    assert dataset.samples[0] == (
        voc_root / "JPEGImages" / f"{ids[0]}.jpg",
        voc_root / "SegmentationClass" / f"{ids[0]}.png",
    )


def test_root_that_is_not_voc_names_the_folder(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(PixelwiseError, match="JPEGImages"):
        len(VOC(tmp_path / "elsewhere", split="train"))


def test_sbd_root_that_is_not_sbd(voc_root: Path, tmp_path: Path) -> None:
    with pytest.raises(PixelwiseError, match="not an SBD root: expected img"):
        len(VOC(voc_root, split="sbd_train", sbd_root=tmp_path))


def test_missing_label_names_the_file(voc_root: Path) -> None:
    (voc_root / "SegmentationClass" / "2007_000032.png").unlink()
    with pytest.raises(PixelwiseError, match="2007_000032.png"):
        VOC(voc_root, split="train")[0]


def test_size_mismatch_names_the_file(voc_root: Path) -> None:
    write_jpg(voc_root / "JPEGImages" / "2007_000032.jpg", h=H, w=W - 2)
    with pytest.raises(PixelwiseError, match="2007_000032.png.*sizes|sizes.*2007_000032.png"):
        VOC(voc_root, split="train")[0]


def test_label_out_of_range_names_the_file(voc_root: Path) -> None:
    array = label_array(0)
    array[3, 3] = 21
    write_palette_png(voc_root / "SegmentationClass" / "2007_000032.png", array)
    with pytest.raises(PixelwiseError, match=r"2007_000032.png.*\[21\]"):
        VOC(voc_root, split="train")[0]


def test_rgb_label_is_refused(voc_root: Path) -> None:
    rgb = np.zeros((H, W, 3), np.uint8)
    Image.fromarray(rgb, mode="RGB").save(voc_root / "SegmentationClass" / "2007_000032.png")
    with pytest.raises(PixelwiseError, match="2007_000032.png.*RGB"):
        VOC(voc_root, split="train")[0]


def test_second_open_uses_the_cache(
    voc_root: Path, sbd_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = VOC(voc_root, split="trainaug", sbd_root=sbd_root).samples

    def no_scan(self: VOC) -> None:
        raise AssertionError("the index was scanned again")

    monkeypatch.setattr(VOC, "_scan", no_scan)
    assert VOC(voc_root, split="trainaug", sbd_root=sbd_root).samples == first


@pytest.mark.skipif(not (SAMPLES / "label.png").is_file(), reason="real VOC sample not present")
def test_real_voc_label_decodes_to_indices(tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    shutil.copy(SAMPLES / "image.jpg", root / "JPEGImages" / "sample.jpg")
    shutil.copy(SAMPLES / "label.png", root / "SegmentationClass" / "sample.png")
    write_list(root / "ImageSets/Segmentation/train.txt", ["sample"])
    image, mask = VOC(root, split="train")[0]
    assert mask.ndim == 2 and image.shape[-2:] == mask.shape
    assert sorted(torch.unique(mask).tolist()) == [
        0,
        2,
        15,
        255,
    ]  # background, bicycle, person, void
    raw = np.asarray(Image.open(SAMPLES / "label.png"))
    np.testing.assert_array_equal(mask.numpy(), raw)
    # the boundary band surrounds the objects: every object pixel region is fringed with 255
    objects = (mask != 0) & (mask != 255)
    assert objects.any() and (mask == 255).sum() > 0
