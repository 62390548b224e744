"""predict on pictures far from the training scale: one warning naming the fix, a legend sized to
the picture, and an overlay that leaves the background as the photo (issue 21)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelwise.cli import main
from pixelwise.config import config_from_dict
from pixelwise.engine.predict_scale import (
    FAR,
    TrainingScale,
    far_images,
    scale_warning,
    training_scale,
)
from pixelwise.viz import (
    LEGEND_ROW,
    OVERLAY_ALPHA,
    legend_row_height,
    overlay,
    untinted_ids,
    with_legend,
)
from tests.test_engine import tiny_config


def _config(**data):
    return config_from_dict({"data": data, "train": {"iters": 1}})


# -- the training scale a checkpoint recorded ------------------------------------------------
def test_training_scale_reads_resize_first_then_the_record_then_the_dataset_then_the_crop():
    both = _config(dataset="camvid", resize=[360, 480], crop_size=[224, 224])
    assert training_scale(both, {}) == TrainingScale(
        (360, 480), "data.resize [360, 480]", resized=True
    )
    recorded = training_scale(_config(dataset="camvid"), {"train_image_size": [720, 960]})
    assert recorded.size == (720, 960) and not recorded.resized and not recorded.lower_bound
    shapes = training_scale(
        _config(dataset="shapes", options={"image_size": [64, 64]}, scale_range=[0.5, 2.0]), {}
    )
    assert shapes.size == (64, 64) and shapes.scale_range == (0.5, 2.0)
    assert "image_size" in shapes.source
    assert training_scale(_config(dataset="shapes"), {}).size == (96, 96)  # the default
    crop = training_scale(_config(dataset="voc", crop_size=[512, 512]), {})
    assert crop.size == (512, 512) and crop.lower_bound
    assert training_scale(_config(dataset="voc"), {}) is None  # nothing tells: no warning


def test_far_means_more_than_four_times_the_short_sides_training_saw():
    scale = TrainingScale((64, 64), "x", scale_range=(0.5, 2.0))  # training saw 32..128
    edge = int(128 * FAR)
    assert far_images({0: (edge, 900), 1: (edge + 1, 900), 2: (8, 8), 3: (7, 50)}, scale, [1]) == {
        1: (edge + 1) / 64,
        3: 7 / 64,
    }
    # --scales moves what the network sees: the warning's own suggestion silences it.
    assert far_images({0: (2160, 3840)}, scale, [0.03]) == {}
    # A crop is a lower bound of the training images: larger is not known to be off.
    crop = TrainingScale((64, 64), "data.crop_size", lower_bound=True)
    assert far_images({0: (2160, 3840), 1: (10, 10)}, crop, [1]) == {1: 10 / 64}


def test_the_warning_says_the_sizes_what_predict_does_and_the_fix():
    scale = TrainingScale((64, 64), "the shapes dataset's image_size")
    images = [Path("photo.jpg"), Path("thumb.png"), Path("fine.png")]
    sizes = {0: (2160, 3840), 1: (12, 12), 2: (80, 100)}
    line = scale_warning(images, sizes, scale)
    assert line is not None and "\n" not in line
    assert line.startswith("2 of 3 images are far from the scale the network was trained at")
    assert "photo.jpg is 2160x3840 pixels" in line and "34x larger" in line
    assert "64x64 training images" in line and "--scales 0.03" in line
    assert "at its own size" in line and "data.resize" in line
    assert scale_warning(images[2:], {0: (80, 100)}, scale) is None
    assert scale_warning(images, sizes, None) is None


def test_a_resized_run_is_off_scale_only_by_the_scales_asked():
    scale = TrainingScale((360, 480), "data.resize [360, 480]", resized=True)
    images, sizes = [Path("a.jpg")], {0: (2160, 3840)}
    assert scale_warning(images, sizes, scale) is None  # resized to 360x480 as in training
    line = scale_warning(images, sizes, scale, [0.1])
    assert line is not None and line.startswith("--scales 0.1 shows the network the image")
    assert "resizes each image to data.resize [360, 480]" in line and "near 1" in line


# -- through the command --------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A one-step shapes run at image_size 32 (scale_range 0.75..1.25: short sides 24..40)."""
    folder = tmp_path_factory.mktemp("run")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(folder / "runs", iters=1, eval_every=1)))
    assert main(["train", str(config), "--quiet"]) == 0
    return folder / "runs" / "tiny" / "best.pt"


