"""``predict`` over many inputs: a bad one is refused and named, the good ones are all written.

Also the readers behind it: EXIF orientation for a user's photo (never for a dataset's image),
damaged JPEG and PNG data refused instead of segmented, and output folders made only once the
checkpoint loaded, never left behind empty. The crop-size warning at the start of training is
here too, as the other small case of issue 20.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pixelwise.cli import main
from pixelwise.data.base import image_size, read_image, read_photo, stream_damage
from pixelwise.data.transforms import crop_size_warning, first_image_sizes
from pixelwise.errors import PixelwiseError
from tests.test_engine import tiny_config

H, W = 20, 24


def _pixels(height: int = H, width: int = W, seed: int = 0) -> np.ndarray:
    """A smooth picture with some texture: JPEG keeps it close, so damage shows."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 7 % 256, yy * 5 % 256, (xx + yy) * 3 % 256], axis=-1)
    noise = np.random.default_rng(seed).integers(0, 30, base.shape)
    return (base + noise).clip(0, 255).astype(np.uint8)


def _photo(path: Path, seed: int = 0, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(seed=seed)).save(path, **save)
    return path


def _jpeg_bytes(height: int = 64, width: int = 96, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(_pixels(height, width)).save(buffer, "JPEG", quality=90, **save)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _predict(checkpoint: Path, *args: str) -> list[str]:
    return ["predict", "--checkpoint", str(checkpoint), *args]


# -- a batch with bad inputs ---------------------------------------------------------------------
def test_bad_inputs_are_named_and_every_good_image_is_written(tmp_path, checkpoint, capsys):
    a = _photo(tmp_path / "a.png")
    bad = _write(tmp_path / "bad.png", b"not an image at all")
    c = _photo(tmp_path / "c.jpg", seed=1)
    truncated = _write(tmp_path / "cut.jpg", _jpeg_bytes()[:-300])
    missing = tmp_path / "missing.png"
    folder = tmp_path / "holiday"
    folder.mkdir()
    last = _photo(tmp_path / "z.png", seed=2)
    out = tmp_path / "out"
    inputs = [a, bad, c, truncated, missing, folder, last]
    code = main(_predict(checkpoint, *map(str, inputs), "--out", str(out)))
    captured = capsys.readouterr()
    assert code == 1, captured.err  # some written, some refused
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{n}_{k}.png" for n in ("a", "c", "z") for k in ("label", "overlay"))
    assert "wrote 3 of 7 images into" in captured.out
    err = captured.err
    assert "refused 4 of 7 images" in err and "Traceback" not in err
    assert "bad.png could not be decoded" in err
    assert "cut.jpg" in err and "truncated" in err
    assert "missing.png does not exist" in err
    assert "holiday is a folder" in err
    # one line per refusal, in input order
    refusals = [line for line in err.splitlines() if line.startswith("  ")]
    for line, name in zip(refusals, ("bad.png", "cut.jpg", "missing.png", "holiday"), strict=True):
        assert name in line


def test_every_input_refused_is_exit_2_names_each_and_leaves_no_folder(
    tmp_path, checkpoint, capsys
):
    bad = _write(tmp_path / "bad.png", b"hello")
    cut = _write(tmp_path / "cut.jpg", _jpeg_bytes()[:-300])
    out = tmp_path / "new" / "out"
    code = main(_predict(checkpoint, str(bad), str(cut), "--out", str(out)))
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.png" in err and "cut.jpg" in err
    assert err.strip().splitlines()[-1].startswith("error: None of the 2 images could be segmented")
    assert not (tmp_path / "new").exists()  # made for the outputs, removed again when none came


def test_one_refused_input_is_one_sentence(tmp_path, checkpoint, capsys):
    cut = _write(tmp_path / "cut.jpg", _jpeg_bytes()[:-300])
    out = tmp_path / "out"
    assert main(_predict(checkpoint, str(cut), "--out", str(out))) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: Image")
    assert "cut.jpg" in err and not out.exists()


def test_an_error_that_stops_every_image_still_names_the_refused_inputs(
    tmp_path, checkpoint, capsys
):
    bad = _write(tmp_path / "bad.png", b"hello")
    photo = _photo(tmp_path / "p.png")
    out = tmp_path / "out"
    argv = _predict(checkpoint, str(bad), str(photo), "--out", str(out), "--scales", "0.01")
    assert main(argv) == 2  # the scale shrinks every image below a pixel
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "refused 1 of 2 images (then stopped by the error below):"
    assert "bad.png" in lines[1] and lines[-1].startswith("error: --scales 0.01 shrinks")
    assert not out.exists()


def test_a_refused_checkpoint_leaves_no_output_folder(tmp_path, checkpoint, capsys):
    photo = _photo(tmp_path / "p.png")
    not_a_checkpoint = _write(tmp_path / "c.pt", b"not a checkpoint")
    out = tmp_path / "new" / "deeper"
    assert main(_predict(not_a_checkpoint, str(photo), "--out", str(out))) == 2
    assert not (tmp_path / "new").exists()
    argv = ["eval", "--checkpoint", str(not_a_checkpoint), "--out", str(out)]
    assert main(argv) == 2
    assert not (tmp_path / "new").exists()
    ids = tmp_path / "ids" / "deeper"
    argv = ["eval", "--checkpoint", str(not_a_checkpoint), "--save-label-ids", str(ids)]
    assert main(argv) == 2
    assert not (tmp_path / "ids").exists()
    # a checkpoint that loads but is no Cityscapes run: --save-label-ids refused, nothing made
    assert main(["eval", "--checkpoint", str(checkpoint), "--save-label-ids", str(ids)]) == 2
    assert "--save-label-ids writes Cityscapes" in capsys.readouterr().err
    assert not (tmp_path / "ids").exists()


def test_an_unwritable_out_is_still_refused_before_the_checkpoint_loads(tmp_path, capsys):
    a_file = _write(tmp_path / "file", b"mine")
    photo = _photo(tmp_path / "p.png")
    never_read = tmp_path / "absent.pt"  # would be refused too, but --out is checked first
    assert main(_predict(never_read, str(photo), "--out", str(a_file / "o"))) == 2
    assert "cannot be created (not a directory)" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(never_read), "--out", str(a_file)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert a_file.read_bytes() == b"mine"


def test_an_existing_out_folder_is_kept_when_nothing_is_written(tmp_path, checkpoint):
    out = tmp_path / "mine"
    out.mkdir()
    bad = _write(tmp_path / "bad.png", b"hello")
    assert main(_predict(checkpoint, str(bad), "--out", str(out))) == 2
    assert out.is_dir()  # the user's folder, not ours to remove


# -- EXIF orientation ----------------------------------------------------------------------------
def _portrait_jpeg(path: Path) -> Path:
    """Landscape pixels (H x W = 20 x 24, top half dark) with EXIF orientation 6 (rotate 90° CW),
    as a phone stores a portrait photo."""
    pixels = np.full((H, W, 3), 230, np.uint8)
    pixels[: H // 2] = 20
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


def test_predict_labels_a_photo_as_it_is_displayed(tmp_path, checkpoint, capsys):
    photo = _portrait_jpeg(tmp_path / "portrait.jpg")
    out = tmp_path / "out"
    assert main(_predict(checkpoint, str(photo), "--out", str(out))) == 0
    assert Image.open(out / "portrait_label.png").size == (H, W)  # (width, height): upright


def test_read_photo_turns_upright_but_dataset_reads_keep_the_stored_pixels(tmp_path):
    photo = _portrait_jpeg(tmp_path / "portrait.jpg")
    upright = read_photo(photo).image
    stored = read_image(photo)
    assert tuple(stored.shape) == (3, H, W) and tuple(upright.shape) == (3, W, H)
    # orientation 6 shows the stored top (dark) on the right
    assert upright[:, :, -2:].float().mean() < 60 and upright[:, :, :2].float().mean() > 200
    assert image_size(photo) == (H, W)  # the header: stored size


def test_a_decoder_warning_is_one_line_naming_the_photo(tmp_path, checkpoint, capsys):
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera"
    blob = exif.tobytes()
    blob = blob[:14] + b"\xff\x7f" + blob[16:]  # an entry count past the end of the EXIF block
    photo = tmp_path / "odd.jpg"
    Image.fromarray(_pixels()).save(photo, exif=blob)
    out = tmp_path / "out"
    assert main(_predict(checkpoint, str(photo), "--out", str(out))) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {photo}: Corrupt EXIF data") and len(err.splitlines()) == 1
    assert (out / "odd_label.png").is_file()


# -- damaged data --------------------------------------------------------------------------------
ENCODINGS = [
    {},
    {"progressive": True},
    {"restart_marker_blocks": 1},
    {"restart_marker_rows": 1, "subsampling": 2},
    {"progressive": True, "restart_marker_blocks": 2},
    {"subsampling": 0, "restart_marker_blocks": 3},
]


@pytest.mark.parametrize("save", ENCODINGS, ids=lambda s: ",".join(s) or "baseline")
@pytest.mark.parametrize("size", [(1, 1), (17, 33), (64, 96)])
def test_well_formed_files_pass_the_damage_check(tmp_path, save, size):
    for mode in ("RGB", "L"):
        buffer = io.BytesIO()
        pixels = _pixels(*size) if mode == "RGB" else _pixels(*size)[..., 0]
        Image.fromarray(pixels).save(buffer, "JPEG", **save)
        path = _write(tmp_path / f"{mode}.jpg", buffer.getvalue())
        assert stream_damage(path, "JPEG") is None, (mode, save, size)
    png = tmp_path / "p.png"
    Image.fromarray(_pixels(*size)).save(png)
    assert stream_damage(png, "PNG") is None
    assert stream_damage(png, "GIF") is None  # formats without a walker pass


def _with_restarts_cut(path: Path) -> Path:
    """A JPEG with a restart marker every MCU, a stretch of its image data removed."""
    data = _jpeg_bytes(restart_marker_blocks=1)
    scan = data.index(b"\xff\xda")
    middle = (scan + len(data)) // 2
    return _write(path, data[:middle] + data[middle + 60 :])


def _with_a_bad_marker(path: Path) -> Path:
    data = bytearray(_jpeg_bytes())
    scan = data.index(b"\xff\xda")
    middle = (scan + len(data)) // 2
    data[middle : middle + 2] = b"\xff\x35"  # a reserved code: no encoder writes it
    return _write(path, bytes(data))


def _png_with_changed_bytes(path: Path) -> Path:
    buffer = io.BytesIO()
    Image.fromarray(_pixels(64, 96)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    idat = data.index(b"IDAT")
    data[idat + int.from_bytes(data[idat - 4 : idat], "big") - 6] ^= 0x5A  # near the data's end
    return _write(path, bytes(data))


@pytest.mark.parametrize(
    "make, words",
    [
        (_with_restarts_cut, "restart marker"),
        (_with_a_bad_marker, "is not a JPEG marker"),
        (lambda p: _write(p, _jpeg_bytes()[:-2]), "truncated"),
        (_png_with_changed_bytes, "fails its checksum"),
    ],
    ids=["jpeg-data-cut", "jpeg-bad-marker", "jpeg-without-end", "png-changed-bytes"],
)
def test_damaged_files_are_refused_naming_the_file(tmp_path, make, words):
    path = make(tmp_path / "damaged.jpg")
    kind = "PNG" if path.read_bytes().startswith(b"\x89PNG") else "JPEG"
    assert words in stream_damage(path, kind)
    # Refused either way: in the decoder's words where Pillow notices, else in the walker's.
    with pytest.raises(PixelwiseError, match=f"{path.name} (is damaged|could not be decoded)"):
        read_photo(path)


def test_damage_pillow_decodes_silently_is_refused_by_the_walk(tmp_path):
    path = _with_restarts_cut(tmp_path / "cut.jpg")
    with Image.open(path) as img:
        img.load()  # Pillow: no error, no warning
    with pytest.raises(PixelwiseError, match=r"cut\.jpg is damaged: its restart markers"):
        read_photo(path)


def test_a_damaged_photo_is_refused_in_the_summary(tmp_path, checkpoint, capsys):
    good = _photo(tmp_path / "good.jpg", quality=90)
    damaged = _with_restarts_cut(tmp_path / "damaged.jpg")
    out = tmp_path / "out"
    assert main(_predict(checkpoint, str(damaged), str(good), "--out", str(out))) == 1
    err = capsys.readouterr().err
    assert "damaged.jpg is damaged" in err and "restart marker" in err
    assert sorted(p.name for p in out.iterdir()) == ["good_label.png", "good_overlay.png"]


# -- the crop larger than every image ------------------------------------------------------------
def _camvid(root: Path, count: int, height: int = 6, width: int = 8) -> Path:
    for split in ("train", "trainannot"):
        (root / split).mkdir(parents=True)
    lines = []
    for k in range(count):
        name = f"f{k:03d}.png"
        Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(root / "train" / name)
        Image.fromarray(np.full((height, width), 3, np.uint8)).save(root / "trainannot" / name)
        lines.append(f"/SegNet/CamVid/train/{name} /SegNet/CamVid/trainannot/{name}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


def test_crop_size_warning_names_the_crop_and_the_largest_image(tmp_path, monkeypatch):
    from pixelwise.data import build_dataset

    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path / "cache"))
    dataset = build_dataset("camvid", _camvid(tmp_path / "CamVid", 12), split="train")
    assert first_image_sizes(dataset, 8) == [(6, 8)] * 8  # only the first few are measured
    warning = crop_size_warning(dataset, [16, 16])
    assert warning is not None and len(warning.splitlines()) == 1
    assert "data.crop_size [16, 16]" in warning and "at most 6x8" in warning
    assert crop_size_warning(dataset, [6, 8]) is None  # fits exactly: no padding
    assert crop_size_warning(dataset, [10, 12], scale_range=(1.0, 2.0)) is None  # scaled up first
    assert "x1.5" in crop_size_warning(dataset, [10, 13], scale_range=(1.0, 1.5))
    assert crop_size_warning(dataset, [16, 16], resize=[32, 32]) is None
    assert "data.resize [8, 8]" in crop_size_warning(dataset, [16, 16], resize=[8, 8])
    assert crop_size_warning(dataset, None) is None


def test_training_warns_once_at_the_start_when_every_crop_pads(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path / "runs", iters=1, eval_every=1)))
    assert main(["train", str(config), "data.crop_size=[48,48]", "data.scale_range=[1,1]"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "data.crop_size" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: data.crop_size [48, 48]")
    assert "at most 32x32" in lines[0]
    assert main(["train", str(config)]) == 0  # the recipe's 24x24 crop fits: no warning
    assert "data.crop_size" not in capsys.readouterr().err
