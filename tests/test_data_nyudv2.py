"""NYUDv2 on miniature copies of the official v7.3 .mat file and of FCN's data/nyud layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from pixelwise.data import build_dataset
from pixelwise.data.nyudv2 import NYU13_CLASSES, NYU40_CLASSES, NYU40_TO_13, read_mapping40
from pixelwise.errors import PixelwiseError
from tests.paths import DATA

META = DATA / "meta"
H, W = 4, 6  # the real frames are 480x640; the storage order is what matters here


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))


def _frames(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images (n,H,W,3), raw labels (n,H,W) and depths (n,H,W) in reading order."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, H, W, 3), dtype=np.uint8)
    labels = np.zeros((n, H, W), dtype=np.uint16)
    labels[:, 0, :] = 1
    labels[:, 1, :3] = 2
    labels[:, 2, 5] = 894
    labels[1, 3, 0] = 7
    depths = rng.uniform(0.5, 10.0, (n, H, W)).astype(np.float32)
    return images, labels, depths


def _write_labeled_mat(
    path: Path, images: np.ndarray, labels: np.ndarray, depths: np.ndarray
) -> None:
    """Store like MATLAB v7.3: a 512-byte header block, then HDF5 with every array transposed."""
    with h5py.File(path, "w", userblock_size=512) as f:
        f["images"] = images.transpose(0, 3, 2, 1)  # (n, 3, W, H), as h5py sees the real file
        f["labels"] = labels.transpose(0, 2, 1)  # (n, W, H)
        f["depths"] = depths.transpose(0, 2, 1)
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan 1 00:00:00 2012 HDF5")


def _mapping40() -> np.ndarray:
    mapping = np.full((1, 894), 40, dtype=np.uint8)
    mapping[0, 0] = 5  # raw 1 -> chair
    mapping[0, 1] = 1  # raw 2 -> wall
    mapping[0, 6] = 23  # raw 7 -> books
    mapping[0, 893] = 2  # raw 894 -> floor
    return mapping


@pytest.fixture
def official_root(tmp_path) -> tuple[Path, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    root = tmp_path / "nyud"
    root.mkdir()
    frames = _frames(3)
    _write_labeled_mat(root / "nyu_depth_v2_labeled.mat", *frames)
    scipy.io.savemat(
        root / "splits.mat",
        {
            "trainNdxs": np.array([[1], [3]], dtype=np.uint16),
            "testNdxs": np.array([[2]], dtype=np.uint16),
        },
    )
    scipy.io.savemat(root / "classMapping40.mat", {"mapClass": _mapping40()})
    return root, frames


def test_official_layout_orientation_and_40_class_labels(official_root):
    root, (images, labels, _) = official_root
    dataset = build_dataset("nyudv2", root, split="train")
    assert len(dataset) == 2 and dataset.num_classes == 40
    image, mask = dataset[1]  # trainNdxs[1] = 3 (1-based) -> frame 2
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert torch.equal(image, torch.from_numpy(images[2]).permute(2, 0, 1))
    expected = np.full((H, W), 255)
    expected[0, :] = 4  # raw 1 -> chair (5) -> 4
    expected[1, :3] = 0  # raw 2 -> wall
    expected[2, 5] = 1  # raw 894 -> floor
    assert mask.dtype == torch.int64
    assert mask.tolist() == expected.tolist()
    assert len(build_dataset("nyudv2", root, split="test")) == 1


def test_13_classes_go_through_the_40_classes(official_root):
    root, _ = official_root
    dataset = build_dataset("nyudv2", root, split="test", class_set=13)
    assert dataset.classes == NYU13_CLASSES and len(dataset.palette) == 13
    _, mask = dataset[0]  # frame 2 (1-based), with raw 7 at (3, 0)
    assert mask[0, 0] == NYU13_CLASSES.index("chair")
    assert mask[1, 0] == NYU13_CLASSES.index("wall")
    assert mask[2, 5] == NYU13_CLASSES.index("floor")
    assert mask[3, 0] == NYU13_CLASSES.index("books")
    assert mask[3, 1] == 255
    # Every 40-class name lands on the 13-class name the Couprie/Eigen grouping gives it.
    to13 = {NYU40_CLASSES[i]: NYU13_CLASSES[j - 1] for i, j in enumerate(NYU40_TO_13)}
    assert to13["television"] == "tv" and to13["blinds"] == "window" and to13["door"] == "wall"
    assert to13["bookshelf"] == "furniture" and to13["person"] == "objects"


def test_13_class_mapping_file_is_read(official_root, tmp_path):
    root, _ = official_root
    table = np.full((1, 40), 7, dtype=np.uint8)  # everything "objects" ...
    table[0, 4] = 4  # ... except chair
    path = tmp_path / "class13Mapping.mat"
    scipy.io.savemat(
        path,
        {"classMapping13": {"mapClass": table, "labelName": np.array(NYU13_CLASSES, dtype=object)}},
    )
    dataset = build_dataset("nyudv2", root, split="test", class_set=13, mapping13_file=path)
    _, mask = dataset[0]
    assert mask[0, 0] == 3 and mask[1, 0] == 6 and mask[3, 1] == 255


def test_depth_is_a_fourth_float_channel_in_metres(official_root):
    root, (images, _, depths) = official_root
    dataset = build_dataset("nyudv2", root, split="train", depth=True)
    image, mask = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (4, H, W) and mask.shape == (H, W)
    assert torch.equal(image[:3], torch.from_numpy(images[0]).permute(2, 0, 1).float())
    assert torch.allclose(image[3], torch.from_numpy(depths[0]))
    assert dataset.load_image(dataset.samples[0]).dtype == torch.uint8


def test_unknown_raw_label_and_val_split_fail_clearly(official_root):
    root, (images, labels, depths) = official_root
    with pytest.raises(PixelwiseError, match="only train"):
        len(build_dataset("nyudv2", root, split="val"))
    labels = labels.copy()
    labels[0, 3, 3] = 900
    _write_labeled_mat(root / "nyu_depth_v2_labeled.mat", images, labels, depths)
    with pytest.raises(PixelwiseError, match=r"\[900\]"):
        build_dataset("nyudv2", root, split="train")[0]


def test_handle_is_per_process_and_not_pickled(official_root):
    root, _ = official_root
    dataset = build_dataset("nyudv2", root, split="train")
    first = dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone._h5 is None
    assert torch.equal(clone[0][1], first[1])
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1)
    images, masks = next(iter(loader))
    assert images.shape == (2, 3, H, W) and torch.equal(masks[0], first[1])


def test_not_an_nyud_root(tmp_path):
    with pytest.raises(PixelwiseError, match="nyu_depth_v2_labeled.mat"):
        len(build_dataset("nyudv2", tmp_path, split="train"))


def test_fcn_layout(tmp_path):
    root = tmp_path / "data" / "nyud"
    (root / "data" / "images").mkdir(parents=True)
    (root / "segmentation").mkdir()
    segmentation = np.zeros((H, W), dtype=np.uint8)
    segmentation[0] = 1
    segmentation[1] = 40
    for name in ("5001", "5002", "5003"):
        Image.fromarray(np.full((H, W, 3), int(name) % 256, dtype=np.uint8)).save(
            root / "data" / "images" / f"img_{name}.png"
        )
        scipy.io.savemat(root / "segmentation" / f"img_{name}.mat", {"segmentation": segmentation})
    (root / "train.txt").write_text("5001\n")
    (root / "val.txt").write_text("5002\n")
    (root / "test.txt").write_text("5003\n")
    dataset = build_dataset("nyudv2", root, split="trainval")
    assert len(dataset) == 2
    image, mask = dataset[1]
    assert image.shape == (3, H, W) and int(image[0, 0, 0]) == 5002 % 256
    assert (
        mask[0].tolist() == [0] * W
        and mask[1].tolist() == [39] * W
        and mask[2].tolist() == [255] * W
    )
    _, mask13 = build_dataset("nyudv2", root, split="test", class_set=13)[0]
    assert mask13[0, 0] == NYU13_CLASSES.index("wall")
    assert mask13[1, 0] == NYU13_CLASSES.index("objects")


@pytest.mark.skipif(
    not (META / "nyudv2_classMapping40.mat").is_file(), reason="real meta files absent"
)
def test_real_meta_files():
    mapping = read_mapping40(META / "nyudv2_classMapping40.mat")
    assert mapping.size == 894 and mapping.min() == 1 and mapping.max() == 40
    names = scipy.io.loadmat(META / "nyudv2_classMapping40.mat")["className"].ravel()
    assert tuple(str(n[0]) for n in names) == NYU40_CLASSES
    splits = scipy.io.loadmat(META / "nyudv2_splits.mat")
    train, test = splits["trainNdxs"].ravel(), splits["testNdxs"].ravel()
    assert train.size == 795 and test.size == 654
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(1, 1450))
    fcn_names = (META / "data" / "nyud" / "classes.txt").read_text().splitlines()[:40]
    assert tuple(fcn_names) == NYU40_CLASSES


def _fcn_root(tmp_path: Path) -> Path:
    """FCN's data/nyud with one test frame whose 40-class labels are 1..24 in a 4x6 grid."""
    root = tmp_path / "nyud_fcn"
    (root / "data" / "images").mkdir(parents=True)
    (root / "segmentation").mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(root / "data/images/img_5001.png")
    segmentation = np.arange(1, H * W + 1, dtype=np.uint8).reshape(H, W)
    scipy.io.savemat(root / "segmentation/img_5001.mat", {"segmentation": segmentation})
    (root / "test.txt").write_text("5001\n")
    return root


