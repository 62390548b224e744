"""COCO 2017 on a miniature copy: one JSON with polygon, uncompressed-RLE crowd and compressed RLE."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from pixelwise.data import build_dataset
from pixelwise.data.coco import COCO80_CLASSES, COCO_CATEGORY_IDS, VOC21_CLASSES, compose_semantic
from pixelwise.errors import PixelwiseError

H, W = 6, 8
PERSON, CAR, DOG, GIRAFFE = 1, 3, 18, 25
VOC_PERSON, VOC_CAR, VOC_DOG = 15, 7, 12


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))


def _box_polygon(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    """A polygon on pixel boundaries: rasterises to columns x0..x1-1 and rows y0..y1-1."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _compressed_rle(rows: slice, cols: slice) -> dict:
    mask = np.zeros((H, W), dtype=np.uint8, order="F")
    mask[rows, cols] = 1
    rle = mask_utils.encode(mask)
    return {"size": [H, W], "counts": rle["counts"].decode("ascii")}  # a str, as in the JSON


def _annotation(ann_id, image_id, category, segmentation, bbox, area, iscrowd=0) -> dict:
    return {
        "id": ann_id, "image_id": image_id, "category_id": category, "segmentation": segmentation,
        "bbox": bbox, "area": area, "iscrowd": iscrowd,
    }  # fmt: skip


def _write(root: Path, split: str = "val") -> None:
    (root / f"{split}2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images = []
    for image_id in (1, 2, 3):
        name = f"{image_id:012d}.jpg"
        Image.fromarray(np.full((H, W, 3), 40 * image_id, dtype=np.uint8)).save(
            root / f"{split}2017" / name
        )
        images.append({"id": image_id, "file_name": name, "height": H, "width": W})
    crowd_bottom_row = {"size": [H, W], "counts": [5, 1] * W}  # column-major runs, zeros first
    annotations = [
        # image 1: a person polygon, a second person overlapping it, a car (compressed RLE)
        # overlapping the first person, a dog, a crowd of people and a giraffe (not a VOC class).
        _annotation(1, 1, PERSON, _box_polygon(1, 1, 4, 3), [1, 1, 3, 2], 6.0),
        _annotation(2, 1, PERSON, _box_polygon(0, 1, 2, 2), [0, 1, 2, 1], 2.0),
        _annotation(3, 1, CAR, _compressed_rle(slice(2, 4), slice(3, 6)), [3, 2, 3, 2], 6.0),
        _annotation(4, 1, DOG, _box_polygon(0, 3, 2, 5), [0, 3, 2, 2], 4.0),
        _annotation(5, 1, PERSON, crowd_bottom_row, [0, 5, 8, 1], 8.0, iscrowd=1),
        _annotation(6, 1, GIRAFFE, _box_polygon(6, 0, 8, 1), [6, 0, 2, 1], 2.0),
        # image 2: only a giraffe; image 3: nothing at all.
        _annotation(7, 2, GIRAFFE, _box_polygon(0, 0, 8, 6), [0, 0, 8, 6], 48.0),
    ]
    categories = [
        {"id": cid, "name": name, "supercategory": "x"}
        for cid, name in zip(COCO_CATEGORY_IDS, COCO80_CLASSES, strict=True)
    ]
    document = {
        "info": {},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(document))


def _expected_image1(person: int, car: int, dog: int, giraffe: int) -> list[list[int]]:
    x = 255
    return [
        [0, 0, 0, 0, 0, 0, giraffe, giraffe],
        [person, person, person, person, 0, 0, 0, 0],  # two people overlap at (1, 1): same class
        [0, person, person, x, car, car, 0, 0],  # person and car overlap at (2, 3)
        [dog, dog, 0, car, car, car, 0, 0],
        [dog, dog, 0, 0, 0, 0, 0, 0],
        [x] * W,  # the crowd
    ]


def test_voc_class_set_masks_value_by_value(tmp_path):
    _write(tmp_path)
    dataset = build_dataset("coco", tmp_path, split="val")
    assert dataset.classes == VOC21_CLASSES and len(dataset) == 3  # val keeps empty images
    image, mask = dataset[0]
    assert image.shape == (3, H, W) and mask.dtype == torch.int64
    assert mask.tolist() == _expected_image1(VOC_PERSON, VOC_CAR, VOC_DOG, giraffe=0)
    assert dataset[1][1].tolist() == [[0] * W] * H  # giraffe only -> background in the VOC set
    assert dataset[2][1].tolist() == [[0] * W] * H


def test_all_class_set_is_background_plus_80(tmp_path):
    _write(tmp_path)
    dataset = build_dataset("coco", tmp_path, split="val", class_set="all")
    assert dataset.num_classes == 81 and dataset.classes[0] == "background"
    person, car, dog, giraffe = (
        dataset.classes.index(n) for n in ("person", "car", "dog", "giraffe")
    )
    assert (person, car, dog, giraffe) == (1, 3, 17, 24)
    assert dataset[0][1].tolist() == _expected_image1(person, car, dog, giraffe)
    assert (dataset[1][1] == giraffe).all()


def test_training_drops_images_with_little_annotation(tmp_path):
    _write(tmp_path, split="train")
    # every area <= 1000 px: an empty split is an error that says how to keep the images
    with pytest.raises(PixelwiseError, match=r"instances_train2017\.json.*min_area=1000"):
        len(build_dataset("coco", tmp_path, split="train"))
    kept = build_dataset("coco", tmp_path, split="train", min_area=10)
    assert [image_id for _, image_id in kept.samples] == [1]
    assert len(build_dataset("coco", tmp_path, split="train", class_set="all", min_area=10)) == 2


def test_load_instances_is_the_mask_rcnn_target(tmp_path):
    _write(tmp_path)
    dataset = build_dataset("coco", tmp_path, split="val")
    target = dataset.load_instances(0)
    assert target["labels"].tolist() == [VOC_PERSON, VOC_PERSON, VOC_CAR, VOC_DOG]
    assert target["boxes"][0].tolist() == [1.0, 1.0, 4.0, 3.0]
    assert target["masks"].shape == (4, H, W) and target["masks"].dtype == torch.uint8
    assert target["masks"][2].nonzero().tolist() == [[r, c] for r in (2, 3) for c in (3, 4, 5)]
    assert target["iscrowd"].tolist() == [0, 0, 0, 0] and int(target["image_id"]) == 1
    with_crowd = dataset.load_instances(0, include_crowd=True)
    assert with_crowd["iscrowd"].tolist() == [0, 0, 0, 0, 1]
    assert with_crowd["masks"][4][H - 1].tolist() == [1] * W
    empty = dataset.load_instances(2)
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, H, W)


