"""Instance datasets: tiny copies in the COCO, Cityscapes, VOC and SBD formats load to Mask R-CNN
targets (hand-computed boxes, labels, mask sums), the transforms move boxes with masks, and bad
input is answered in one sentence."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from pixelwise.data import build_dataset
from pixelwise.data.base import voc_colormap
from pixelwise.data.check import check_dataset
from pixelwise.data.coco import COCO80_CLASSES, COCO_CATEGORY_IDS
from pixelwise.data.instances import boxes_from_masks
from pixelwise.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_instance_eval_transforms,
    build_instance_train_transforms,
)
from pixelwise.errors import PixelwiseError

H, W = 6, 8  # COCO images
CH, CW = 8, 12  # Cityscapes and VOC images
PERSON, CAR, DOG = 1, 3, 18  # COCO category ids


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))


def assert_target(target: dict, boxes, labels, sums, iscrowd, size) -> None:
    """The documented target: types, shapes and the hand-computed values."""
    n = len(labels)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
    assert tuple(target["boxes"].canvas_size) == size
    assert target["boxes"].tolist() == boxes
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == labels
    assert isinstance(target["masks"], tv_tensors.Mask)
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, *size)
    assert target["masks"].sum(dim=(1, 2)).tolist() == sums
    assert target["iscrowd"].dtype == torch.int64 and target["iscrowd"].tolist() == iscrowd
    assert target["area"].dtype == torch.float32 and target["area"].shape == (n,)
    assert isinstance(target["image_id"], int)


# -- COCO ----------------------------------------------------------------------------------------
def _polygon(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    """A polygon on pixel boundaries: rasterises to columns x0..x1-1 and rows y0..y1-1."""
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _compressed_rle(rows: slice, cols: slice) -> dict:
    mask = np.zeros((H, W), dtype=np.uint8, order="F")
    mask[rows, cols] = 1
    return {"size": [H, W], "counts": mask_utils.encode(mask)["counts"].decode("ascii")}


def _ann(ann_id, image_id, category, segmentation, bbox, area, iscrowd=0) -> dict:
    return {
        "id": ann_id, "image_id": image_id, "category_id": category, "segmentation": segmentation,
        "bbox": bbox, "area": area, "iscrowd": iscrowd,
    }  # fmt: skip


def write_coco(root: Path, annotations: list[dict] | None = None, categories=None) -> Path:
    """val2017 with 3 images: 1 has a polygon, a compressed RLE and a crowd (uncompressed RLE),
    2 a dog polygon, 3 nothing at all."""
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    images = []
    for image_id in (1, 2, 3):
        name = f"{image_id:012d}.jpg"
        Image.fromarray(np.full((H, W, 3), 40 * image_id, np.uint8)).save(root / "val2017" / name)
        images.append({"id": image_id, "file_name": name, "height": H, "width": W})
    if annotations is None:
        annotations = [
            _ann(11, 1, PERSON, _polygon(1, 1, 4, 3), [1, 1, 3, 2], 6.0),
            _ann(12, 1, CAR, _compressed_rle(slice(2, 4), slice(3, 6)), [3, 2, 3, 2], 6.0),
            # column-major runs, zeros first: the bottom row of every column
            _ann(13, 1, PERSON, {"size": [H, W], "counts": [5, 1] * W}, [0, 5, 8, 1], 8.0, 1),
            _ann(21, 2, DOG, _polygon(0, 0, 2, 4), [0, 0, 2, 4], 8.0),
        ]
    if categories is None:
        categories = [
            {"id": cid, "name": name}
            for cid, name in zip(COCO_CATEGORY_IDS, COCO80_CLASSES, strict=True)
        ]
    document = {"images": images, "annotations": annotations, "categories": categories}
    path = root / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(document))
    return path


def test_coco_targets_polygon_rle_crowd_and_an_empty_image(tmp_path):
    write_coco(tmp_path)
    dataset = build_dataset("coco_instances", tmp_path, split="val")
    assert len(dataset) == 3  # the image without objects is kept
    assert dataset.classes[0] == "background" and dataset.num_classes == 81
    assert dataset.task == "instance" and dataset.ignore_index == 255
    assert len(dataset.palette) == 81
    image, target = dataset[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
    assert image.shape == (3, H, W)
    car = dataset.classes.index("car")
    assert_target(
        target,
        boxes=[[1.0, 1.0, 4.0, 3.0], [3.0, 2.0, 6.0, 4.0], [0.0, 5.0, 8.0, 6.0]],
        labels=[1, car, 1],
        sums=[6, 6, 8],
        iscrowd=[0, 0, 1],
        size=(H, W),
    )
    assert target["image_id"] == 1 and target["area"].tolist() == [6.0, 6.0, 8.0]
    assert target["masks"][1].nonzero().tolist() == [[r, c] for r in (2, 3) for c in (3, 4, 5)]
    assert target["masks"][2][H - 1].tolist() == [1] * W
    dog = dataset[1][1]
    assert dog["labels"].tolist() == [dataset.classes.index("dog")] == [17]
    assert dataset.category_ids[17] == DOG  # label -> the category id COCO's JSON needs
    assert dataset.category_ids[car] == CAR and dataset.category_ids[0] == 0
    _, empty = dataset[2]
    assert_target(empty, boxes=[], labels=[], sums=[], iscrowd=[], size=(H, W))
    assert empty["image_id"] == 3


def test_coco_voc_and_file_class_sets(tmp_path):
    write_coco(tmp_path)
    voc = build_dataset("coco_instances", tmp_path, split="val", class_set="voc")
    assert voc.num_classes == 21 and voc[0][1]["labels"].tolist() == [15, 7, 15]
    assert voc.category_ids[15] == PERSON and voc.category_ids[7] == CAR
    mine = tmp_path / "mine"
    write_coco(
        mine,
        annotations=[_ann(1, 1, 7, _polygon(0, 0, 2, 2), [0, 0, 2, 2], 4.0)],
        categories=[{"id": 7, "name": "widget"}, {"id": 3, "name": "gadget"}],
    )
    custom = build_dataset("coco_instances", mine, split="val", class_set="file")
    assert custom.classes == ("background", "gadget", "widget")
    assert custom.category_ids == (0, 3, 7)
    assert custom[0][1]["labels"].tolist() == [2]


def test_coco_ground_truth_evaluates_itself_to_ap_1(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    write_coco(tmp_path)
    dataset = build_dataset("coco_instances", tmp_path, split="val")
    document = dataset.coco_ground_truth()
    assert [image["id"] for image in document["images"]] == [1, 2, 3]
    assert [ann["category_id"] for ann in document["annotations"]] == [PERSON, CAR, PERSON, DOG]
    assert document["annotations"][0]["bbox"] == [1.0, 1.0, 3.0, 2.0]
    assert [ann["iscrowd"] for ann in document["annotations"]] == [0, 0, 1, 0]
    detections = [
        {**{k: ann[k] for k in ("image_id", "category_id", "bbox", "segmentation")}, "score": 1.0}
        for ann in document["annotations"]
        if not ann["iscrowd"]
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = document
        truth.createIndex()
        for kind in ("bbox", "segm"):
            evaluation = COCOeval(truth, truth.loadRes(detections), kind)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
            assert evaluation.stats[0] == pytest.approx(1.0), kind


def test_coco_unknown_category_names_file_value_and_fix(tmp_path):
    write_coco(tmp_path, annotations=[_ann(5, 1, 999, _polygon(0, 0, 2, 2), [0, 0, 2, 2], 4.0)])
    dataset = build_dataset("coco_instances", tmp_path, split="val")
    with pytest.raises(PixelwiseError) as error:
        dataset[0]
    message = str(error.value)
    assert "instances_val2017.json" in message and "category_id 999" in message
    assert "fix the file" in message and "\n" not in message


def test_coco_missing_annotation_file(tmp_path):
    write_coco(tmp_path).unlink()
    with pytest.raises(PixelwiseError, match=r"instances_val2017\.json does not exist; unpack"):
        len(build_dataset("coco_instances", tmp_path, split="val"))


def test_datasets_check_walks_the_painted_class_map(tmp_path):
    write_coco(tmp_path)
    report = check_dataset("coco_instances", tmp_path, "val", workers=1)
    assert report.exit_code == 0 and report.samples == 3
    car, dog = COCO80_CLASSES.index("car") + 1, COCO80_CLASSES.index("dog") + 1
    # the person and the car share the pixel (2, 3): ignore, as are the 8 of the crowd row
    assert report.class_pixels[1] == 5 and report.class_pixels[car] == 5
    assert report.class_pixels[dog] == 8 and report.ignore_pixels == 9
    assert sum(report.class_pixels) + report.ignore_pixels == 3 * H * W


# -- Cityscapes ----------------------------------------------------------------------------------
def instance_ids() -> np.ndarray:
    """Road everywhere; two people, a car, a bicycle group (crowd) and a caravan (not evaluated)."""
    ids = np.full((CH, CW), 7, dtype=np.uint16)
    ids[0, :] = 23  # sky
    ids[1:4, 1:3] = 24000  # person 0
    ids[4:7, 1:4] = 24001  # person 1
    ids[0:3, 6:11] = 26000  # car 0
    ids[6:8, 8:12] = 33  # bicycle group without instances
    ids[4:6, 6:8] = 29000  # caravan
    return ids


def write_cityscapes_frame(root: Path, split: str, city: str, base: str, ids: np.ndarray) -> Path:
    image = root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png"
    label = root / "gtFine" / split / city / f"{base}_gtFine_instanceIds.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    label.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((CH, CW, 3), 90, np.uint8)).save(image)
    Image.fromarray(ids).save(label)  # uint16 -> a 16-bit PNG, as the official files
    return label


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    write_cityscapes_frame(root, "val", "frankfurt", "frankfurt_000000_000294", instance_ids())
    empty = np.full((CH, CW), 7, dtype=np.uint16)
    write_cityscapes_frame(root, "val", "lindau", "lindau_000000_000019", empty)
    return root


def test_cityscapes_instance_ids_to_targets(cityscapes_root):
    with Image.open(next(cityscapes_root.rglob("frankfurt*instanceIds.png"))) as png:
        assert png.mode.startswith("I")  # really 16 bits on disk
    dataset = build_dataset("cityscapes_instances", cityscapes_root, split="val")
    assert dataset.classes == (
        "background", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    )  # fmt: skip
    assert dataset.num_classes == 9 and dataset.category_ids == (0, 24, 25, 26, 27, 28, 31, 32, 33)
    assert dataset.palette[1] == (220, 20, 60)
    image, target = dataset[0]
    assert image.shape == (3, CH, CW)
    # in id order: the bicycle group (33) first, then 24000, 24001, 26000; no caravan
    assert_target(
        target,
        boxes=[
            [8.0, 6.0, 12.0, 8.0],
            [1.0, 1.0, 3.0, 4.0],
            [1.0, 4.0, 4.0, 7.0],
            [6.0, 0.0, 11.0, 3.0],
        ],
        labels=[8, 1, 1, 3],
        sums=[8, 6, 9, 15],
        iscrowd=[1, 0, 0, 0],
        size=(CH, CW),
    )
    assert target["area"].tolist() == [8.0, 6.0, 9.0, 15.0] and target["image_id"] == 0
    _, empty = dataset[1]
    assert_target(empty, boxes=[], labels=[], sums=[], iscrowd=[], size=(CH, CW))
    assert empty["image_id"] == 1
    painted = dataset.load_mask(dataset.samples[0])
    assert int((painted == 255).sum()) == 8 + 4  # the group and the caravan are ignore
    assert int((painted == 1).sum()) == 15 and int((painted == 3).sum()) == 15


def test_cityscapes_bad_value_and_missing_file(cityscapes_root):
    ids = instance_ids()
    ids[0, 0] = 50001  # "class 50": no Cityscapes label id
    write_cityscapes_frame(cityscapes_root, "val", "frankfurt", "frankfurt_000000_000294", ids)
    dataset = build_dataset("cityscapes_instances", cityscapes_root, split="val")
    with pytest.raises(
        PixelwiseError,
        match=r"frankfurt_000000_000294_gtFine_instanceIds\.png holds values \[50001\]",
    ):
        dataset[0]
    next(cityscapes_root.rglob("lindau*instanceIds.png")).unlink()
    with pytest.raises(
        PixelwiseError,
        match=r"has no label: expected .*lindau_000000_000019_gtFine_instanceIds\.png",
    ):
        len(build_dataset("cityscapes_instances", cityscapes_root, split="val"))


# -- VOC and SBD ---------------------------------------------------------------------------------
def write_palette_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array.astype(np.uint8), mode="P")
    img.putpalette([c for rgb in voc_colormap(256) for c in rgb])
    img.save(path)


def voc_maps() -> tuple[np.ndarray, np.ndarray]:
    """Object and class maps: a person (object 1) and a car (object 2) with void bands around."""
    objects = np.zeros((CH, CW), np.uint8)
    classes = np.zeros((CH, CW), np.uint8)
    objects[1:4, 1:5] = 1
    classes[1:4, 1:5] = 15
    objects[4:7, 6:11] = 2
    classes[4:7, 6:11] = 7
    classes[5, 6] = 12  # one stray dog pixel: the majority under object 2 is still car
    objects[0, 0:6] = classes[0, 0:6] = 255  # the void band
    return objects, classes


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    root = tmp_path / "VOCdevkit" / "VOC2012"
    objects, classes = voc_maps()
    for image_id, (obj, cls) in {
        "2007_000032": (objects, classes),
        "2007_000033": (np.zeros_like(objects), np.zeros_like(classes)),
    }.items():
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((CH, CW, 3), 120, np.uint8)).save(
            root / "JPEGImages" / f"{image_id}.jpg"
        )
        write_palette_png(root / "SegmentationObject" / f"{image_id}.png", obj)
        write_palette_png(root / "SegmentationClass" / f"{image_id}.png", cls)
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("2007_000032\n2007_000033\n")
    (sets / "train.txt").write_text("2008_000001\n")
    (sets / "trainval.txt").write_text("2007_000032\n2007_000033\n")
    return root


def test_voc_object_and_class_pngs_to_targets(voc_root):
    dataset = build_dataset("voc_instances", voc_root, split="val")
    assert dataset.num_classes == 21 and dataset.classes[15] == "person"
    assert dataset.category_ids[15] == 15
    image, target = dataset[0]
    assert image.shape == (3, CH, CW)
    assert_target(
        target,
        boxes=[[1.0, 1.0, 5.0, 4.0], [6.0, 4.0, 11.0, 7.0]],
        labels=[15, 7],
        sums=[12, 15],
        iscrowd=[0, 0],
        size=(CH, CW),
    )
    _, empty = dataset[1]
    assert_target(empty, boxes=[], labels=[], sums=[], iscrowd=[], size=(CH, CW))
    painted = dataset.load_mask(dataset.samples[0])
    assert painted[0, :6].tolist() == [255] * 6 and int((painted == 7).sum()) == 15


def test_voc_bad_class_value_and_missing_object_png(voc_root):
    objects, classes = voc_maps()
    classes[2, 2] = 30
    write_palette_png(voc_root / "SegmentationClass" / "2007_000032.png", classes)
    dataset = build_dataset("voc_instances", voc_root, split="val")
    with pytest.raises(PixelwiseError, match=r"2007_000032\.png holds class values \[30\] outside"):
        dataset[0]
    (voc_root / "SegmentationObject" / "2007_000033.png").unlink()
    with pytest.raises(PixelwiseError, match=r"SegmentationObject/2007_000033\.png does not exist"):
        dataset[1]


def write_sbd(root: Path, image_id: str, instances: np.ndarray, classes: np.ndarray) -> None:
    """``inst/<id>.mat`` and ``cls/<id>.mat`` in SBD's struct layout (1x1 structs GTinst, GTcls)."""
    for folder in ("img", "inst", "cls"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((CH, CW, 3), 60, np.uint8)).save(root / "img" / f"{image_id}.jpg")
    count = int(instances.max())
    boundaries = np.empty((count, 1), dtype=object)
    for k in range(count):
        boundaries[k, 0] = np.zeros((CH, CW), dtype=bool)
    categories = np.array(
        [np.bincount(classes[instances == k + 1]).argmax() for k in range(count)], np.uint8
    ).reshape(-1, 1)
    scipy.io.savemat(
        root / "inst" / f"{image_id}.mat",
        {
            "GTinst": {
                "Segmentation": instances,
                "Boundaries": boundaries,
                "Categories": categories,
            }
        },
    )
    present = np.unique(classes[classes > 0]).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(
        root / "cls" / f"{image_id}.mat",
        {
            "GTcls": {
                "Boundaries": boundaries,
                "Segmentation": classes,
                "CategoriesPresent": present,
            }
        },
    )


