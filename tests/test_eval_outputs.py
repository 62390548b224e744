"""What `pixelwise eval` writes (a folder per evaluation, Cityscapes labelIds) and the legend on
every picture of class colours."""

from __future__ import annotations

import csv
import fnmatch
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.cli import main
from pixelwise.config import config_from_dict
from pixelwise.data import build_dataset
from pixelwise.data.base import read_image
from pixelwise.engine.eval_outputs import LabelIdsWriter, label_ids_name
from pixelwise.engine.model_io import load_model
from pixelwise.engine.train import Trainer
from pixelwise.viz import spread_indices, untinted_ids
from tests.test_data_cityscapes import TRAIN_ID_OF
from tests.test_engine import tiny_config

# The oracle, from cityscapesscripts' labels.py: trainId -> labelId; ignore (255) -> 0 (unlabeled).
LABEL_ID_OF = {train: label for label, train in TRAIN_ID_OF.items()} | {255: 0}


def _saved_run(tmp_path: Path, **data) -> Path:
    """best.pt of an untrained tiny U-Net run (random weights: eval outputs need no training)."""
    cfg = tiny_config(tmp_path / "runs")
    cfg["data"].update(data)
    trainer = Trainer.from_config(config_from_dict(cfg), progress=False)
    return trainer.save("best.pt")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return _saved_run(tmp_path_factory.mktemp("eval_outputs"))


def _eval(checkpoint: Path, *extra: str) -> int:
    return main(["eval", "--checkpoint", str(checkpoint), "--device", "cpu", *extra])


@pytest.mark.slow  # two evaluations (and matplotlib's import): ~12 s on 2 cores
def test_eval_writes_a_new_folder_each_time_beside_the_checkpoint(checkpoint, capsys):
    run = checkpoint.parent
    assert _eval(checkpoint) == 0
    first = run / "eval-val"
    files = {p.name for p in first.iterdir()}
    assert {"eval.json", "per_class.csv", "confusion.png"} <= files
    overlays = sorted(n for n in files if n.startswith("overlay-"))
    assert overlays == ["overlay-0.png", "overlay-1.png", "overlay-2.png", "overlay-3.png"]
    record = json.loads((first / "eval.json").read_text())
    assert record["split"] == "val" and record["images"] == 4 and record["dataset"] == "shapes"
    assert record["checkpoint"] == str(checkpoint.resolve())
    assert record["tta"] == {"scales": [1.0], "flip": False, "crop": None, "stride": None}
    assert len(record["scores"]["iou"]) == len(record["classes"])
    # The printed mIoU is the recorded one.
    assert f"mIoU {100 * record['scores']['mean_iou']:.2f}" in capsys.readouterr().out

    rows = list(csv.DictReader((first / "per_class.csv").open()))
    assert [r["class"] for r in rows] == record["classes"]
    for row, iou, acc in zip(
        rows, record["scores"]["iou"], record["scores"]["class_accuracy"], strict=True
    ):
        assert (float(row["iou"]) if row["iou"] else None) == iou
        assert (float(row["accuracy"]) if row["accuracy"] else None) == acc
    shares = [float(r["gt_pixel_share"]) for r in rows]
    assert math.isclose(sum(shares), 1.0) and sum(int(r["gt_pixels"]) for r in rows) > 0

    # An overlay: image | ground truth | prediction (32x32 each, enlarged) over a legend.
    picture = np.asarray(Image.open(first / "overlay-0.png").convert("RGB"))
    assert picture.shape[0] > 3 * 32 + 16 and picture.shape[1] >= 3 * 3 * 32
    pixels = picture.reshape(-1, 3)
    for colour in load_model(checkpoint, "cpu").palette:
        assert (pixels == colour).all(axis=1).any(), colour

    before = (first / "eval.json").read_bytes()
    assert _eval(checkpoint, "--flip") == 0
    second = run / "eval-val-2"
    assert json.loads((second / "eval.json").read_text())["tta"]["flip"] is True
    assert (first / "eval.json").read_bytes() == before


