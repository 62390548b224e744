"""Interruption and resume: stopped anywhere (mid-epoch, dropout, loader workers), a run resumes
bit-identically, and resume takes its config from the checkpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pixelwise.cli import main
from pixelwise.config import config_from_dict
from pixelwise.engine.checkpoint import load_checkpoint
from pixelwise.engine.train import Trainer
from pixelwise.errors import PixelwiseError
from tests.test_engine import tiny_config


@pytest.fixture(autouse=True)
def _one_thread():
    """One thread: on a shared two-core machine two threads per process can be 40 times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def dropout_config(root: Path, **train) -> dict:
    cfg = tiny_config(root, **train)
    cfg["model"]["options"]["dropout"] = 0.5
    return cfg


def assert_same_tensors(a: dict, b: dict, where: str = "") -> int:
    """Every tensor in two nested checkpoints is ``torch.equal``; returns how many were compared."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
        return 1
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        return sum(assert_same_tensors(a[k], b[k], f"{where}.{k}") for k in a)
    if isinstance(a, list | tuple):
        assert len(a) == len(b), where
        return sum(assert_same_tensors(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    return 0


def test_resume_mid_epoch_with_dropout_is_bit_identical(tmp_path):
    cfg = dropout_config(tmp_path, iters=6, eval_every=6)  # 3 steps per epoch
    straight = Trainer(config_from_dict(cfg), run_dir=tmp_path / "a", progress=False)
    straight.fit()
    half = Trainer(config_from_dict(cfg), run_dir=tmp_path / "b", progress=False)
    half.fit(max_steps=2)  # mid-epoch
    resumed = Trainer(config_from_dict(cfg), resume=tmp_path / "b" / "last.pt", progress=False)
    assert resumed.step == 2
    resumed.fit()
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    count = assert_same_tensors(a["model"], b["model"]) + assert_same_tensors(a["optimizer"], b["optimizer"])
    assert count == len(a["model"]) + len(a["optimizer"]["state"])


def _train(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # as _one_thread
    return subprocess.Popen(
        [sys.executable, "-m", "pixelwise.cli", "train", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw,
    )  # fmt: skip


@pytest.mark.slow
def test_sigterm_to_the_process_group_mid_epoch_then_resume_is_bit_identical(tmp_path):
    cfg = dropout_config(tmp_path / "runs", iters=24, eval_every=4)
    cfg["data"].update(num_workers=2, batch_size=2)
    cfg["data"]["options"]["num_samples"] = 24  # 12 steps per epoch
    cfg["data"]["val_options"] = {"num_samples": 2}
    straight_cfg = tmp_path / "straight.yaml"
    straight_cfg.write_text(yaml.safe_dump({**cfg, "name": "straight"}))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(cfg))

    run = _train([str(config)], start_new_session=True)
    metrics = tmp_path / "runs" / "tiny" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not metrics.exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGTERM)  # what a cluster scheduler does: the workers get it too
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "worker" not in err
    step = load_checkpoint(tmp_path / "runs" / "tiny" / "last.pt")["step"]
    assert 4 <= step < 24 and step % 12 != 0, step  # stopped inside an epoch
    command = re.search(r"continue with: pixelwise train (\S+) --resume (\S+)", out)
    assert command, out
    # The uninterrupted run and the resume run in this process, with one thread as the child had.
    assert main(["train", str(straight_cfg)]) == 0
    assert main(["train", command.group(1), "--resume", command.group(2)]) == 0
    a = load_checkpoint(tmp_path / "runs" / "straight" / "last.pt")
    b = load_checkpoint(tmp_path / "runs" / "tiny" / "last.pt")
    assert a["step"] == b["step"] == 24
    count = assert_same_tensors(a["model"], b["model"]) + assert_same_tensors(a["optimizer"], b["optimizer"])
    assert count == len(a["model"]) + len(a["optimizer"]["state"])
