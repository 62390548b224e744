"""``folder``: the user's own images and masks, every layout and mask encoding, value by value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.data import build_dataset
from pixelwise.data.folder import Folder
from pixelwise.errors import PixelwiseError

H, W = 8, 12
COLOURS = [(0, 0, 0), (255, 0, 0), (0, 255, 0)]


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))


def index_mask(seed: int) -> np.ndarray:
    array = np.random.default_rng(seed).integers(0, 3, size=(H, W)).astype(np.uint8)
    array[0, 0] = 255
    return array


def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((H, W, 3), 77, np.uint8)).save(path)


def write_mask(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_root(
    tmp_path: Path, stems: list[str], classes: object = ("background", "cat", "dog")
) -> Path:
    root = tmp_path / "mydata"
    for k, stem in enumerate(stems):
        write_image(root / "images" / f"{stem}.jpg")
        write_mask(root / "masks" / f"{stem}.png", index_mask(k))
    root.mkdir(exist_ok=True)
    (root / "classes.yaml").write_text(json.dumps({"classes": list(classes)}))  # JSON is YAML
    return root


def test_index_masks_all_split(tmp_path: Path) -> None:
    stems = ["b", "a", "c"]
    root = make_root(tmp_path, stems)
    dataset = build_dataset("folder", root, split="all")
    assert dataset.classes == ("background", "cat", "dog") and dataset.num_classes == 3
    assert len(dataset.palette) == 3
    assert [s[0].name for s in dataset.samples] == ["a.jpg", "b.jpg", "c.jpg"]
    for (image, mask), stem in zip(dataset, sorted(stems), strict=True):
        assert image.dtype == torch.uint8 and image.shape == (3, H, W)
        assert mask.dtype == torch.int64
        np.testing.assert_array_equal(mask.numpy(), index_mask(stems.index(stem)))


def test_deterministic_train_val_split(tmp_path: Path) -> None:
    stems = [f"img{k:02d}" for k in range(10)]
    root = make_root(tmp_path, stems)
    val = [s[0].stem for s in Folder(root, split="val").samples]
    train = [s[0].stem for s in Folder(root, split="train").samples]
    assert val == ["img09"] and len(train) == 9
    val = [s[0].stem for s in Folder(root, split="val", val_fraction=0.3).samples]
    assert val == ["img02", "img05", "img09"]  # spread over the sorted stems
    assert len(Folder(root, split="train", val_fraction=0.3)) == 7
    with pytest.raises(PixelwiseError, match="test"):
        len(Folder(root, split="test"))


def test_split_folders(tmp_path: Path) -> None:
    root = make_root(tmp_path, [])
    write_image(root / "images/train/x.png")
    write_mask(root / "masks/train/x.png", index_mask(0))
    write_image(root / "images/val/y.bmp")
    write_mask(root / "masks/val/y.tif", index_mask(1))
    assert [s[0].name for s in Folder(root, split="train").samples] == ["x.png"]
    val = Folder(root, split="val")
    assert val.samples[0][1].name == "y.tif"
    np.testing.assert_array_equal(val[0][1].numpy(), index_mask(1))
    assert len(Folder(root, split="all")) == 2
    with pytest.raises(PixelwiseError, match="images/test/"):
        len(Folder(root, split="test"))


def test_split_lists(tmp_path: Path) -> None:
    root = make_root(tmp_path, ["a", "b", "c"])
    (root / "splits").mkdir()
    (root / "splits/train.txt").write_text("c\na.jpg\n")
    (root / "splits/val.txt").write_text("b\n")
    assert [s[0].stem for s in Folder(root, split="train").samples] == ["c", "a"]
    assert [s[0].stem for s in Folder(root, split="val").samples] == ["b"]
    (root / "splits/val.txt").write_text("zz\n")
    with pytest.raises(PixelwiseError, match="'zz'"):
        len(Folder(root, split="val"))


def test_palette_mask_reads_indices(tmp_path: Path) -> None:
    root = make_root(tmp_path, ["a"])
    img = Image.fromarray(index_mask(5), mode="P")
    img.putpalette([200, 10, 10] * 256)  # a palette that would decode to one colour if read as RGB
    img.save(root / "masks/a.png")
    np.testing.assert_array_equal(Folder(root, split="all")[0][1].numpy(), index_mask(5))


def test_ignore_value(tmp_path: Path) -> None:
    root = make_root(tmp_path, ["a"])
    (root / "classes.yaml").write_text("classes: [background, cat, dog]\nignore: 9\n")
    raw = index_mask(0)
    raw[1, 1] = 9
    write_mask(root / "masks/a.png", raw)
    expected = raw.astype(np.int64)
    expected[1, 1] = 255
    np.testing.assert_array_equal(Folder(root, split="all")[0][1].numpy(), expected)
    (root / "classes.yaml").write_text("classes: [background, cat, dog]\nignore: 1\n")
    with pytest.raises(PixelwiseError, match="'cat'"):
        Folder(root, split="all")


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_masks_through_the_palette(tmp_path: Path, mode: str) -> None:
    root = make_root(tmp_path, ["a"])
    classes = [
        {"name": n, "color": list(c)} for n, c in zip(("bg", "cat", "dog"), COLOURS, strict=True)
    ]
    (root / "classes.yaml").unlink()
    (root / "classes.json").write_text(json.dumps({"classes": classes, "ignore": [255, 255, 255]}))
    ids = index_mask(3)
    table = np.array([*COLOURS, *[(255, 255, 255)] * 253], np.uint8)
    rgb = table[ids]
    if mode == "RGBA":
        rgb = np.concatenate([rgb, np.full((H, W, 1), 255, np.uint8)], axis=-1)
    write_mask(root / "masks/a.png", rgb)
    dataset = Folder(root, split="all")
    assert dataset.palette == tuple(COLOURS)
    np.testing.assert_array_equal(dataset[0][1].numpy(), ids)
    rgb[2, 2, :3] = (9, 9, 9)
    write_mask(root / "masks/a.png", rgb)
    with pytest.raises(PixelwiseError, match=r"a.png.*\(9, 9, 9\)"):
        dataset[0]


def test_colour_mask_without_colours_raises(tmp_path: Path) -> None:
    root = make_root(tmp_path, ["a"])
    write_mask(root / "masks/a.png", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(PixelwiseError, match="color"):
        Folder(root, split="all")[0]


def test_missing_mask_names_image_and_expected_path(tmp_path: Path) -> None:
    root = make_root(tmp_path, ["a", "b"])
    (root / "masks/b.png").unlink()
    with pytest.raises(PixelwiseError, match=r"images/b.jpg.*masks/b.png"):
        len(Folder(root, split="all"))


def test_value_out_of_range_names_the_file(tmp_path: Path) -> None:
    root = make_root(tmp_path, ["a"])
    raw = index_mask(0)
    raw[3, 3] = 7
    write_mask(root / "masks/a.png", raw)
    with pytest.raises(PixelwiseError, match=r"a.png.*\[7\]"):
        Folder(root, split="all")[0]


def test_size_mismatch_names_the_file(tmp_path: Path) -> None:
    root = make_root(tmp_path, ["a"])
    write_mask(root / "masks/a.png", np.zeros((H, W + 1), np.uint8))
    with pytest.raises(PixelwiseError, match="a.png"):
        Folder(root, split="all")[0]


def test_not_a_folder_root_and_missing_classes(tmp_path: Path) -> None:
    with pytest.raises(PixelwiseError, match="images/"):
        Folder(tmp_path, split="all")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(PixelwiseError, match="classes.yaml"):
        Folder(tmp_path, split="all")


def test_second_open_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_root(tmp_path, ["a", "b"])
    first = Folder(root, split="all").samples

    def no_scan(self: Folder, layout: str) -> None:
        raise AssertionError("the index was scanned again")

    monkeypatch.setattr(Folder, "_scan", no_scan)
    assert Folder(root, split="all").samples == first


def test_jpeg_masks_are_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path, ["a"])
    (root / "masks/a.png").unlink()
    Image.fromarray(index_mask(0) * 100).save(root / "masks/a.jpg", quality=30)
    with pytest.raises(PixelwiseError, match=r"a\.jpg is a JPEG.*save masks as PNG"):
        len(Folder(root, split="all"))


def test_a_jpeg_saved_under_a_png_name_is_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path, ["a"])
    Image.fromarray(index_mask(0)).save(root / "masks/a.png", format="JPEG", quality=30)
    with pytest.raises(PixelwiseError, match=r"a\.png is JPEG-compressed"):
        Folder(root, split="all")[0]


def test_palette_masks_are_read_by_colour_when_classes_give_colours(tmp_path: Path) -> None:
    root = make_root(tmp_path, ["a"])
    classes = [
        {"name": n, "color": list(c)} for n, c in zip(("bg", "cat", "dog"), COLOURS, strict=True)
    ]
    (root / "classes.yaml").write_text(json.dumps({"classes": classes}))
    ids = index_mask(4)
    ids[0, 0] = 0
    # The PNG's palette orders the colours differently from classes.yaml: index 0 is dog's
    # colour, 1 is bg's, 2 is cat's. Read by index, every pixel would be another class.
    stored = np.array([1, 2, 0], np.uint8)[ids]
    img = Image.fromarray(stored, mode="P")
    img.putpalette([*COLOURS[2], *COLOURS[0], *COLOURS[1]] + [0] * 759)
    img.save(root / "masks/a.png")
    np.testing.assert_array_equal(Folder(root, split="all")[0][1].numpy(), ids)


def test_a_broken_classes_yaml_is_one_sentence(tmp_path: Path) -> None:
    root = make_root(tmp_path, ["a"])
    (root / "classes.yaml").write_text("classes:\n  - {name: cat,\n")
    with pytest.raises(PixelwiseError, match="fix its syntax") as error:
        Folder(root, split="all")
    assert "\n" not in str(error.value)


def test_check_counts_a_missing_mask_and_training_still_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixelwise.cli import main

    root = make_root(tmp_path, ["a", "b", "c"])
    (root / "masks/b.png").unlink()
    for _ in range(2):  # the second check reads the index it cached
        assert main(["datasets", "check", "folder", str(root), "--split", "all"]) == 1
        out = capsys.readouterr().out
        assert "3 samples checked" in out and "missing labels: 1" in out
        assert str(root / "masks/b.png") in out
    # The lenient index the check cached must not stand in for the strict one training builds.
    with pytest.raises(PixelwiseError, match=r"images/b.jpg has no mask"):
        len(build_dataset("folder", root, split="all"))
