"""CamVid 32-class release: a miniature copy in the official layout, colours decoded value by value."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.data import build_dataset
from pixelwise.data.camvid32 import (
    CAMVID32_CLASSES,
    CAMVID32_LABEL_COLORS,
    CAMVID32_PALETTE,
    LISTS_DIR,
    CamVid32,
)
from pixelwise.errors import PixelwiseError

H, W = 8, 12
TEST_FRAMES = ["0001TP_008550", "Seq05VD_f00000", "Seq05VD_f00030"]
# label_colors.txt exactly as the release writes it: "R G B<tab>Name".
LABEL_COLORS_TXT = "".join(f"{r} {g} {b}\t{name}\n" for (r, g, b), name in CAMVID32_LABEL_COLORS)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))


def colour_label(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An RGB label holding every one of the 32 colours, and the ids it must decode to."""
    order = [c for c, _ in CAMVID32_LABEL_COLORS]
    ids = [CAMVID32_CLASSES.index(n) if n != "Void" else 255 for _, n in CAMVID32_LABEL_COLORS]
    rng = np.random.default_rng(seed)
    picks = rng.permutation(np.concatenate([np.arange(32), rng.integers(0, 32, H * W - 32)]))
    rgb = np.asarray(order, dtype=np.uint8)[picks].reshape(H, W, 3)
    return rgb, np.asarray(ids, dtype=np.int64)[picks].reshape(H, W)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def frames(name: str) -> list[str]:
    return (LISTS_DIR / f"camvid_{name}.txt").read_text().split()


def write_frames(root: Path, names: list[str], label: bytes) -> None:
    for frame in names:
        (root / "701_StillsRaw_full" / f"{frame}.png").write_bytes(IMAGE)
        (root / "LabeledApproved_full" / f"{frame}_L.png").write_bytes(label)


IMAGE = png_bytes(np.full((H, W, 3), 40, np.uint8))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """Three test frames with distinct labels, and the release's label_colors.txt."""
    root = tmp_path / "CamVid"
    (root / "701_StillsRaw_full").mkdir(parents=True)
    (root / "LabeledApproved_full").mkdir()
    for k, frame in enumerate(TEST_FRAMES):
        write_frames(root, [frame], png_bytes(colour_label(k + 1)[0]))
    (root / "label_colors.txt").write_text(LABEL_COLORS_TXT)
    return root


def test_class_table() -> None:
    assert len(CAMVID32_LABEL_COLORS) == 32
    assert len(CAMVID32_CLASSES) == len(CAMVID32_PALETTE) == 31 and "Void" not in CAMVID32_CLASSES
    assert CAMVID32_CLASSES[0] == "Animal" and CAMVID32_PALETTE[0] == (64, 128, 64)
    assert CAMVID32_CLASSES[-1] == "Wall" and CAMVID32_PALETTE[-1] == (64, 192, 0)


def test_shipped_lists_are_the_standard_split() -> None:
    train, val = frames("train"), frames("val")
    assert len(train) == len(set(train)) == 367 and len(val) == len(set(val)) == 101
    assert not set(train) & set(val)
    assert {f.split("_")[0] for f in train} == {"0001TP", "0006R0", "0016E5"}
    assert {f.split("_")[0] for f in val} == {"0016E5"}


def test_builtin_splits(root: Path) -> None:
    write_frames(root, frames("train") + frames("val"), png_bytes(colour_label(0)[0]))
    sizes = {s: len(CamVid32(root, split=s)) for s in ("train", "val", "test", "trainval", "all")}
    assert sizes == {"train": 367, "val": 101, "test": 3, "trainval": 468, "all": 471}
    assert [s[0].stem for s in CamVid32(root, split="test").samples] == TEST_FRAMES


def test_colours_decode_value_by_value(root: Path) -> None:
    dataset = build_dataset("camvid32", root, split="test")
    for k, (image, mask) in enumerate(dataset):
        assert image.dtype == torch.uint8 and image.shape == (3, H, W)
        assert mask.dtype == torch.int64 and mask.shape == (H, W)
        np.testing.assert_array_equal(mask.numpy(), colour_label(k + 1)[1])
        assert (mask == 255).any()  # Void


def test_unknown_colour_names_file_and_colour(root: Path) -> None:
    rgb, _ = colour_label(1)
    rgb[2, 3] = (1, 2, 3)
    (root / "LabeledApproved_full" / "0001TP_008550_L.png").write_bytes(png_bytes(rgb))
    with pytest.raises(PixelwiseError, match=r"0001TP_008550_L.png.*\(1, 2, 3\)"):
        CamVid32(root, split="test")[0]