def test_compose_semantic_rules():
    a = np.zeros((2, 3), np.uint8)
    a[0] = 1
    b = np.zeros((2, 3), np.uint8)
    b[:, 0] = 1
    overlap = compose_semantic([(a, 2, False), (b, 5, False)], 2, 3)
    assert overlap.tolist() == [[255, 2, 2], [5, 0, 0]]
    crowd = compose_semantic([(a, 2, False), (b, 2, True)], 2, 3)
    assert crowd.tolist() == [[255, 2, 2], [255, 0, 0]]


def test_missing_annotation_file_and_wrong_root(tmp_path):
    with pytest.raises(PixelwiseError, match="val2017"):
        len(build_dataset("coco", tmp_path, split="val"))
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations").mkdir()
    with pytest.raises(PixelwiseError, match="instances_val2017.json"):
        len(build_dataset("coco", tmp_path, split="val"))
    with pytest.raises(PixelwiseError, match="class_set"):
        build_dataset("coco", tmp_path, split="val", class_set="stuff")


def _edit_annotations(root: Path, edit) -> None:
    path = root / "annotations" / "instances_val2017.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def test_a_polygon_with_an_odd_number_of_coordinates_is_refused(tmp_path):
    _write(tmp_path)
    _edit_annotations(tmp_path, lambda d: d["annotations"][3]["segmentation"][0].pop())
    dataset = build_dataset("coco", tmp_path, split="val")
    with pytest.raises(PixelwiseError, match=r"annotation 4 of image 1 has a polygon with 7") as e:
        dataset[0]
    assert "instances_val2017.json" in str(e.value)


def test_an_annotation_of_an_unlisted_image_is_refused(tmp_path):
    _write(tmp_path)
    _edit_annotations(tmp_path, lambda d: d["annotations"][6].update(image_id=99))
    with pytest.raises(PixelwiseError, match="annotation 7 has image_id 99, which 'images'"):
        len(build_dataset("coco", tmp_path, split="val"))


def test_an_rle_of_another_size_is_refused(tmp_path):
    _write(tmp_path)
    _edit_annotations(tmp_path, lambda d: d["annotations"][2]["segmentation"].update(size=[H, 9]))
    with pytest.raises(
        PixelwiseError, match=r"annotation 3 of image 1 has an RLE of size \[6, 9\]"
    ):
        build_dataset("coco", tmp_path, split="val")[0]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[1, 2]", "top level is a list"),
        ('{"images": [], "categories": []}', "'annotations' is missing"),
        ('{"images": [{"id": 1}], "annotations": [], "categories": []}', "no 'file_name'"),
        ('{"images": [', "not a readable JSON file"),
    ],
)
def test_a_wrong_annotation_file_is_one_sentence(tmp_path, text, match):
    _write(tmp_path)
    (tmp_path / "annotations" / "instances_val2017.json").write_text(text)
    with pytest.raises(PixelwiseError, match=match) as error:
        len(build_dataset("coco", tmp_path, split="val"))
    assert "\n" not in str(error.value)


def test_an_image_listed_twice_is_refused(tmp_path):
    _write(tmp_path)
    _edit_annotations(tmp_path, lambda d: d["images"].append(dict(d["images"][0])))
    with pytest.raises(PixelwiseError, match="image id 1 is listed twice"):
        len(build_dataset("coco", tmp_path, split="val"))


def test_uncompressed_rle_counts_must_cover_the_image(tmp_path):
    _write(tmp_path)
    _edit_annotations(tmp_path, lambda d: d["annotations"][4]["segmentation"]["counts"].pop())
    dataset = build_dataset("coco", tmp_path, split="val")
    with pytest.raises(PixelwiseError, match="annotation 5 of image 1 has RLE counts"):
        dataset[0]