def _photo(path: Path, size: tuple[int, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_warns_once_for_all_far_images_and_its_fix_silences_it(
    checkpoint, tmp_path, capsys
):
    big = [_photo(tmp_path / f"big{i}.png", (200, 240), i) for i in range(2)]
    fine = _photo(tmp_path / "fine.png", (30, 40))
    argv = ["predict", "--checkpoint", str(checkpoint), "--device", "cpu", "--out"]
    assert main([*argv, str(tmp_path / "a"), str(big[0]), str(fine), str(big[1])]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "2 of 3 images are far" in warnings[0] and "big0.png is 200x240" in warnings[0]
    assert "32x32 training images" in warnings[0] and "--scales 0.16" in warnings[0]
    assert main([*argv, str(tmp_path / "b"), str(big[0]), "--scales", "0.16"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_predict_overlay_keeps_background_pixels_and_blends_the_others(checkpoint, tmp_path):
    photo = _photo(tmp_path / "photo.png", (30, 40), seed=3)
    out = tmp_path / "out"
    argv = ["predict", "--checkpoint", str(checkpoint), str(photo), "--out", str(out)]
    assert main([*argv, "--device", "cpu"]) == 0
    image = np.asarray(Image.open(photo)).astype(np.float64)
    label = np.asarray(Image.open(out / "photo_label.png"))  # palette PNG: the class ids
    palette = np.asarray(Image.open(out / "photo_label.png").getpalette()[: 6 * 3]).reshape(6, 3)
    picture = np.asarray(Image.open(out / "photo_overlay.png").convert("RGB"))[:30, :40]
    background = label == 0  # shapes' class 0 is "background"
    expected = np.round((1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * palette[label])
    expected[background] = image[background]
    assert np.array_equal(picture, expected.astype(np.uint8))


# -- the overlay, by hand --------------------------------------------------------------------
def test_overlay_leaves_background_and_ignore_as_the_photo_and_blends_classes_at_alpha():
    image = np.array([[[10, 200, 30], [11, 101, 250]], [[0, 0, 0], [255, 128, 7]]], np.uint8)
    mask = np.array([[0, 1], [2, 255]])
    palette = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    out = overlay(image, mask, palette, untinted=[0])
    assert out[0, 0].tolist() == [10, 200, 30]  # background: exactly the photo
    assert out[1, 1].tolist() == [255, 128, 7]  # ignore: exactly the photo
    assert OVERLAY_ALPHA == 0.5
    # By hand at alpha 0.5: round(0.5 * photo + 0.5 * colour), half to even as numpy rounds.
    assert out[0, 1].tolist() == [133, 50, 125]  # (11+255)/2, 101/2 = 50.5 -> 50, 250/2
    assert out[1, 0].tolist() == [0, 0, 128]  # 255/2 = 127.5 -> 128
    # Without untinted classes, background is blended like any class (grids keep that).
    assert overlay(image, mask, palette)[0, 0].tolist() == [5, 100, 15]


def test_untinted_classes_are_found_by_name():
    assert untinted_ids(["background", "aeroplane", "bicycle"]) == [0]  # VOC
    assert untinted_ids(["Sky", "Building", "Pole"]) == []  # CamVid: void is ignore (255)
    assert untinted_ids(["road", "Void", "unlabeled"]) == [1, 2]


# -- the legend, sized to the picture --------------------------------------------------------
CLASSES = ["background", "disc", "square", "triangle", "ring", "bar"]
PALETTE = [(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48)]


def _legend_height(height: int, width: int) -> int:
    picture = np.zeros((height, width, 3), np.uint8)
    drawn = with_legend(picture, CLASSES, PALETTE, untinted=[0], ignore=False)
    assert drawn.shape[1] == max(width, 192)
    strip = drawn[height:]
    assert (strip[:, -1] == 255).all()  # nothing cut at the right edge
    assert (strip != 255).any(axis=2).sum() > 0  # swatches and names drawn
    return strip.shape[0]


def test_the_legend_grows_with_the_picture_and_fits_a_small_one():
    assert legend_row_height(64, 64) == LEGEND_ROW
    assert legend_row_height(2160, 3840) == 72
    small, large, double = (_legend_height(*s) for s in ((64, 64), (960, 1280), (1920, 2560)))
    # 960 and 1920 pixels: one row each, of 32 and 64 pixels under a gap of 8 and 16.
    assert large == 2 * LEGEND_ROW + 8 and double == 2 * large
    # 64 pixels: the smallest rows, wrapped into the 192 pixels the picture is padded to.
    assert (small - 4) % LEGEND_ROW == 0 and small <= 4 * LEGEND_ROW + 4


def test_a_checkpoint_records_the_size_its_network_trained_at(tmp_path):
    from pixelwise.config import config_from_dict
    from pixelwise.engine.checkpoint import load_checkpoint
    from pixelwise.engine.train import Trainer
    from tests.test_engine import tiny_config

    data = tiny_config(tmp_path, iters=1, eval_every=1)
    data["data"]["resize"] = [40, 48]
    trainer = Trainer.from_config(config_from_dict(data), progress=False)
    trainer.fit()
    meta = load_checkpoint(trainer.run_dir / "last.pt")["meta"]
    assert meta["train_image_size"] == [40, 48]
