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

pytestmark = pytest.mark.usefixtures("one_thread")


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
        return sum(
            assert_same_tensors(x, y, f"{where}[{i}]")
            for i, (x, y) in enumerate(zip(a, b, strict=True))
        )
    return 0


def test_resume_mid_epoch_with_dropout_is_bit_identical(tmp_path):
    cfg = dropout_config(tmp_path, iters=6, eval_every=6)  # 3 steps per epoch
    straight = Trainer.from_config(config_from_dict(cfg), run_dir=tmp_path / "a", progress=False)
    straight.fit()
    half = Trainer.from_config(config_from_dict(cfg), run_dir=tmp_path / "b", progress=False)
    half.fit(max_steps=2)  # mid-epoch
    resumed = Trainer.from_config(
        config_from_dict(cfg), resume=tmp_path / "b" / "last.pt", progress=False
    )
    assert resumed.step == 2
    resumed.fit()
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    count = assert_same_tensors(a["model"], b["model"]) + assert_same_tensors(
        a["optimizer"], b["optimizer"]
    )
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
    count = assert_same_tensors(a["model"], b["model"]) + assert_same_tensors(
        a["optimizer"], b["optimizer"]
    )
    assert count == len(a["model"]) + len(a["optimizer"]["state"])


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A run of 4 iterations stopped after 2, with its config.yaml."""
    root = tmp_path_factory.mktemp("stopped")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    trainer = Trainer.from_config(
        config_from_dict(tiny_config(root, iters=4, eval_every=4)), progress=False
    )
    trainer.fit(max_steps=2)
    torch.set_num_threads(before)
    return trainer.run_dir


def test_resume_refuses_another_config_naming_the_keys(tmp_path, capsys, stopped_run):
    other = tiny_config(tmp_path, iters=4, eval_every=4)
    other["optim"]["lr"] = 0.5
    other["data"]["batch_size"] = 2
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    assert main(["train", str(path), "--resume", str(stopped_run / "last.pt")]) == 2
    err = capsys.readouterr().err
    assert "data.batch_size 4 -> 2" in err and "optim.lr 0.05 -> 0.5" in err
    assert err.count("\n") == 1
    # An override that would be recorded but not applied (the optimizer keeps its lr) is refused too.
    config = stopped_run / "config.yaml"
    assert (
        main(["train", str(config), "--resume", str(stopped_run / "last.pt"), "optim.lr=0.1"]) == 2
    )
    assert "optim.lr 0.05 -> 0.1" in capsys.readouterr().err
    assert load_checkpoint(stopped_run / "last.pt")["step"] == 2  # nothing was changed


def test_resume_applies_a_longer_run_and_records_it(tmp_path, stopped_run):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(stopped_run, run)
    resumed = Trainer.from_config(
        config_from_dict(tiny_config(stopped_run.parent, iters=8, eval_every=4)),
        resume=run / "last.pt",
        progress=False,
    )
    # The poly schedule is the new one from the resumed step on: the lr is the one for 2 of 8.
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * (1 - 2 / 8) ** 0.9)
    resumed.fit(max_steps=3)
    payload = load_checkpoint(run / "last.pt")
    assert payload["step"] == 3 and payload["config"]["train"]["iters"] == 8
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["iters"] == 8


def test_resume_with_a_wrong_model_is_refused_before_anything_is_written(stopped_run):
    cfg = tiny_config(stopped_run.parent, iters=4)
    cfg["model"] = {"name": "enet"}
    with pytest.raises(PixelwiseError, match="model.name 'unet' -> 'enet'"):
        Trainer.from_config(config_from_dict(cfg), resume=stopped_run / "last.pt", progress=False)


def test_a_process_holding_a_loader_with_workers_exits(tmp_path):
    """Workers ignore SIGTERM, so they must be stopped before multiprocessing's exit handler, which
    stops them by SIGTERM and then waits; an iterator kept alive (by a traceback) used to hang."""
    script = (
        "import torch\n"
        "from pixelwise.engine.loader import EpochBatchSampler, make_loader\n"
        "data = [(torch.zeros(3, 2, 2, dtype=torch.uint8), torch.zeros(2, 2)) for _ in range(8)]\n"
        "kept = iter(make_loader(data, None, EpochBatchSampler(8, 2), num_workers=2))\n"
        "next(kept)\n"
        "def fail(index):\n"
        "    raise ValueError(index)\n"
        "class Bad(torch.utils.data.Dataset):\n"
        "    __len__ = lambda self: 8\n"
        "    __getitem__ = lambda self, i: fail(i)\n"
        "try:\n"
        "    next(iter(make_loader(Bad(), None, EpochBatchSampler(8, 2), num_workers=1)))\n"
        "except ValueError as error:\n"
        "    kept_error = error  # its traceback holds the iterator, as pytest's report does\n"
        "print('done')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0 and "done" in result.stdout, result.stderr[-2000:]
