"""Mask R-CNN through the shared engine: a tiny COCO-format dataset trained a few steps on the CPU
by the same Trainer, evaluated with COCOeval, predicted, resumed and stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from pixelwise.cli import main
from pixelwise.config import ScheduleConfig, config_from_dict, load_config
from pixelwise.engine.checkpoint import load_checkpoint
from pixelwise.engine.precision import float32
from pixelwise.engine.schedule import lr_factor
from pixelwise.engine.train import Trainer
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model
from pixelwise.tasks import build_task as task_for
from pixelwise.tasks.base import Inference
from pixelwise.tasks.instance import (
    InstanceReport,
    InstanceTask,
    draw_instances,
)
from pixelwise.tasks.semantic import SemanticReport
from tests.test_maskrcnn import LOSSES, TINY
from tests.test_resume import assert_same_tensors

pytestmark = pytest.mark.usefixtures("one_thread")

H, W = 48, 64
# Non-contiguous category ids, as COCO's: labels 1 and 2 must map back to 3 and 7.
CATEGORIES = [{"id": 3, "name": "square"}, {"id": 7, "name": "bar"}]


def _polygon(x0: int, y0: int, x1: int, y1: int) -> list[list[float]]:
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle(y0: int, y1: int, x0: int, x1: int, *, compressed: bool = True) -> dict:
    mask = np.zeros((H, W), dtype=np.uint8, order="F")
    mask[y0:y1, x0:x1] = 1
    if compressed:
        return {"size": [H, W], "counts": mask_utils.encode(mask)["counts"].decode("ascii")}
    runs, value, count = [], 0, 0  # column-major runs, zeros first
    for pixel in mask.flatten(order="F"):
        if pixel != value:
            runs.append(count)
            value, count = pixel, 0
        count += 1
    return {"size": [H, W], "counts": [*runs, count]}


def write_tiny_coco(root: Path) -> Path:
    """train2017 and val2017 of 4 images each: squares (polygons) and bars (compressed RLE), a
    crowd (uncompressed RLE) in image 2, and image 4 without objects."""
    (root / "annotations").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir()
        images, annotations = [], []
        for image_id in (1, 2, 3, 4):
            pixels = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
            objects = []
            if image_id != 4:
                x, y = 4 + 8 * image_id, 6 + 4 * image_id
                pixels[y : y + 14, x : x + 14] = (220, 40, 40)
                objects.append((3, _polygon(x, y, x + 14, y + 14), [x, y, 14, 14], 196.0, 0))
                pixels[30:36, 8:56] = (40, 40, 220)
                objects.append((7, _rle(30, 36, 8, 56), [8, 30, 48, 6], 288.0, 0))
            if image_id == 2:
                pixels[40:46, 40:60] = (220, 40, 40)
                crowd = _rle(40, 46, 40, 60, compressed=False)
                objects.append((3, crowd, [40, 40, 20, 6], 120.0, 1))
            name = f"{image_id:012d}.png"
            Image.fromarray(pixels).save(root / f"{split}2017" / name)
            images.append({"id": image_id, "file_name": name, "height": H, "width": W})
            for category, segmentation, bbox, area, crowd_flag in objects:
                annotations.append(
                    {
                        "id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                        "segmentation": segmentation, "bbox": bbox, "area": area,
                        "iscrowd": crowd_flag,
                    }
                )  # fmt: skip
        document = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(document))
    return root


def instance_config(tmp_path: Path, data_root: Path, **train) -> dict:
    return {
        "name": "maskrcnn_tiny",
        "model": {"name": "maskrcnn_resnet50_fpn", "options": {
            # From scratch: trainable BN (frozen identity BN would leave the ResNet unnormalised).
            **TINY, "min_size": H, "max_size": W, "box_score_thresh": 0.0, "frozen_bn": False}},
        "data": {
            "dataset": "coco_instances",
            "root": str(data_root),
            "options": {"class_set": "file"},
            "batch_size": 2,
            "val_batch_size": 2,
            "num_workers": 0,
        },
        # From scratch the FPN features are in the thousands: a larger lr makes the classifier say
        # background everywhere within 4 steps, leaving predict nothing to write.
        "optim": {"name": "sgd", "lr": 1e-4, "momentum": 0.9, "weight_decay": 1e-4},
        "schedule": {"name": "multistep", "milestones": [3], "unit": "iter", "warmup_iters": 2},
        "train": {"iters": 4, "eval_every": 4, "device": "cpu", "out_dir": str(tmp_path / "runs"),
                  "vis_samples": 2, **train},
    }  # fmt: skip


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return write_tiny_coco(tmp_path_factory.mktemp("coco"))


def test_multistep_schedule_decays_at_each_milestone():
    cfg = ScheduleConfig(name="multistep", milestones=[2, 5], gamma=0.1, unit="epoch")
    factors = [lr_factor(cfg, step, 100, 10, 1.0) for step in (0, 19, 20, 49, 50, 99)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])


def test_the_coco_recipe_is_torchvisions_detection_reference():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "maskrcnn_coco.yaml")
    assert (cfg.model.name, cfg.data.dataset) == ("maskrcnn_resnet50_fpn", "coco_instances")
    assert cfg.model.weights_backbone == "ResNet50_Weights.IMAGENET1K_V1"
    assert cfg.model.options["frozen_bn"] is True and cfg.data.resize is None
    # lr 0.02 for 8 processes x 2 images; momentum 0.9, weight decay 1e-4
    assert (cfg.optim.name, cfg.optim.lr, cfg.data.batch_size) == ("sgd", 0.02, 2)
    assert (cfg.optim.momentum, cfg.optim.weight_decay) == (0.9, 1e-4)
    # 26 epochs, x0.1 at epochs 16 and 22, linear warmup from lr/1000 over 1000 iterations
    s = cfg.schedule
    assert cfg.train.epochs == 26 and (s.name, s.milestones, s.gamma, s.unit) == (
        "multistep", [16, 22], 0.1, "epoch",
    )  # fmt: skip
    assert (s.warmup_iters, s.warmup_factor) == (1000, 0.001)
    task_for(cfg, 81, ["c"] * 81, [(0, 0, 0)] * 81)  # no semantic-only setting in it


def test_the_cityscapes_recipe_is_the_papers():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "maskrcnn_cityscapes.yaml")
    assert (cfg.model.name, cfg.data.dataset) == ("maskrcnn_resnet50_fpn", "cityscapes_instances")
    # shorter side drawn from [800, 1024] in training, 1024 at inference; 2048-wide frames kept
    sizes = cfg.model.options["min_size"]
    assert (sizes[0], sizes[-1], cfg.model.options["max_size"]) == (800, 1024, 2048)
    # 1 image per process (x 8), lr 0.01 -> 0.001 at 18k of 24k iterations
    assert (cfg.optim.lr, cfg.data.batch_size, cfg.train.iters) == (0.01, 1, 24000)
    s = cfg.schedule
    assert (s.name, s.milestones, s.gamma, s.unit) == ("multistep", [18000], 0.1, "iter")
    task_for(cfg, 9, ["c"] * 9, [(0, 0, 0)] * 9)  # no semantic-only setting in it


@pytest.mark.slow  # two Mask R-CNN steps and an evaluation: ~10 s
def test_the_cityscapes_recipe_trains_on_the_official_layout(tmp_path):
    from pixelwise.engine.train import Trainer
    from tests.test_data_instances import instance_ids, write_cityscapes_frame

    root = tmp_path / "cityscapes"
    for split in ("train", "val"):
        for number in range(2):
            base = f"aachen_{number:06d}_000019"
            write_cityscapes_frame(root, split, "aachen", base, instance_ids())
    raw = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs" / "maskrcnn_cityscapes.yaml").read_text()
    )
    raw["model"].update(weights_backbone=None)  # nothing can be downloaded in the tests
    raw["model"]["options"].update(
        {**TINY, "min_size": [32, 48], "max_size": 96, "frozen_bn": False,
         "trainable_backbone_layers": None}
    )  # fmt: skip
    raw["data"].update(root=str(root), num_workers=0)
    raw["optim"]["lr"] = 1e-4
    raw["train"].update(iters=2, eval_every=2, device="cpu", out_dir=str(tmp_path / "runs"))
    trainer = Trainer.from_config(config_from_dict(raw), progress=False)
    assert trainer.classes[1:3] == ["person", "rider"] and trainer.num_classes == 9
    report = trainer.fit()
    assert report is not None and set(report.as_dict()) == {"segm", "bbox", "semantic"}


def test_the_task_comes_from_the_model_and_batches_lists(tmp_path, coco_root):
    config = config_from_dict(instance_config(tmp_path, coco_root))
    task = task_for(config, 3, ["background", "square", "bar"], [(0, 0, 0)] * 3)
    assert isinstance(task, InstanceTask) and task.name == "instance"
    samples = [(torch.zeros(3, 4, 5), {"labels": torch.tensor([1]), "image_id": 1}),
               (torch.zeros(3, 6, 7), {"labels": torch.tensor([], dtype=torch.long), "image_id": 2})]  # fmt: skip
    images, targets = task.collate(samples)
    assert [tuple(i.shape) for i in images] == [(3, 4, 5), (3, 6, 7)]
    assert [t["image_id"] for t in targets] == [1, 2]
    moved, on_device = task.to_device((images, targets), torch.device("cpu"), channels_last=True)
    assert task.batch_size(moved) == 2 and on_device[1]["image_id"] == 2


def test_training_frozen_bn_from_scratch_is_refused(tmp_path, coco_root):
    cfg = instance_config(tmp_path, coco_root)
    del cfg["model"]["options"]["frozen_bn"]
    with pytest.raises(PixelwiseError, match="frozen BatchNorm but no pretrained weights"):
        Trainer.from_config(config_from_dict(cfg), progress=False)
    assert not (tmp_path / "runs").exists()  # refused before the run folder was made


class FixedDetector(torch.nn.Module):
    """Returns one detection (box 4..12, its mask) per image at the size it is given."""

    def forward(self, images):
        found = []
        for image in images:
            masks = torch.zeros(1, 1, *image.shape[-2:])
            masks[0, 0, 4:12, 4:12] = 0.9
            found.append({"boxes": torch.tensor([[4.0, 4.0, 12.0, 12.0]]), "labels": torch.tensor([2]),
                          "scores": torch.tensor([0.8]), "masks": masks})  # fmt: skip
        return found


def test_predict_maps_detections_of_a_resized_run_back_to_the_image(tmp_path, coco_root):
    cfg = instance_config(tmp_path, coco_root)
    cfg["data"]["resize"] = [H // 2, W // 2]
    task = task_for(config_from_dict(cfg), 3, ["background", "square", "bar"], [(0, 0, 0)] * 3)
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    found = task.predict_instances(
        Inference(FixedDetector(), torch.device("cpu"), float32()), image
    )
    assert found["boxes"].tolist() == [[8.0, 8.0, 24.0, 24.0]]
    assert found["masks"].shape == (1, 1, H, W)
    assert found["masks"][0, 0, 10, 10] > 0.5 and found["masks"][0, 0, 30, 30] == 0


def test_report_table_and_instance_drawing():
    semantic = SemanticReport(1.0, 1.0, 1.0, 1.0, [1.0, 1.0], [1.0, 1.0])
    report = InstanceReport(
        bbox=dict.fromkeys(("AP", "AP50", "AP75", "APs", "APm", "APl"), 0.5),
        segm={"AP": 0.25, "AP50": 0.5, "AP75": 0.0, "APs": 0.25, "APm": -1.0, "APl": -1.0},
        semantic=semantic,
    )
    table = report.format(["background", "thing"])
    segm_row = next(line for line in table.splitlines() if line.startswith("segm"))
    assert segm_row.split() == ["segm", "25.00", "50.00", "0.00", "25.00", "-", "-"]
    assert report.score == 0.25 and list(report.scalars())[0] == "segm_AP"
    rgb = np.zeros((16, 16, 3), dtype=np.uint8)
    found = FixedDetector()([torch.zeros(3, 16, 16)])[0]
    drawn = draw_instances(
        rgb, found, ["background", "a", "b"], [(0, 0, 0), (255, 0, 0), (0, 255, 0)]
    )
    assert drawn.shape == rgb.shape and drawn[8, 8, 1] > 0 and drawn[8, 8, 0] == 0  # b's green
    assert not drawn[14, 14].any()  # outside the box and the mask
    big = draw_instances(
        rgb, found, ["background", "a", "b"], [(0, 0, 0), (255, 0, 0), (0, 255, 0)], scale=3
    )
    assert big.shape == (48, 48, 3) and big[25, 25, 1] > 0 and not big[44, 44].any()
    found["scores"] = torch.tensor([0.3])
    assert not draw_instances(rgb, found, ["background", "a", "b"], [(0, 0, 0)] * 3).any()


def test_the_picture_shows_ground_truth_and_predictions_enlarged(tmp_path, coco_root):
    from pixelwise.data import build_dataset

    config = config_from_dict(instance_config(tmp_path, coco_root))
    dataset = build_dataset("coco_instances", coco_root, split="val", class_set="file")
    task = task_for(config, 3, dataset.classes, dataset.palette)
    picture = task.picture(FixedDetector(), dataset, [0, 3], torch.device("cpu"))
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    assert picture.shape[0] > 2 * 144 and picture.shape[1] >= 2 * 3 * W  # 2 rows, x3, 2 panels


def test_detector_weights_in_the_options_are_not_fetched_again_by_the_checkpoint(
    tmp_path, coco_root
):
    torch.manual_seed(0)
    source = build_model("maskrcnn_resnet50_fpn", 3, **TINY, frozen_bn=False)
    torch.save(source.state_dict(), tmp_path / "detector.pth")
    cfg = instance_config(tmp_path, coco_root)
    cfg["model"]["options"]["weights"] = str(tmp_path / "detector.pth")
    trainer = Trainer.from_config(config_from_dict(cfg), progress=False)
    head = trainer.model.roi_heads.box_predictor.cls_score.weight
    assert torch.equal(head, source.roi_heads.box_predictor.cls_score.weight)
    assert "weights" not in trainer.meta()["model_options"]
    assert trainer.meta()["category_ids"] == [0, 3, 7]


def test_semantic_only_settings_are_refused_naming_them(tmp_path, coco_root):
    cfg = instance_config(tmp_path, coco_root)
    cfg["data"]["crop_size"] = [32, 32]
    cfg["loss"] = {"class_weights": "median_frequency"}
    with pytest.raises(PixelwiseError, match=r"data\.crop_size, loss\.class_weights apply to"):
        task_for(config_from_dict(cfg), 3, ["a", "b", "c"], [(0, 0, 0)] * 3)


# A 44M-parameter detector: ~3-4 s per step at 48x64 on a shared CPU, and every checkpoint is
# 180 MB, so the runs below are marked slow (they still run in CI).
@pytest.mark.slow
def test_train_eval_predict_end_to_end_with_cocoeval(tmp_path, coco_root, capsys):
    trainer = Trainer.from_config(
        config_from_dict(instance_config(tmp_path, coco_root)), progress=False
    )
    assert trainer.task.name == "instance" and trainer.num_classes == 3
    started = time.perf_counter()
    report = trainer.fit()
    seconds = time.perf_counter() - started
    assert isinstance(report, InstanceReport)
    for iou_type in ("bbox", "segm"):
        values = getattr(report, iou_type)
        assert set(values) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert all(-1.0 <= v <= 1.0 for v in values.values())
    assert report.score == report.segm["AP"]
    run = trainer.run_dir
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 4 and set(record) >= {"segm", "bbox", "semantic", "train"}
    assert set(record["train"]) == {"loss"} | LOSSES  # each term logged, averaged
    assert len(record["semantic"]["iou"]) == 3
    assert (run / "predictions.png").is_file() and (run / "best.pt").is_file()
    print(f"4 steps + eval: {seconds:.1f} s")

    # pixelwise eval: the table, eval.json's bbox and segm entries, the painted confusion matrix.
    assert (
        main(["eval", "--checkpoint", str(run / "best.pt"), "--json", str(tmp_path / "e.json")])
        == 0
    )
    out = capsys.readouterr().out
    assert "segm" in out and "bbox" in out and "painted class map" in out and "mIoU" in out
    scores = json.loads((tmp_path / "e.json").read_text())
    assert set(scores) == {"segm", "bbox", "semantic"}
    assert scores["segm"] == pytest.approx(report.segm) and scores["bbox"] == pytest.approx(
        report.bbox
    )
    folder = next(run.glob("eval-val*"))
    assert {"eval.json", "confusion.png", "per_class.csv"} <= {p.name for p in folder.iterdir()}
    assert any(p.name.startswith("overlay-") for p in folder.iterdir())

    # pixelwise predict: overlay, painted labels and COCO results with the dataset's category ids.
    image = coco_root / "val2017" / "000000000001.png"
    out_dir = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(run / "best.pt"), str(image), "--out", str(out_dir)]
    assert main([*args, "--score-threshold", "0"]) == 0
    results = json.loads((out_dir / "000000000001_detections.json").read_text())
    assert Image.open(out_dir / "000000000001_overlay.png").size[0] >= W
    assert Image.open(out_dir / "000000000001_label.png").size == (W, H)
    assert results and {r["category_id"] for r in results} <= {3, 7}
    assert all(r["image_id"] == 0 and isinstance(r["segmentation"]["counts"], str) for r in results)
    assert main(args) == 2  # outputs exist: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--flip"]) == 2
    assert "Test-time augmentation" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_mid_epoch_is_bit_identical(tmp_path, coco_root):
    cfg = instance_config(tmp_path, coco_root, iters=3, eval_every=10)  # 2 steps per epoch
    straight = Trainer.from_config(config_from_dict(cfg), run_dir=tmp_path / "a", progress=False)
    straight.fit()
    half = Trainer.from_config(config_from_dict(cfg), run_dir=tmp_path / "b", progress=False)
    half.fit(max_steps=1)  # mid-epoch
    resumed = Trainer.from_config(
        config_from_dict(cfg), resume=tmp_path / "b" / "last.pt", progress=False
    )
    assert resumed.step == 1
    resumed.fit()
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["step"] == b["step"] == 3
    count = assert_same_tensors(a["model"], b["model"]) + assert_same_tensors(
        a["optimizer"], b["optimizer"]
    )
    assert count == len(a["model"]) + len(a["optimizer"]["state"])


@pytest.mark.slow
def test_sigterm_mid_run_then_resume_is_bit_identical(tmp_path, coco_root):
    cfg = instance_config(tmp_path, coco_root, iters=5, eval_every=2, log_every=1)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))
    straight = tmp_path / "straight.yaml"
    straight.write_text(yaml.safe_dump({**cfg, "name": "straight"}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen(
        [sys.executable, "-m", "pixelwise.cli", "train", str(config)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    metrics = tmp_path / "runs" / "maskrcnn_tiny" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not metrics.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGTERM)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    step = load_checkpoint(tmp_path / "runs" / "maskrcnn_tiny" / "last.pt")["step"]
    assert 2 <= step < 5, step
    command = re.search(r"continue with: pixelwise train (\S+) --resume (\S+)", out)
    assert command, out
    assert main(["train", str(straight)]) == 0
    assert main(["train", command.group(1), "--resume", command.group(2)]) == 0
    a = load_checkpoint(tmp_path / "runs" / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "runs" / "maskrcnn_tiny" / "last.pt")
    assert a["step"] == b["step"] == 5
    assert assert_same_tensors(a["model"], b["model"]) == len(a["model"])
    assert assert_same_tensors(a["optimizer"], b["optimizer"]) == len(a["optimizer"]["state"])
