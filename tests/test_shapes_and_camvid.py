import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.data import build_dataset, list_datasets
from pixelwise.errors import PixelwiseError


def test_shapes_is_deterministic_and_split_disjoint():
    a = build_dataset("shapes", split="train", image_size=(48, 40), num_samples=5, seed=3)
    b = build_dataset("shapes", split="train", image_size=(48, 40), num_samples=5, seed=3)
    v = build_dataset("shapes", split="val", image_size=(48, 40), num_samples=5, seed=3)
    x, y = a[4]
    assert x.shape == (3, 48, 40) and x.dtype == torch.uint8
    assert y.shape == (48, 40) and y.dtype == torch.int64
    assert torch.equal(x, b[4][0]) and torch.equal(y, b[4][1])
    assert not torch.equal(x, v[4][0])


def test_shapes_has_every_class_ignore_bands_and_uninformative_colour():
    ds = build_dataset("shapes", split="train", image_size=(64, 64), num_samples=60)
    pairs = [ds[i] for i in range(len(ds))]
    labels = torch.cat([y.flatten() for _, y in pairs])
    assert set(labels.unique().tolist()) == {0, 1, 2, 3, 4, 5, 255}
    # The mean colour of each class is close to the others': colour does not give the class.
    means = []
    for c in range(1, 6):
        pix = torch.cat([x[:, y == c] for x, y in pairs], dim=1).float()
        means.append(pix.mean(dim=1))
    spread = torch.stack(means).std(dim=0).max().item()
    assert spread < 25, spread


def test_registry_lists_the_builtin_and_real_datasets():
    assert {"shapes", "camvid"} <= set(list_datasets())
    with pytest.raises(PixelwiseError, match="Did you mean 'camvid'"):
        build_dataset("camvd", "x")


def _write_camvid(root, names, value=3):
    for split in ("train", "trainannot"):
        (root / split).mkdir(parents=True)
    lines = []
    for name in names:
        Image.fromarray(np.full((6, 8, 3), 40, np.uint8)).save(root / "train" / name)
        label = np.full((6, 8), value, np.uint8)
        label[0, 0] = 11
        Image.fromarray(label, mode="L").save(root / "trainannot" / name)
        lines.append(f"/SegNet/CamVid/train/{name} /SegNet/CamVid/trainannot/{name}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")


def test_camvid_decodes_the_segnet_layout(tmp_path):
    _write_camvid(tmp_path, ["0001TP_000001.png", "0001TP_000002.png"])
    ds = build_dataset("camvid", tmp_path, split="train")
    assert len(ds) == 2 and ds.num_classes == 11
    x, y = ds[1]
    assert x.shape == (3, 6, 8) and y[0, 0] == 255 and (y.flatten()[1:] == 3).all()


def test_camvid_rejects_foreign_label_values_and_wrong_roots(tmp_path):
    _write_camvid(tmp_path / "a", ["x.png"], value=17)
    with pytest.raises(PixelwiseError, match=r"x\.png.*\[17\]"):
        build_dataset("camvid", tmp_path / "a", split="train")[0]
    (tmp_path / "b").mkdir()
    with pytest.raises(PixelwiseError, match="expected the folder train/"):
        len(build_dataset("camvid", tmp_path / "b", split="train"))


def test_real_camvid_split_sizes(data_dir):
    root = data_dir / "camvid"
    if not root.is_dir():
        pytest.skip("shared CamVid not present")
    assert len(build_dataset("camvid", root, split="train")) == 367
    val = build_dataset("camvid", root, split="val")
    assert len(val) == 101
    x, y = val[0]
    assert x.shape == (3, 360, 480) and set(y.unique().tolist()) <= set(range(11)) | {255}


def test_second_open_reads_the_cached_index_lazily(tmp_path):
    from pathlib import Path

    from pixelwise.data.base import CachedItems

    _write_camvid(tmp_path, ["a.png", "b.png", "c.png"])
    first = build_dataset("camvid", tmp_path, split="train").samples
    again = build_dataset("camvid", tmp_path, split="train").samples
    assert isinstance(again, CachedItems) and again == first
    assert isinstance(again[-1][0], Path) and again[1:] == first[1:]
    (tmp_path / "train.txt").write_text((tmp_path / "train.txt").read_text().splitlines()[0] + "\n")
    assert len(build_dataset("camvid", tmp_path, split="train")) == 1  # a changed list rebuilds


def test_camvid_list_entry_named_like_a_split_stays_in_its_folder(tmp_path):
    # A file called train_001.png listed under val/ is in val/, not in a folder named by the file.
    for split in ("val", "valannot"):
        (tmp_path / split).mkdir()
    Image.fromarray(np.full((6, 8, 3), 40, np.uint8)).save(tmp_path / "val" / "train_001.png")
    Image.fromarray(np.full((6, 8), 2, np.uint8), mode="L").save(
        tmp_path / "valannot" / "train_001.png"
    )
    (tmp_path / "val.txt").write_text(
        "/SegNet/CamVid/val/train_001.png /SegNet/CamVid/valannot/train_001.png\n"
    )
    dataset = build_dataset("camvid", tmp_path, split="val")
    assert dataset.samples[0] == (
        tmp_path / "val" / "train_001.png",
        tmp_path / "valannot" / "train_001.png",
    )
    assert (dataset[0][1] == 2).all()
