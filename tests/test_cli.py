"""The command line, called in-process: errors, listings, and train -> eval -> predict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from pixelwise.cli import main
from tests.test_engine import tiny_config


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Config file") and "missing.yaml" in err and "Traceback" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {iters: 1}\noptim: {lr: 0.1, moment: 0.9}\n")
    assert main(["train", str(bad)]) == 2
    assert "unknown key 'optim.moment'" in capsys.readouterr().err


def test_a_real_subprocess_shows_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pixelwise.cli", "eval", "--checkpoint", str(tmp_path / "none.pt")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_a_listing_piped_into_a_reader_that_leaves_ends_quietly():
    # `pixelwise models --zoo | head -1`: the pipe closes after the first line.
    result = subprocess.run(
        f"{sys.executable} -m pixelwise.cli models --zoo | head -1",
        shell=True, capture_output=True, text=True,
    )  # fmt: skip
    assert result.stdout.startswith("zoo name")
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


def test_models_and_datasets_listings(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "fcn8s" in out and "31,030,658" in out  # U-Net at the paper's 1 channel, 2 classes
    assert main(["datasets"]) == 0
    assert "shapes" in capsys.readouterr().out


def test_train_eval_predict(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path / "runs", iters=2, eval_every=2)))
    assert main(["train", str(config), "optim.lr=0.01"]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "background" in out
    run = tmp_path / "runs" / "tiny"
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(run / "best.pt"),
                "--flip",
                "--json",
                str(tmp_path / "s.json"),
            ]
        )
        == 0
    )
    assert "mIoU" in capsys.readouterr().out and (tmp_path / "s.json").is_file()
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 26, 3), dtype=np.uint8)).save(
        image
    )
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(run / "best.pt"),
                str(image),
                "--out",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    label = Image.open(tmp_path / "pred" / "photo_label.png")
    assert label.mode == "P" and label.size == (26, 30)
    assert np.asarray(label).max() < 6
    width, height = Image.open(tmp_path / "pred" / "photo_overlay.png").size
    assert width >= 26 and height > 30  # the 26x30 overlay with its legend below
    # Resume continues the same run folder to a longer schedule.
    assert (
        main(
            [
                "train",
                str(config),
                "--resume",
                str(run / "last.pt"),
                "optim.lr=0.01",
                "train.iters=3",
            ]
        )
        == 0
    )


def test_datasets_check_exit_codes(tmp_path, capsys):
    from tests.test_shapes_and_camvid import _write_camvid

    _write_camvid(tmp_path / "clean", ["a.png", "b.png"])
    assert main(["datasets", "check", "camvid", str(tmp_path / "clean")]) == 0
    out = capsys.readouterr().out
    assert "2 samples" in out and "Road" in out
    _write_camvid(tmp_path / "dirty", ["a.png"], value=17)
    assert main(["datasets", "check", "camvid", str(tmp_path / "dirty")]) == 1
    (tmp_path / "empty").mkdir()
    assert main(["datasets", "check", "camvid", str(tmp_path / "empty")]) == 2
    assert "expected the folder train/" in capsys.readouterr().err


def test_errors_from_loader_workers_stay_one_sentence(tmp_path, capsys):
    from tests.test_shapes_and_camvid import _write_camvid

    _write_camvid(tmp_path / "cv", ["a.png", "b.png"], value=17)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "unet", "options": {"padding": "same", "base_channels": 2}},
        "data": {"dataset": "camvid", "root": str(tmp_path / "cv"), "val_split": "train",
                 "batch_size": 2, "num_workers": 1},
        "train": {"iters": 1, "out_dir": str(tmp_path / "runs")},
    }))  # fmt: skip
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Label") and "[17]" in err and len(err.splitlines()) == 1


def _photo(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
        path
    )
    return path


def test_predict_gives_inputs_of_the_same_name_distinct_outputs(tmp_path, checkpoint, capsys):
    a, b = _photo(tmp_path / "a" / "x.png", 0), _photo(tmp_path / "b" / "x.png", 1)
    jpg = tmp_path / "a" / "x.jpg"
    Image.open(a).save(jpg, quality=95)
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                str(a),
                str(b),
                str(jpg),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        f"{n}_{kind}.png"
        for n in ("a_x_png", "b_x_png", "a_x_jpg")
        for kind in ("label", "overlay")
    )


def test_output_names():
    from pixelwise.cli import output_names

    assert output_names([Path("p/a/x.png"), Path("p/b/x.png"), Path("y.png")]) == [
        "a_x",
        "b_x",
        "y",
    ]
    assert output_names([Path("x.png"), Path("x.jpg")]) == ["x_png", "x_jpg"]
    assert output_names([Path("x.png"), Path("x.png")]) == ["x", "x-2"]


def test_predict_never_overwrites_without_being_asked(tmp_path, checkpoint, capsys):
    image = _photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo_label.png").write_bytes(b"the user's own file")
    argv = ["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "photo_label.png already exist" in err and "--overwrite" in err
    assert (out / "photo_label.png").read_bytes() == b"the user's own file"
    assert not (out / "photo_overlay.png").exists()
    assert main([*argv, "--overwrite"]) == 0
    assert Image.open(out / "photo_label.png").size == (24, 20)


def test_output_folders_are_created_or_refused_before_any_work(tmp_path, checkpoint, capsys):
    json_path = tmp_path / "new" / "deeper" / "scores.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--json", str(json_path)]) == 0
    assert "mean_iou" in json_path.read_text()
    capsys.readouterr()
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    image = _photo(tmp_path / "photo.png")
    cases = [
        (
            ["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(a_file / "sub")],
            "cannot be created",
        ),
        (
            ["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(a_file)],
            "is a file, not a folder",
        ),
        (
            ["eval", "--checkpoint", str(checkpoint), "--json", str(a_file / "s.json")],
            "is a file, not a folder",
        ),
        (
            ["eval", "--checkpoint", str(checkpoint), "--confusion", str(tmp_path)],
            "is a folder; give a file name",
        ),
    ]
    for argv, expected in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert expected in err and len(err.strip().splitlines()) == 1
    assert a_file.read_text() == "mine"


def test_train_out_dir_under_a_file_is_one_sentence(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(a_file / "runs", iters=1)))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "train.out_dir" in err and "cannot be created" in err and "Traceback" not in err


def test_predict_scales_a_16_bit_png(tmp_path, checkpoint, capsys):
    deep = tmp_path / "deep.png"
    Image.fromarray((np.arange(20 * 24).reshape(20, 24) * 130).astype(np.uint16)).save(deep)
    eight = tmp_path / "eight.png"
    scaled = (np.asarray(Image.open(deep)).astype(np.int64) * 255 + 32767) // 65535
    Image.fromarray(scaled.astype(np.uint8)).save(eight)
    out = tmp_path / "out"
    assert (
        main(["predict", "--checkpoint", str(checkpoint), str(deep), str(eight), "--out", str(out)])
        == 0
    )
    overlay = np.asarray(Image.open(out / "deep_overlay.png")).astype(int)
    close = np.asarray(Image.open(out / "eight_overlay.png")).astype(int)
    assert np.array_equal(overlay, close)  # the same picture, not one clipped to white


def test_bad_device_and_missing_image_are_one_sentence(tmp_path, checkpoint, capsys):
    image = _photo(tmp_path / "photo.png")
    out = str(tmp_path / "out")
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(checkpoint),
                str(image),
                "--out",
                out,
                "--device",
                "gpu",
            ]
        )
        == 2
    )
    assert "Device 'gpu' is not one torch knows" in capsys.readouterr().err
    assert (
        main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "no.png"), "--out", out])
        == 2
    )
    assert "no.png does not exist" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path), "--out", out]) == 2
    assert "is a folder; give image files" in capsys.readouterr().err