def test_a_raw_894_class_13_table_is_refused_on_fcn_40_class_labels(tmp_path):
    # The widely used conversion script writes mapClass with one entry per raw NYU class (894);
    # FCN's labels hold the 40 classes, so indexing that table by them would pick wrong entries.
    root = _fcn_root(tmp_path)
    table = np.random.default_rng(0).integers(1, 14, (1, 894)).astype(np.uint8)
    path = tmp_path / "classMapping13.mat"
    scipy.io.savemat(path, {"mapClass": table})
    dataset = build_dataset("nyudv2", root, split="test", class_set=13, mapping13_file=path)
    with pytest.raises(PixelwiseError, match="894 raw NYUDv2 classes.*40-entry") as error:
        dataset[0]
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_40_entry_13_class_table_maps_fcn_labels_by_their_40_class_id(tmp_path):
    root = _fcn_root(tmp_path)
    table = np.asarray(NYU40_TO_13, dtype=np.uint8)[::-1].copy().reshape(1, 40)  # any 40 entries
    path = tmp_path / "class13Mapping.mat"
    scipy.io.savemat(path, {"classMapping13": {"mapClass": table}})
    _, mask = build_dataset("nyudv2", root, split="test", class_set=13, mapping13_file=path)[0]
    expected = table.ravel()[np.arange(H * W)] - 1  # 40-class id k (1-based) -> table[k - 1]
    assert mask.flatten().tolist() == expected.tolist()


