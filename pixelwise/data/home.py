"""The data home: where datasets live when a config names a dataset but no ``data.root``.

``PIXELWISE_DATA`` names the folder; without it, ``~/.pixelwise/data``. Each dataset has its own
folder there (``home`` of its class: ``camvid``, ``VOCdevkit/VOC2012``, ``cityscapes`` ...), the
layout its official download unpacks to, so a recipe says ``dataset: camvid`` and works on every
machine that has CamVid in its data home. A relative ``data.root`` still means the current folder,
as any path a user types does.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_VARIABLE = "PIXELWISE_DATA"
DEFAULT_HOME = Path("~/.pixelwise/data")


def data_home() -> Path:
    """``$PIXELWISE_DATA``, else ``~/.pixelwise/data`` (user-expanded, not created)."""
    value = os.environ.get(DATA_VARIABLE, "").strip()
    return Path(value).expanduser() if value else DEFAULT_HOME.expanduser()


def home_root(folder: str) -> Path:
    """Where a dataset whose class's ``home`` is ``folder`` lives in the data home."""
    return data_home() / folder


def describe_home() -> str:
    """How the data home was chosen, for the sentence a missing dataset gets."""
    if os.environ.get(DATA_VARIABLE, "").strip():
        return f"the data home {data_home()} (from {DATA_VARIABLE})"
    return f"the data home {data_home()} (set {DATA_VARIABLE} to use another folder)"
