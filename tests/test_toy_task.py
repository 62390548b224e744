"""A new task is one file and a registration: a toy task, written here and nowhere else, goes
through train, eval, predict and export of the command line without any command knowing it.

The toy task scores pixel accuracy (its own metric and report, not the confusion matrix), writes
one JSON file per predicted image (the classes it found), and exports its network as it is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from pixelwise.cli import main
from pixelwise.data.transforms import build_eval_transforms, build_train_transforms
from pixelwise.engine.loader import collate
from pixelwise.models.registry import MODELS, register_model
from pixelwise.tasks import TASKS, register_task
from pixelwise.tasks.base import Inference, PredictSettings, Task
from tests.test_engine import tiny_config


@dataclass(frozen=True)
class AccuracyReport:
    accuracy: float

    @property
    def score(self) -> float:
        return self.accuracy

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy}

    def scalars(self) -> dict[str, float]:
        return {"accuracy": self.accuracy}

    def format(self, classes: Sequence[str]) -> str:
        return f"toy pixel accuracy over {len(classes)} classes: {100 * self.accuracy:.2f}"


class AccuracyMetric:
    def __init__(self) -> None:
        self.right, self.total = 0, 0

    def update(self, outputs: Tensor, targets: Tensor) -> None:
        valid = targets != 255
        self.right += int((outputs.argmax(1) == targets)[valid].sum())
        self.total += int(valid.sum())

    def all_reduce(self) -> None:
        pass

    def compute(self) -> AccuracyReport:
        return AccuracyReport(self.right / max(1, self.total))


class ToyTask(Task):
    score_name = "toy accuracy"

    def train_transforms(self) -> Callable:
        d = self.cfg.data
        return build_train_transforms(crop_size=d.crop_size, mean=d.mean, std=d.std)

    def eval_transforms(self) -> Callable:
        d = self.cfg.data
        return build_eval_transforms(mean=d.mean, std=d.std)

    def collate(self, samples: list[Any]) -> tuple[Any, Any]:
        return collate(samples)

    def loss(self, net: nn.Module, inputs: Any, targets: Any) -> tuple[Tensor, dict[str, Tensor]]:
        logits = net(inputs)
        return F.cross_entropy(logits, targets, ignore_index=255), {"toy": logits.mean()}

    def new_metric(self, device: torch.device) -> AccuracyMetric:
        return AccuracyMetric()

    def predict(self, model: nn.Module, inputs: Any, tta: Any = None) -> Tensor:
        return model(inputs).softmax(1)

    def picture(self, model, dataset, indices, device) -> np.ndarray:
        return np.zeros((8, 8 * len(indices), 3), dtype=np.uint8)

    def prediction_files(self, stem: str) -> list[str]:
        return [f"{stem}_toy.json"]

    def write_prediction(
        self, net: Inference, image: Tensor, paths: Sequence[Path], settings: PredictSettings
    ) -> None:
        x, _ = self.eval_transforms()(image, torch.zeros(image.shape[-2:], dtype=torch.int64))
        with net.precision.autocast():
            found = self.predict(net.model, x[None].to(net.device)).argmax(1).unique().tolist()
        (path,) = paths
        names = [self.classes[c] for c in found]
        path.write_text(json.dumps({"image": settings.image_id, "classes": names}))

    def export_module(self, model: nn.Module) -> nn.Module:
        return model


def toy_net(*, num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))


@pytest.fixture
def toy_registered():
    """The toy network and task in the registries for one test, and out again after it."""
    register_task("toy")(ToyTask)
    register_model(
        "toy_net", paper="a test", year=2026, input_size=(32, 32), num_classes=4, task="toy"
    )(toy_net)
    yield
    MODELS._entries.pop("toy_net")
    TASKS._entries.pop("toy")


@pytest.mark.usefixtures("toy_registered", "one_thread")
def test_a_task_in_one_file_runs_through_train_eval_predict_and_export(tmp_path, capsys):
    cfg = tiny_config(tmp_path / "runs", iters=4, eval_every=2)
    cfg["name"] = "toy"
    cfg["model"] = {"name": "toy_net", "options": {}}
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(cfg))

    assert main(["train", str(config)]) == 0
    out = capsys.readouterr().out
    assert "toy pixel accuracy over" in out and "best val toy accuracy" in out
    run = tmp_path / "runs" / "toy"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4] and "toy" in records[-1]["train"]
    trained = records[-1]["accuracy"]

    # eval scores what training reported for the same weights (last.pt holds step 4).
    assert main(["eval", "--checkpoint", str(run / "last.pt")]) == 0
    (folder,) = run.glob("eval-val*")
    scores = json.loads((folder / "eval.json").read_text())["scores"]
    assert scores["accuracy"] == pytest.approx(trained, abs=1e-12)

    # predict writes the task's one file per image, and refuses to replace it without --overwrite.
    from PIL import Image

    image = tmp_path / "frame.png"
    Image.fromarray(np.full((16, 20, 3), 200, dtype=np.uint8)).save(image)
    argv = [
        "predict",
        "--checkpoint",
        str(run / "last.pt"),
        str(image),
        "--out",
        str(tmp_path / "p"),
    ]
    assert main(argv) == 0
    written = json.loads((tmp_path / "p" / "frame_toy.json").read_text())
    assert written["image"] == 0 and set(written["classes"]) <= set(cfg_classes(run))
    assert main(argv) == 2 and "--overwrite" in capsys.readouterr().err

    # export traces the module the task gives, and the file reproduces PyTorch's logits.
    out_file = tmp_path / "toy.pt"
    argv = [
        "export",
        "--checkpoint",
        str(run / "last.pt"),
        "--out",
        str(out_file),
        "--format",
        "torchscript",
    ]
    assert main(argv) == 0
    assert out_file.exists() and "max |logits - PyTorch's|" in capsys.readouterr().out


def cfg_classes(run: Path) -> list[str]:
    from pixelwise.engine.checkpoint import load_checkpoint

    return list(load_checkpoint(run / "last.pt")["meta"]["classes"])


@pytest.mark.usefixtures("toy_registered")
def test_a_task_that_cannot_export_is_refused_in_one_sentence(tmp_path, capsys, monkeypatch):
    """The base Task refuses export; a task says so by not giving an export module."""
    monkeypatch.delattr(ToyTask, "export_module")
    cfg = tiny_config(tmp_path / "runs", iters=1, eval_every=1)
    cfg["name"], cfg["model"] = "toy", {"name": "toy_net", "options": {}}
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(config)]) == 0
    capsys.readouterr()
    checkpoint = tmp_path / "runs" / "toy" / "last.pt"
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {checkpoint}: toy_net is a network for the 'toy' task")
    assert len(err.splitlines()) == 1 and not out.exists()