def test_a_raw_894_class_13_table_maps_the_official_labels_directly(official_root, tmp_path):
    root, (_, labels, _) = official_root
    table = np.full((1, 894), 7, dtype=np.uint8)  # objects ...
    table[0, 6] = 2  # ... except raw 7 -> books (whatever classMapping40 says raw 7 is)
    table[0, 893] = 1  # raw 894 -> bed
    path = tmp_path / "classMapping13.mat"
    scipy.io.savemat(path, {"mapClass": table})
    _, mask = build_dataset("nyudv2", root, split="test", class_set=13, mapping13_file=path)[0]
    assert mask[3, 0] == NYU13_CLASSES.index("books") and mask[2, 5] == NYU13_CLASSES.index("bed")
    assert mask[0, 0] == NYU13_CLASSES.index("objects") and mask[3, 1] == 255


def test_a_13_class_struct_without_map_class_is_refused(official_root, tmp_path):
    root, _ = official_root
    path = tmp_path / "class13Mapping.mat"
    names = np.array(NYU13_CLASSES, dtype=object)
    # the first field used to be taken for the table: here it is the class names
    scipy.io.savemat(path, {"classMapping13": {"labelName": names, "other": np.ones((1, 40))}})
    dataset = build_dataset("nyudv2", root, split="test", class_set=13, mapping13_file=path)
    with pytest.raises(PixelwiseError, match="no 'mapClass' field"):
        dataset[0]
