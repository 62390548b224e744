"""Nothing silently wrong, every bad input answered in one sentence: the readers' shared contracts.

The fixtures are the fuzz test's tiny datasets in each real on-disk format; each test breaks one
thing a user can get wrong and checks the sentence that comes back.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import build_dataset
from pixelwise.data.base import apply_lut, read_image
from pixelwise.data.cityscapes import _LABEL_LUT
from pixelwise.errors import PixelwiseError
from tests.test_fuzz_readers import FIXTURES, H, W, read_everything


def _build(reader: str, tmp_path: Path) -> tuple[Path, str, dict]:
    root = tmp_path / reader
    name, options, _ = FIXTURES[reader](root)
    return root, name, options


def _dataset(name: str, root: Path, options: dict):
    options = dict(options)
    sub = options.pop("_root", None)
    if options.get("sbd_root") == "@sbd":
        options["sbd_root"] = root / "sbd"
    split = options.pop("split", "train")
    return build_dataset(name, root / sub if sub else root, split=split, **options)


def _one_sentence(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message.rstrip().endswith((".", ")")), message
    return message


# -- empty splits ---------------------------------------------------------------------------------
#: How to empty each reader's split, and the file or folder the error must name.
EMPTIED = {
    "voc": ("ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/train.txt"),
    "sbd": ("sbd/train.txt", "sbd/train.txt"),
    "camvid": ("train.txt", "train.txt"),
    "sunrgbd": ("sunrgbd_training_images.txt", "sunrgbd_training_images.txt"),
    "nyudv2_fcn": ("train.txt", "train.txt"),
    "camvid32": ("701_StillsRaw_full/", "701_StillsRaw_full"),
    "cityscapes": ("leftImg8bit/train/aachen/", "leftImg8bit/train"),
    "ade20k": ("images/training/", "images/training"),
    "coco_stuff": ("images/train2017/", "images/train2017"),
    "folder": ("images/", "images"),
}


@pytest.mark.parametrize("reader", list(EMPTIED))
def test_an_empty_split_is_an_error_naming_its_list_or_folder(reader, tmp_path) -> None:
    root, name, options = _build(reader, tmp_path)
    emptied, named = EMPTIED[reader]
    target = root / emptied
    if emptied.endswith("/"):  # empty the folder (its files, not the folder itself)
        for path in target.iterdir():
            path.unlink()
        if reader == "folder":
            for path in (root / "masks").iterdir():
                path.unlink()
    else:
        target.write_text("")
    with pytest.raises(PixelwiseError, match="has no samples") as error:
        len(_dataset(name, root, options))
    assert str(root / named) in _one_sentence(error)


def test_an_empty_nyudv2_split_names_splits_mat(tmp_path) -> None:
    root, name, options = _build("nyudv2", tmp_path)
    scipy.io.savemat(root / "splits.mat", {"trainNdxs": np.zeros((0, 1)), "testNdxs": [[2]]})
    with pytest.raises(PixelwiseError, match="trainNdxs") as error:
        len(_dataset(name, root, options))
    assert str(root / "splits.mat") in _one_sentence(error)


def test_a_split_that_filtering_empties_says_how_to_keep_it(tmp_path) -> None:
    root, _, _ = _build("folder", tmp_path)
    (root / "images/b.jpg").unlink()
    (root / "masks/b.png").unlink()  # one image: the computed val split gets none
    with pytest.raises(PixelwiseError, match="val_fraction"):
        len(build_dataset("folder", root, split="val"))


def test_datasets_check_exits_2_on_an_empty_split(tmp_path, capsys) -> None:
    root, _, _ = _build("camvid", tmp_path)
    (root / "train.txt").write_text("\n")
    assert main(["datasets", "check", "camvid", str(root), "--split", "train"]) == 2
    assert "has no samples" in capsys.readouterr().err


# -- images that claim too many pixels, or are not what their name says ------------------------
def _png_claiming(path: Path, width: int, height: int) -> None:
    """A valid small PNG whose IHDR is rewritten to claim ``width`` x ``height``."""
    Image.fromarray(np.zeros((H, W), np.uint8), mode="L").save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (9_500, 9_000)])
def test_a_header_claiming_a_huge_image_is_refused(tmp_path, width, height) -> None:
    path = tmp_path / "bomb.png"
    _png_claiming(path, width, height)
    with pytest.raises(PixelwiseError, match="80 megapixels") as error:
        read_image(path)
    assert str(path) in _one_sentence(error)


def test_a_huge_label_header_is_refused_by_the_dataset(tmp_path) -> None:
    root, name, options = _build("camvid", tmp_path)
    _png_claiming(root / "trainannot/0001TP_000001.png", 100_000, 100_000)
    with pytest.raises(PixelwiseError, match="megapixels"):
        _dataset(name, root, options)[0]


def test_a_binary_list_file_is_one_sentence(tmp_path) -> None:
    root, name, options = _build("voc", tmp_path)
    (root / "ImageSets/Segmentation/train.txt").write_bytes(b"\xff\xfe\x00a\n\x80b\n")
    with pytest.raises(PixelwiseError, match="not a readable text file") as error:
        len(_dataset(name, root, options))
    _one_sentence(error)


# -- lookup tables are checked against the values they index ----------------------------------
def test_a_16_bit_label_given_to_an_8_bit_table_is_named(tmp_path) -> None:
    root, name, options = _build("camvid", tmp_path)
    label = np.full((H, W), 3, np.uint16)
    label[2, 2] = 300
    Image.fromarray(label).save(root / "trainannot/0001TP_000001.png")
    with pytest.raises(PixelwiseError, match=r"\[300\]") as error:
        _dataset(name, root, options)[0]
    assert "0001TP_000001.png" in _one_sentence(error)


def test_a_negative_value_does_not_wrap_to_the_end_of_the_table(tmp_path) -> None:
    # Cityscapes maps 255 (the license plate written into 8 bits) to ignore: -1 must not reach it.
    with pytest.raises(PixelwiseError, match=r"\[-1\]"):
        apply_lut(np.array([[7, -1]], np.int32), _LABEL_LUT, tmp_path / "x.png")


def test_a_3d_label_is_not_passed_on_as_a_mask(tmp_path) -> None:
    root, name, options = _build("sbd", tmp_path)
    segmentation = np.zeros((2, H, W), np.uint8)  # right HxW, one dimension too many
    scipy.io.savemat(root / "sbd/cls/a.mat", {"GTcls": {"Segmentation": segmentation}})
    with pytest.raises(PixelwiseError, match=r"\(2, 8, 12\)"):
        _dataset(name, root, options)[0]


# -- .mat files: empty, HDF5 where v5 is expected, damaged, missing fields ---------------------
@pytest.mark.parametrize("kind", ["empty", "hdf5", "garbage"])
def test_a_broken_sbd_class_file_is_one_sentence(tmp_path, kind) -> None:
    root, name, options = _build("sbd", tmp_path)
    path = root / "sbd/cls/a.mat"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "hdf5":
        path.unlink()
        with h5py.File(path, "w", userblock_size=512) as f:  # as MATLAB's -v7.3 writes it
            f["GTcls/Segmentation"] = np.zeros((W, H), np.uint8)
        text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 ."
        with open(path, "r+b") as f:  # the 128-byte header: text, subsystem offset, version 2
            f.write(text.ljust(116) + bytes(8) + b"\x00\x02IM")
    else:
        path.write_bytes(b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 2)
    with pytest.raises(PixelwiseError) as error:
        _dataset(name, root, options)[0]
    message = _one_sentence(error)
    assert str(path) in message and "benchmark_RELEASE/dataset/cls" in message
    if kind == "hdf5":
        assert "v7.3" in message


@pytest.mark.parametrize(
    ("reader", "file"),
    [
        ("nyudv2_fcn", "segmentation/img_5001.mat"),
        ("nyudv2", "classMapping40.mat"),
        ("nyudv2", "splits.mat"),
    ],
)
def test_an_empty_nyudv2_mat_file_is_one_sentence(tmp_path, reader, file) -> None:
    root, name, options = _build(reader, tmp_path)
    (root / file).write_bytes(b"")  # scipy: MatReadError "Mat file appears to be empty"
    with pytest.raises(PixelwiseError, match="could not be read") as error:
        _dataset(name, root, options)[0]
    assert str(root / file) in _one_sentence(error)


def test_splits_mat_without_train_indices_names_the_field(tmp_path) -> None:
    root, name, options = _build("nyudv2", tmp_path)
    scipy.io.savemat(root / "splits.mat", {"testNdxs": [[2]]})
    with pytest.raises(PixelwiseError, match="no 'trainNdxs'.*testNdxs") as error:
        len(_dataset(name, root, options))
    assert str(root / "splits.mat") in _one_sentence(error)


def test_a_damaged_nyudv2_hdf5_frame_is_one_sentence(tmp_path) -> None:
    root, name, options = _build("nyudv2", tmp_path)
    path = root / "nyu_depth_v2_labeled.mat"
    with h5py.File(path, "r+") as f:
        del f["labels"]
        f["labels"] = np.zeros((2, W), np.uint16)  # one dimension short
    with pytest.raises(PixelwiseError, match="labels") as error:
        len(_dataset(name, root, options))
    assert str(path) in _one_sentence(error)


def test_every_fixture_reads_cleanly(tmp_path) -> None:
    """The negative tests above mean something only if the untouched fixtures decode."""
    for reader in FIXTURES:
        root, name, options = _build(reader, tmp_path)
        read_everything(name, root, options)
