"""A run you can watch: progress lines and bar, train_log.jsonl, TensorBoard's per-class IoU,
`pixelwise plot`, and the small things a new user trips over (name case, `--key=value`, one run
length, the unit of every interval)."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pixelwise.cli import _intervals, main
from pixelwise.config import config_from_dict, load_config
from pixelwise.engine.progress import LogRow, duration, resolve_mode
from pixelwise.engine.rundir import drop_metrics_after
from pixelwise.engine.train import Trainer, per_class_scalars
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model
from pixelwise.models.registry import MODELS
from pixelwise.plot import plot_runs, read_run
from pixelwise.tasks.semantic import SemanticReport
from tests.test_engine import tiny_config


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_file():
    assert resolve_mode(None, _Terminal()) == "bar"
    assert resolve_mode("auto", io.StringIO()) == "lines"
    assert resolve_mode(True) == "bar" and resolve_mode(False) == "quiet"
    assert resolve_mode("lines", _Terminal()) == "lines"
    with pytest.raises(PixelwiseError, match="one of auto, bar, lines, quiet"):
        resolve_mode("loud")


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (42.4, "42s"), (185, "3m05s"), (7620, "2h07m")]
)
def test_durations_read_as_a_person_writes_them(seconds, text):
    assert duration(seconds) == text


def test_a_log_row_is_one_line_and_one_json_row():
    row = LogRow(120, 300, 1.5, {"loss": 0.41234, "loss_aux": 0.1}, 0.01, 12.34, 100.0)
    assert row.line() == (
        "step 120/300 (40%) | loss 0.4123 aux 0.1000 | lr 1.00e-02 | 12.3 img/s | 1m40s left"
    )
    assert row.as_dict() == {
        "step": 120, "epoch": 1.5, "loss": 0.41234, "loss_aux": 0.1, "lr": 0.01,
        "images_per_s": 12.34, "seconds_left": 100.0,
    }  # fmt: skip


def _train(tmp_path, progress, **train):
    config = config_from_dict(tiny_config(tmp_path, **train))
    trainer = Trainer.from_config(config, progress=progress)
    trainer.fit()
    return trainer


def test_a_run_into_a_file_prints_a_line_every_log_step_and_logs_each(tmp_path, capsys):
    trainer = _train(tmp_path, "lines", iters=6, eval_every=3, log_every=2)
    out = capsys.readouterr().out.splitlines()
    steps = [line for line in out if line.startswith("step ") and "/6 (" in line]
    assert [line.split()[1] for line in steps] == ["2/6", "4/6", "6/6"]
    for line in steps:
        assert " | loss " in line and " | lr " in line and " img/s" in line
    assert steps[-1].endswith("| 0s left")
    assert [line for line in out if line.startswith("step 3: val mIoU ")]

    rows = [json.loads(line) for line in (trainer.run_dir / "train_log.jsonl").open()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(math.isfinite(r["loss"]) and r["images_per_s"] > 0 for r in rows)
    lrs = [r["lr"] for r in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] <= 0.05  # poly decays from optim.lr


def test_quiet_shows_no_step_but_still_logs(tmp_path, capsys):
    trainer = _train(tmp_path, "quiet", iters=4, eval_every=4, log_every=1)
    out = capsys.readouterr().out
    assert "step " not in out
    assert len((trainer.run_dir / "train_log.jsonl").read_text().splitlines()) == 4


def test_tensorboard_gets_per_class_iou_without_absent_classes(tmp_path):
    report = SemanticReport(0.9, 0.8, 0.5, 0.7, [0.25, float("nan"), 0.75], [1.0, 0.0, 1.0])
    assert per_class_scalars(report, ["sky", "road", "car"]) == {
        "val_iou/sky": 0.25,
        "val_iou/car": 0.75,
    }
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = _train(tmp_path, "quiet", iters=2, eval_every=2)
    events = EventAccumulator(str(trainer.run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "val_iou/background" in tags and "train/loss" in tags and "val/loss" in tags


def test_the_validation_loss_is_the_mean_negative_log_probability_of_the_labels():
    from pixelwise.tasks.semantic import SemanticMetric

    metric = SemanticMetric(2, torch.device("cpu"))
    probs = torch.tensor([[0.5, 0.25, 0.9], [0.5, 0.75, 0.1]]).reshape(1, 2, 1, 3)
    metric.update(probs, torch.tensor([[[0, 1, 255]]]))
    expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2.0  # the ignored pixel counts for nothing
    assert metric.compute().loss == pytest.approx(expected)
    assert metric.compute().as_dict()["loss"] == pytest.approx(expected)


def test_a_resume_drops_log_rows_past_its_checkpoint(tmp_path):
    for name in ("metrics.jsonl", "train_log.jsonl"):
        rows = [{"step": s, "loss": 1.0} for s in (10, 20, 30)]
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert drop_metrics_after(tmp_path, 20) == 2
    for name in ("metrics.jsonl", "train_log.jsonl"):
        steps = [json.loads(line)["step"] for line in (tmp_path / name).open()]
        assert steps == [10, 20]


def test_plot_draws_two_runs_into_one_png(tmp_path, capsys):
    first = _train(tmp_path / "a", "quiet", iters=4, eval_every=2, log_every=1).run_dir
    second = _train(tmp_path / "b", "quiet", iters=4, eval_every=2, log_every=2).run_dir
    curves = read_run(first)
    assert [r["step"] for r in curves.train] == [1, 2, 3, 4]
    assert [r["step"] for r in curves.val] == [2, 4]
    assert curves.classes[0] == "background"

    out = tmp_path / "curves.png"
    assert main(["plot", str(first), str(second / "best.pt"), "--out", str(out)]) == 0
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[0] > 400 and picture.shape[1] > 600
    assert (picture < 250).any(axis=2).mean() > 0.02  # curves and axes drawn, not a blank page

    before = out.read_bytes()
    capsys.readouterr()
    assert main(["plot", str(first), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before


def test_plot_refuses_a_folder_without_logs(tmp_path):
    with pytest.raises(PixelwiseError, match="has no metrics.jsonl or train_log.jsonl"):
        read_run(tmp_path)
    with pytest.raises(PixelwiseError, match="is not a folder"):
        plot_runs([tmp_path / "missing"], tmp_path / "c.png")
    with pytest.raises(PixelwiseError, match="--per-class-of is 2, but 1 run"):
        plot_runs([tmp_path], tmp_path / "c.png", per_class_of=2)


def test_names_ignore_case_and_a_typo_is_matched_without_case():
    assert "ENet" in MODELS and MODELS.get("Enet") is MODELS.get("enet")
    assert build_model("UNet", 3, base_channels=4).__class__.__name__ == "UNet"
    with pytest.raises(PixelwiseError, match="Did you mean 'fcn8s'"):
        MODELS.get("FCN9s")


def test_an_override_with_dashes_gets_its_spelling(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    assert main(["train", str(config), "--optim.lr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "config overrides take no dashes; write optim.lr=1e-3." in err
    assert not (tmp_path / "tiny").exists()


def _epochs_recipe(tmp_path):
    data = tiny_config(tmp_path)
    data["train"].update(iters=None, epochs=10, eval_every=2)
    path = tmp_path / "epochs.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_setting_one_run_length_clears_the_other(tmp_path):
    recipe = _epochs_recipe(tmp_path)
    train = load_config(recipe, ["train.iters=300"]).train
    assert (train.iters, train.epochs, train.eval_every) == (300, None, 30)
    train = load_config(recipe, ["train.iters=300", "train.eval_every=100"]).train
    assert (train.iters, train.epochs, train.eval_every) == (300, None, 100)
    assert load_config(recipe).train.epochs == 10
    with pytest.raises(PixelwiseError, match="exactly one of"):
        load_config(recipe, ["train.iters=300", "train.epochs=3"])


def test_the_start_says_the_unit_of_every_interval(tmp_path):
    train = load_config(_epochs_recipe(tmp_path)).train
    line = _intervals(train, iters_per_epoch=3)
    assert "length: 10 epochs of 3 iterations (train.epochs)" in line
    assert "validating every 2 epoch(s) (train.eval_every)" in line
    assert "logging every" in line and "iteration(s) (train.log_every)" in line
    line = _intervals(load_config(_epochs_recipe(tmp_path), ["train.iters=50"]).train, 3)
    assert "length: 50 iterations (train.iters); validating every 5 iteration(s)" in line


def test_the_readme_training_example_runs(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    (example,) = [b for b in blocks if "Trainer.from_config" in b]
    assert '"train.iters=200"' in example
    monkeypatch.chdir(Path(__file__).parents[1])
    short = example.replace(
        '"train.iters=200"', f'"train.iters=2", "train.out_dir={tmp_path}", "data.num_workers=0"'
    )
    exec(compile(short, "README.md", "exec"), {})
    assert capsys.readouterr().out.splitlines()[-1].startswith("mIoU")
    assert (tmp_path / "unet_try" / "best.pt").is_file()


def test_an_evaluation_shows_a_bar_of_its_batches_when_asked(tmp_path, capsys):
    from pixelwise.engine.evaluate import run_evaluation
    from pixelwise.tasks.semantic import SemanticTask

    config = config_from_dict(tiny_config(tmp_path))
    task = SemanticTask(config, 6, [str(c) for c in range(6)], [[c, c, c] for c in range(6)])
    model = build_model("unet", 6, padding="same", base_channels=4)
    batches = [(torch.randn(2, 3, 32, 32), torch.randint(0, 6, (2, 32, 32)))] * 3
    report, _ = run_evaluation(model, batches, task, torch.device("cpu"), progress=True)
    assert "evaluating" in capsys.readouterr().err and 0 <= report.mean_iou <= 1
    run_evaluation(model, batches, task, torch.device("cpu"))
    assert "evaluating" not in capsys.readouterr().err
