"""Shared fixtures: every test gets its own index cache, and torch uses few threads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.paths import SHARED


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("PIXELWISE_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def shared_dir() -> Path:
    return SHARED


@pytest.fixture
def one_thread():
    """One torch thread: on a shared two-core machine two threads per process can be 40 times
    slower. Tests that train several short runs use it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
