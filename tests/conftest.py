"""Shared fixtures: every test gets its own index cache, torch uses few threads, and the CPU's
bfloat16 is decided by the tests, not by the machine they run on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.paths import DATA

# Mixed precision on the CPU follows the CPU (bf16 where it is native): the suite forces the
# float32 path here, also in the processes tests start, and the tests of the bf16 path force it
# with monkeypatch.setenv(CPU_BF16_VARIABLE, "1") (autocast runs bf16 on any x86 CPU, only slower).
os.environ["PIXELWISE_CPU_BF16"] = "0"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def data_dir() -> Path:
    """The data home: real datasets and sample files, where a developer has them."""
    return DATA


@pytest.fixture
def one_thread():
    """One torch thread: on a shared two-core machine two threads per process can be 40 times
    slower. Tests that train several short runs use it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """best.pt of a one-step `pixelwise train` run on the shapes dataset, one per test module
    (the tests that take it only read it, or write beside it in their own module's folder)."""
    import yaml

    from pixelwise.cli import main
    from tests.test_engine import tiny_config

    folder = tmp_path_factory.mktemp("run")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(folder / "runs", iters=1, eval_every=1)))
    assert main(["train", str(config)]) == 0
    return folder / "runs" / "tiny" / "best.pt"
