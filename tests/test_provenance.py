"""Runs that explain themselves: run.json and the checkpoint say what a reproduction needs, and
predictions.png shows images spread over the validation split with a legend."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from pixelwise.config import config_from_dict
from pixelwise.engine.checkpoint import load_checkpoint
from pixelwise.engine.provenance import git_state
from pixelwise.engine.train import Trainer, spread_indices
from pixelwise.viz import prediction_grid
from tests.test_engine import tiny_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    trainer = Trainer.from_config(
        config_from_dict(tiny_config(tmp_path_factory.mktemp("runs"), iters=1, eval_every=1)),
        progress=False,
    )
    trainer.fit()
    torch.set_num_threads(before)
    return trainer


def test_run_json_and_checkpoint_say_what_a_reproduction_needs(run):
    record = json.loads((run.run_dir / "run.json").read_text())
    info = record["run"]
    assert (info["world_size"], info["batch_per_process"], info["batch_total"]) == (1, 4, 4)
    assert info["seed"] == 0 and info["device"] == "cpu" and info["started_at_step"] == 0
    assert info["versions"]["torch"] == str(torch.__version__)
    assert set(info["versions"]) == {"python", "torch", "torchvision", "pixelwise"}
    assert "commit" in info["git"]
    assert record["config"] == yaml.safe_load((run.run_dir / "config.yaml").read_text())
    meta = load_checkpoint(run.run_dir / "last.pt")["meta"]
    assert meta["run"] == info


def test_a_resume_keeps_the_first_start_in_run_json(run):
    resumed = Trainer.from_config(run.cfg, resume=run.run_dir / "last.pt", progress=False)
    resumed.fit()
    record = json.loads((run.run_dir / "run.json").read_text())
    assert record["run"]["started_at_step"] == 1
    assert [r["started_at_step"] for r in record["earlier"]] == [0]


def test_git_commit_is_recorded_inside_a_repository_and_tolerated_outside(tmp_path):
    import subprocess

    assert git_state(tmp_path) == {"commit": None}
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "f").write_text("x")
    for args in (["add", "f"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m"]):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True)
    state = git_state(tmp_path)
    assert len(state["commit"]) == 40 and state["dirty"] is False


def test_pictures_spread_over_the_split():
    assert spread_indices(100, 4) == [0, 33, 66, 99]
    assert spread_indices(3, 8) == [0, 1, 2]
    assert spread_indices(5, 1) == [0]


def test_prediction_picture_draws_spread_samples(run, monkeypatch):
    asked: list[int] = []
    dataset = run.val_set
    original = type(dataset).__getitem__
    monkeypatch.setattr(
        type(dataset), "__getitem__", lambda self, i: (asked.append(i), original(self, i))[1]
    )
    run.cfg.train.vis_samples = 3
    run.prediction_picture()
    assert asked == [0, 2, 3]  # of the 4 validation images


def test_legend_shows_every_class_colour():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    mask = torch.zeros(8, 8, dtype=torch.long)
    palette = [(10, 20, 30), (200, 100, 50), (0, 255, 0)]
    plain = prediction_grid([image], [mask], [mask], palette, min_height=8)
    with_legend = prediction_grid(
        [image], [mask], [mask], palette, min_height=8, classes=["a", "bb", "c"]
    )
    assert with_legend.shape[1] == plain.shape[1] and with_legend.shape[0] > plain.shape[0]
    strip = with_legend[plain.shape[0] :].reshape(-1, 3)
    for colour in palette[1:]:  # (the first also appears in the grid; these only in the legend)
        assert (strip == colour).all(axis=1).any(), colour
        assert not (plain.reshape(-1, 3) == colour).all(axis=1).any()