def test_label_colors_file_must_match(root: Path) -> None:
    (root / "label_colors.txt").write_text(
        LABEL_COLORS_TXT.replace("64 128 64\tAnimal", "1 1 1\tAnimal")
    )
    with pytest.raises(PixelwiseError, match="label_colors.txt"):
        len(CamVid32(root, split="test"))


def test_split_file_segnet_lines_and_bare_names(root: Path, tmp_path: Path) -> None:
    listing = tmp_path / "mine.txt"
    listing.write_text(
        "/SegNet/CamVid/test/Seq05VD_f00030.png /SegNet/CamVid/testannot/Seq05VD_f00030.png\n"
        "0001TP_008550\n"
    )
    dataset = CamVid32(root, split="test", split_file=listing)
    assert [s[1].name for s in dataset.samples] == ["Seq05VD_f00030_L.png", "0001TP_008550_L.png"]
    np.testing.assert_array_equal(dataset[0][1].numpy(), colour_label(3)[1])
    listing.write_text("0001TP_999999\n")
    with pytest.raises(PixelwiseError, match="0001TP_999999"):
        len(CamVid32(root, split="val", split_file=listing))


def test_missing_label_names_the_expected_file(root: Path) -> None:
    (root / "LabeledApproved_full" / "Seq05VD_f00000_L.png").unlink()
    with pytest.raises(
        PixelwiseError, match="Seq05VD_f00000.png.*LabeledApproved_full/Seq05VD_f00000_L.png"
    ):
        len(CamVid32(root, split="all"))


def test_not_a_camvid_root_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(PixelwiseError, match="701_StillsRaw_full"):
        len(CamVid32(tmp_path, split="all"))


def test_size_mismatch_names_the_file(root: Path) -> None:
    image = root / "701_StillsRaw_full" / "0001TP_008550.png"
    image.write_bytes(png_bytes(np.zeros((H, W - 1, 3), np.uint8)))
    with pytest.raises(PixelwiseError, match="0001TP_008550_L.png"):
        CamVid32(root, split="test")[0]


def test_second_open_uses_the_cache(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = CamVid32(root, split="test").samples

    def no_scan(self: CamVid32) -> None:
        raise AssertionError("the index was scanned again")

    monkeypatch.setattr(CamVid32, "_scan", no_scan)
    assert CamVid32(root, split="test").samples == first


def test_a_greyscale_label_is_refused(root: Path) -> None:
    grey = np.full((H, W), 128, np.uint8)  # as RGB this would be (128, 128, 128), Sky
    Image.fromarray(grey, mode="L").save(root / "LabeledApproved_full" / f"{TEST_FRAMES[0]}_L.png")
    dataset = build_dataset("camvid32", root, split="test")
    with pytest.raises(PixelwiseError, match=r"is a L \(greyscale\) image.*'camvid'"):
        dataset[0]


def test_a_palette_label_is_read_by_colour(root: Path) -> None:
    rgb, ids = colour_label(9)
    img = Image.fromarray(rgb).quantize(colors=32, method=Image.Quantize.FASTOCTREE, dither=0)
    assert np.array_equal(np.asarray(img.convert("RGB")), rgb)  # exact: 32 colours fit
    img.save(root / "LabeledApproved_full" / f"{TEST_FRAMES[0]}_L.png")
    _, mask = build_dataset("camvid32", root, split="test")[0]
    np.testing.assert_array_equal(mask.numpy(), ids)


def test_check_counts_a_missing_label_and_training_still_refuses(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixelwise.cli import main

    label = root / "LabeledApproved_full" / "Seq05VD_f00000_L.png"
    label.unlink()
    assert main(["datasets", "check", "camvid32", str(root), "--split", "all"]) == 1
    out = capsys.readouterr().out
    assert "3 samples checked" in out and "missing labels: 1" in out and str(label) in out
    # The lenient index the check cached must not stand in for the strict one training builds.
    with pytest.raises(PixelwiseError, match="Seq05VD_f00000.png has no label"):
        len(build_dataset("camvid32", root, split="all"))


def test_check_counts_a_listed_frame_without_image(
    root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pixelwise.cli import main

    listed = tmp_path / "mine.txt"
    listed.write_text("0001TP_008550\n0001TP_999999\n")
    args = ["datasets", "check", "camvid32", str(root), "--split", "test", f"split_file={listed}"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "missing images: 1" in out and "0001TP_999999.png" in out
    with pytest.raises(PixelwiseError, match="Frame 0001TP_999999 of split 'test' has no image"):
        len(CamVid32(root, split="test", split_file=listed))