def test_sbd_inst_and_cls_mats_to_targets(tmp_path, voc_root):
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    instances = np.zeros((CH, CW), np.uint8)
    classes = np.zeros((CH, CW), np.uint8)
    instances[2:5, 3:9] = 1
    classes[2:5, 3:9] = 12  # dog
    instances[6:8, 0:2] = 2
    classes[6:8, 0:2] = 15  # person
    write_sbd(sbd, "2008_000002", instances, classes)
    (sbd / "train.txt").write_text("2008_000002\n")
    (sbd / "val.txt").write_text("")
    dataset = build_dataset("voc_instances", voc_root, split="sbd_train", sbd_root=str(sbd))
    image, target = dataset[0]
    assert image.shape == (3, CH, CW)
    assert_target(
        target,
        boxes=[[3.0, 2.0, 9.0, 5.0], [0.0, 6.0, 2.0, 8.0]],
        labels=[12, 15],
        sums=[18, 4],
        iscrowd=[0, 0],
        size=(CH, CW),
    )
    (sbd / "inst" / "2008_000002.mat").write_bytes(b"not a mat file")
    with pytest.raises(PixelwiseError, match=r"inst/2008_000002\.mat could not be read .*SBD"):
        dataset[0]


def test_sbd_root_without_inst_folder(tmp_path, voc_root):
    sbd = tmp_path / "sbd"
    for name in ("img", "cls"):
        (sbd / name).mkdir(parents=True)
    (sbd / "train.txt").write_text("x\n")
    (sbd / "val.txt").write_text("x\n")
    with pytest.raises(PixelwiseError, match="not an SBD root: expected inst inside it"):
        len(build_dataset("voc_instances", voc_root, split="sbd_val", sbd_root=str(sbd)))


