"""Splits that cannot leak: ``trainaug`` holds no VOC val image (on the real lists), and
``datasets check`` counts any image that is in two splits that must be kept apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.data import build_dataset
from pixelwise.data.base import index_missing_files
from pixelwise.data.check import check_dataset
from pixelwise.data.leaks import must_be_apart
from pixelwise.data.voc import LISTS_DIR
from tests import test_data_sunrgbd as sun
from tests import test_data_voc as voc

VAL = (LISTS_DIR / "voc_val.txt").read_text().split()
TRAINAUG = (LISTS_DIR / "voc_trainaug.txt").read_text().split()
SEG11VALID = (LISTS_DIR / "voc_seg11valid.txt").read_text().split()


@pytest.fixture(autouse=True)
def _private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIXELWISE_DATA", str(tmp_path / "home"))


def test_the_real_lists_trainaug_and_val_share_no_image() -> None:
    assert (len(VAL), len(set(VAL))) == (1449, 1449)
    assert (len(TRAINAUG), len(set(TRAINAUG))) == (10582, 10582)
    assert set(TRAINAUG).isdisjoint(VAL)
    assert set(SEG11VALID) <= set(VAL)  # VOC 2011 val less SBD train: part of VOC 2012 val


def test_trainaug_as_voc_py_builds_it_drops_every_val_image_even_if_sbd_lists_them(
    tmp_path,
) -> None:
    """The worst case: SBD's lists name every VOC val image. voc.py's trainaug (VOC train + SBD
    train + SBD val - VOC val) still holds none of them, and is exactly the published trainaug."""
    root, sbd = tmp_path / "VOC2012", tmp_path / "sbd"
    for folder in (root / "JPEGImages", root / "SegmentationClass", sbd / "img", sbd / "cls"):
        folder.mkdir(parents=True)
    voc.write_list(root / "ImageSets/Segmentation/train.txt", TRAINAUG[:1464])
    voc.write_list(root / "ImageSets/Segmentation/val.txt", VAL)
    voc.write_list(sbd / "train.txt", VAL[:700] + TRAINAUG[1000:])
    voc.write_list(sbd / "val.txt", VAL[700:] + TRAINAUG[:1000])
    dataset = build_dataset("voc", root, split="trainaug", sbd_root=sbd)
    with index_missing_files():
        ids = [image.stem for image, _ in dataset.samples]
    assert len(ids) == len(set(ids)) == 10582
    assert set(ids) == set(TRAINAUG) and set(ids).isdisjoint(VAL)


def write_voc(root: Path, train: list[str], val: list[str]) -> None:
    for k, image_id in enumerate(sorted(set(train + val))):
        voc.write_jpg(root / "JPEGImages" / f"{image_id}.jpg")
        voc.write_palette_png(root / "SegmentationClass" / f"{image_id}.png", voc.label_array(k))
    voc.write_list(root / "ImageSets/Segmentation/train.txt", train)
    voc.write_list(root / "ImageSets/Segmentation/val.txt", val)
    voc.write_list(root / "ImageSets/Segmentation/trainval.txt", train + val)


def test_check_counts_a_voc_val_image_listed_in_train(tmp_path) -> None:
    root = tmp_path / "VOC2012"
    write_voc(root, ["2007_000032", "2007_000033"], ["2007_000033"])
    report = check_dataset("voc", root, "train")
    leak = report.problems["split_leak"]
    label = root / "SegmentationClass/2007_000033.png"
    # one line per split it meets: VOC 2012 val, and seg11valid (the shipped list holds this id)
    assert leak.count == 2 and report.exit_code == 1
    assert leak.examples == [
        f"{label} of split 'train' is also in split 'val'",
        f"{label} of split 'train' is also in split 'seg11valid'",
    ]
    assert check_dataset("voc", root, "trainval").problems["split_leak"].count == 0  # a union


def test_check_finds_no_leak_in_trainaug_built_from_a_leaking_sbd(tmp_path) -> None:
    root, sbd = tmp_path / "VOC2012", tmp_path / "sbd"
    write_voc(root, voc.VOC_TRAIN, voc.VOC_VAL)
    for k, image_id in enumerate(voc.SBD_TRAIN + voc.SBD_VAL):  # SBD_TRAIN holds VOC val's image
        voc.write_jpg(sbd / "img" / f"{image_id}.jpg")
        voc.write_sbd_mat(sbd / "cls" / f"{image_id}.mat", voc.sbd_array(k))
    voc.write_list(sbd / "train.txt", voc.SBD_TRAIN)
    voc.write_list(sbd / "val.txt", voc.SBD_VAL)
    report = check_dataset("voc", root, "trainaug", options={"sbd_root": str(sbd)})
    assert report.problems["split_leak"].count == 0 and report.exit_code == 0
    # the same id through SBD's own file (img/ not JPEGImages/) is the same picture
    assert must_be_apart("voc", "sbd_train", "seg11valid")
    assert not must_be_apart("voc", "sbd_train", "val")  # by construction; see pixelwise.data.leaks


def write_folder(root: Path, stems: list[str], splits: dict[str, list[str]]) -> None:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem in stems:
        Image.fromarray(np.full((4, 6, 3), 50, np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray(np.zeros((4, 6), np.uint8), mode="L").save(root / "masks" / f"{stem}.png")
    (root / "classes.yaml").write_text("classes: [background, thing]\n")
    (root / "splits").mkdir()
    for split, names in splits.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(names) + "\n")


def test_folder_reports_an_image_in_train_and_test_once_per_pair(tmp_path) -> None:
    root = tmp_path / "mine"
    write_folder(root, ["a", "b", "c"], {"train": ["a", "b"], "val": ["c"], "test": ["b"]})
    report = check_dataset("folder", root, "train")
    assert report.problems["split_leak"].count == 1
    assert "of split 'train' is also in split 'test'" in report.problems["split_leak"].examples[0]
    assert check_dataset("folder", root, "val").problems["split_leak"].count == 0


def test_sunrgbd_train_and_test_numbers_are_not_the_same_images(tmp_path) -> None:
    sun._write(tmp_path / "sun")  # train img-000001.jpg and test img-000001.jpg: different files
    assert check_dataset("sunrgbd", tmp_path / "sun", "train").problems["split_leak"].count == 0


def test_an_absent_split_is_skipped(tmp_path) -> None:
    root = tmp_path / "mine"
    write_folder(root, ["a", "b"], {"train": ["a"], "val": ["b"]})
    assert check_dataset("folder", root, "train").exit_code == 0


def test_generated_shapes_splits_are_not_reported(tmp_path) -> None:
    # shapes numbers each split's own samples 0..N-1: the same numbers, different pictures
    report = check_dataset("shapes", tmp_path, "train", options={"num_samples": 3})
    assert report.problems["split_leak"].count == 0


def test_nyudv2_frames_listed_in_train_and_test_are_reported(tmp_path) -> None:
    import scipy.io

    from tests import test_data_nyudv2 as nyu

    root = tmp_path / "nyud"
    root.mkdir()
    nyu._write_labeled_mat(root / "nyu_depth_v2_labeled.mat", *nyu._frames(3))
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.array([[1], [2]], np.uint16),
                                           "testNdxs": np.array([[2]], np.uint16)})  # fmt: skip
    scipy.io.savemat(root / "classMapping40.mat", {"mapClass": nyu._mapping40()})
    report = check_dataset("nyudv2", root, "test")
    assert report.problems["split_leak"].count == 1
    assert "of split 'test' is also in split 'train'" in report.problems["split_leak"].examples[0]