def test_unwritable_out_is_one_sentence_and_exit_2(checkpoint, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    for out, expected in (
        (a_file, "is a file, not a folder"),
        (a_file / "sub", "cannot be created"),
    ):
        assert _eval(checkpoint, "--out", str(out)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --out") and expected in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert a_file.read_text() == "mine"


def test_save_label_ids_is_refused_for_other_datasets(checkpoint, tmp_path, capsys):
    assert _eval(checkpoint, "--save-label-ids", str(tmp_path / "ids")) == 2
    err = capsys.readouterr().err
    assert "--save-label-ids writes Cityscapes labelIds files" in err and "shapes" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "ids").exists()


def test_spread_covers_the_split():
    assert spread_indices(10, 4) == [0, 3, 6, 9]
    assert spread_indices(2, 4) == [0, 1] and spread_indices(0, 4) == []
    assert spread_indices(5, 1) == [0]


# -- Cityscapes --------------------------------------------------------------------------------
H, W = 32, 48
FRAMES = {
    "train": [("aachen", "aachen_000000_000019")],
    "val": [("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000001_000019")],
}


def _cityscapes(root: Path) -> Path:
    """A miniature Cityscapes in the official layout: 32x48 frames, every label id present."""
    rng = np.random.default_rng(0)
    for split, frames in FRAMES.items():
        for city, base in frames:
            image = root / "leftImg8bit" / split / city / f"{base}_leftImg8bit.png"
            label = root / "gtFine" / split / city / f"{base}_gtFine_labelIds.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            label.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(image)
            Image.fromarray(rng.integers(0, 34, (H, W), dtype=np.uint8)).save(label)
    return root


def test_label_ids_file_holds_the_official_id_of_each_train_id(tmp_path):
    root = _cityscapes(tmp_path / "cityscapes")
    dataset = build_dataset("cityscapes", root, split="val")
    writer = LabelIdsWriter(None, dataset, tmp_path)  # type: ignore[arg-type]
    train_ids = torch.arange(H * W).reshape(H, W) % 19
    # Scores whose argmax is each pixel's train id.
    probs = torch.nn.functional.one_hot(train_ids, 19).permute(2, 0, 1)[None].float()
    path = writer.write(1, probs)
    assert path.name == "lindau_000001_000019_leftImg8bit_labelIds.png"
    written = np.asarray(Image.open(path))
    assert written.dtype == np.uint8 and written.shape == (H, W)
    assert np.array_equal(written, np.vectorize(lambda t: LABEL_ID_OF[int(t)])(train_ids.numpy()))
    assert set(np.unique(written)) == {LABEL_ID_OF[t] for t in range(19)}


@pytest.mark.slow  # builds a run, evaluates, predicts: ~4-12 s on 2 shared cores
def test_eval_saves_full_size_label_ids_that_the_official_script_finds(tmp_path, capsys):
    root = _cityscapes(tmp_path / "cityscapes")
    # A run resized to half size: the labelIds files must still be at the labels' 32x48.
    checkpoint = _saved_run(
        tmp_path, dataset="cityscapes", root=str(root), options={}, val_options={},
        resize=[16, 24], crop_size=None, scale_range=[1.0, 1.0], batch_size=1, val_batch_size=1,
    )  # fmt: skip
    ids = tmp_path / "ids"
    assert _eval(checkpoint, "--save-label-ids", str(ids)) == 0
    assert "wrote 2 labelIds files" in capsys.readouterr().out
    loaded = load_model(checkpoint, "cpu")
    task = loaded.task
    for city, base in FRAMES["val"]:
        # cityscapesscripts looks for exactly one <city>_<seq>_<frame>*.png per ground truth.
        matches = fnmatch.filter((p.name for p in ids.iterdir()), f"{base}*.png")
        assert matches == [f"{base}_leftImg8bit_labelIds.png"]
        written = np.asarray(Image.open(ids / matches[0]))
        assert written.shape == (H, W)
        image = read_image(root / "leftImg8bit" / "val" / city / f"{base}_leftImg8bit.png")
        labels, _ = task.predict_image(loaded.inference, image)
        expected = np.vectorize(lambda t: LABEL_ID_OF[int(t)])(labels.numpy())
        assert np.array_equal(written, expected)
    assert label_ids_name(Path("a/frankfurt_000000_000294_leftImg8bit.png")) == (
        "frankfurt_000000_000294_leftImg8bit_labelIds.png"
    )


# -- legends -----------------------------------------------------------------------------------
def test_predict_overlay_carries_a_legend_of_the_class_colours(checkpoint, tmp_path):
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((20, 24, 3), 255, dtype=np.uint8)).save(image)
    out = tmp_path / "pred"
    argv = [
        "predict",
        "--checkpoint",
        str(checkpoint),
        str(image),
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    overlay = np.asarray(Image.open(out / "photo_overlay.png").convert("RGB"))
    assert overlay.shape[0] > 20 and overlay.shape[1] >= 24
    below = overlay[20:].reshape(-1, 3)  # the legend, under the 20-pixel-high image
    loaded = load_model(checkpoint, "cpu")
    untinted = untinted_ids(loaded.classes)  # left as the photo: their swatch is empty
    for i, colour in enumerate(loaded.palette):
        assert i in untinted or (below == colour).all(axis=1).any(), colour