# -- transforms ----------------------------------------------------------------------------------
def test_flip_moves_boxes_with_masks_and_normalises(voc_root):
    dataset = build_dataset("voc_instances", voc_root, split="val")
    image, target = dataset[0]
    transform = build_instance_train_transforms(hflip=True)
    flipped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        out_image, out = transform(image, target)
        assert type(out_image) is torch.Tensor and out_image.dtype == torch.float32
        assert type(out["boxes"]) is torch.Tensor and out["masks"].dtype == torch.uint8
        # the box of every transformed mask is exactly the transformed box
        assert out["boxes"].tolist() == boxes_from_masks(out["masks"].numpy()).tolist()
        assert out["labels"].tolist() == [15, 7] and out["image_id"] == 0
        if out["boxes"][0, 0] != target["boxes"][0, 0]:
            flipped += 1
            assert out["boxes"][0].tolist() == [CW - 5.0, 1.0, CW - 1.0, 4.0]
            assert torch.equal(out["masks"], target["masks"].flip(-1))
    assert 0 < flipped < 12  # both outcomes happened
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.allclose(out_image, (image.float() / 255 - mean) / std, atol=1e-6)


def test_train_drops_crowds_eval_keeps_them_and_resize_scales(tmp_path):
    write_coco(tmp_path)
    dataset = build_dataset("coco_instances", tmp_path, split="val")
    image, target = dataset[0]
    _, train = build_instance_train_transforms(hflip=False)(image, target)
    assert train["iscrowd"].tolist() == [0, 0] and train["masks"].shape[0] == 2
    assert train["area"].tolist() == [6.0, 6.0] and len(train["labels"]) == 2
    big_image, big = build_instance_eval_transforms(resize=(2 * H, 2 * W))(image, target)
    assert big_image.shape == (3, 2 * H, 2 * W) and big["masks"].shape == (3, 2 * H, 2 * W)
    assert big["iscrowd"].tolist() == [0, 0, 1]
    assert big["boxes"].tolist() == [[2, 2, 8, 6], [6, 4, 12, 8], [0, 10, 16, 12]]
    assert big["masks"].sum(dim=(1, 2)).tolist() == [24, 24, 32]  # nearest: 4 px per pixel
    # at half the size the 1-row crowd box is half a pixel high: it goes, with its mask, label,
    # iscrowd and area; the two boxes of 1.5 x 1 pixels stay
    _, small = build_instance_eval_transforms(resize=(H // 2, W // 2))(image, target)
    assert small["boxes"].tolist() == [[0.5, 0.5, 2.0, 1.5], [1.5, 1.0, 3.0, 2.0]]
    assert small["iscrowd"].tolist() == [0, 0] and small["labels"].tolist() == [1, 3]
    assert small["masks"].shape == (2, H // 2, W // 2) and small["area"].tolist() == [6.0, 6.0]


def test_an_image_without_objects_goes_through_both_pipelines(tmp_path):
    write_coco(tmp_path)
    dataset = build_dataset("coco_instances", tmp_path, split="val")
    image, target = dataset[2]
    for transform in (
        build_instance_train_transforms(resize=(12, 16)),
        build_instance_eval_transforms(resize=(12, 16)),
    ):
        out_image, out = transform(image, target)
        assert out_image.shape == (3, 12, 16)
        assert out["boxes"].shape == (0, 4) and out["masks"].shape == (0, 12, 16)
        assert out["labels"].shape == out["iscrowd"].shape == out["area"].shape == (0,)
        assert out["image_id"] == 3


def test_dataset_applies_its_transforms(voc_root):
    dataset = build_dataset("voc_instances", voc_root, split="val")
    dataset.transforms = build_instance_eval_transforms(resize=(4, 6))
    image, target = dataset[0]
    assert image.shape == (3, 4, 6) and image.dtype == torch.float32
    assert target["masks"].shape[-2:] == (4, 6)


def test_datasets_check_counts_an_unknown_category_as_a_problem(tmp_path):
    write_coco(tmp_path, annotations=[_ann(5, 2, 999, _polygon(0, 0, 2, 2), [0, 0, 2, 2], 4.0)])
    report = check_dataset("coco_instances", tmp_path, "val", workers=1)
    assert report.exit_code == 1 and report.problems["unreadable_label"].count == 1
    assert "category_id 999" in report.problems["unreadable_label"].examples[0]


def test_coco_ground_truth_from_annotations_equals_the_one_from_targets(tmp_path):
    from pixelwise.data.instances import InstanceDataset

    annotations = [
        _ann(11, 1, PERSON, _polygon(1, 1, 4, 3), [1.25, 1.5, 2.7, 1.5], 5.3),
        _ann(12, 1, CAR, _compressed_rle(slice(2, 4), slice(3, 6)), [3, 2, 3, 2], 6.0),
        _ann(13, 1, PERSON, {"size": [H, W], "counts": [5, 1] * W}, [0, 5, 8, 1], 8.0, 1),
        _ann(14, 2, DOG, _polygon(6, 0, 9, 3), [6.5, 0, 3.5, 3], 6.0),  # box past the border
        _ann(15, 2, DOG, _polygon(0, 0, 1, 1), [2, 2, 0, 1], 0.0),  # degenerate: left out
    ]
    write_coco(tmp_path, annotations=annotations)
    dataset = build_dataset("coco_instances", tmp_path, split="val")
    fast = dataset.coco_ground_truth()
    assert fast == InstanceDataset.coco_ground_truth(dataset)
    assert [a["bbox"] for a in fast["annotations"]][-1] == [6.5, 0.0, 1.5, 3.0]
    assert len(fast["annotations"]) == 4 and len(fast["images"]) == 3


def test_datasets_check_on_cityscapes_and_voc_instances(cityscapes_root, voc_root):
    city = check_dataset("cityscapes_instances", cityscapes_root, "val", workers=1)
    assert city.exit_code == 0 and city.samples == 2
    assert city.class_pixels[1] == 15 and city.class_pixels[3] == 15
    assert city.ignore_pixels == 12  # the bicycle group and the caravan
    voc = check_dataset("voc_instances", voc_root, "val", workers=1)
    assert voc.exit_code == 0 and voc.samples == 2
    # every pixel of an object gets the object's class, the stray dog pixel too
    assert voc.class_pixels[15] == 12 and voc.class_pixels[7] == 15 and voc.class_pixels[12] == 0
    assert voc.ignore_pixels == 6
