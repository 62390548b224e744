"""The command line, called in-process: errors, listings, and train -> eval -> predict."""

from __future__ import annotations

import subprocess
import sys

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
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--flip", "--json", str(tmp_path / "s.json")]) == 0
    assert "mIoU" in capsys.readouterr().out and (tmp_path / "s.json").is_file()
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 26, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(run / "best.pt"), str(image), "--out", str(tmp_path / "pred")]) == 0
    label = Image.open(tmp_path / "pred" / "photo_label.png")
    assert label.mode == "P" and label.size == (26, 30)
    assert np.asarray(label).max() < 6
    assert Image.open(tmp_path / "pred" / "photo_overlay.png").size == (26, 30)
    # Resume continues the same run folder to a longer schedule.
    assert main(["train", str(config), "--resume", str(run / "last.pt"), "train.iters=3"]) == 0


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
