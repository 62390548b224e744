"""Two CPU processes under torchrun (gloo on loopback) train, all-reduce metrics, and only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.test_engine import tiny_config


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    config = tmp_path / "tiny.yaml"
    cfg = tiny_config(tmp_path / "runs", iters=2, eval_every=2)
    cfg["data"]["batch_size"] = 2
    cfg["data"]["val_options"] = {"num_samples": 5}  # odd: shards of 3 and 2, no repeats
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "pixelwise.cli", "train", str(config)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["tiny"]  # one run folder: rank 1 wrote nothing
    record = json.loads((runs[0] / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 2
    assert result.stdout.count("best val mIoU") == 1
