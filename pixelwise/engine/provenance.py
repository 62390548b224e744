"""What a reproduction of a run needs to know: versions, git commit, device, world and batch size.

The first question behind every "my mIoU is below the paper's" report is which code, which
library versions and which effective batch produced the number; a run folder answers it in
``run.json`` and every checkpoint in ``meta["run"]``.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def versions() -> dict[str, str]:
    """Python, torch, torchvision and pixelwise versions."""
    import torchvision

    import pixelwise

    return {
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a TorchVersion would not load with weights_only
        "torchvision": str(torchvision.__version__),
        "pixelwise": pixelwise.__version__,
    }


def git_state(folder: Path | None = None) -> dict[str, Any]:
    """The commit (and whether the tree has uncommitted changes) of the git checkout holding
    ``folder`` (default: the pixelwise package); ``{"commit": None}`` outside git or without git."""
    folder = folder or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=folder, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):  # no git installed, or it hung
        return {"commit": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def device_description(device: torch.device) -> str:
    """``cpu`` or the CUDA device's name, e.g. ``cuda:0 (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def run_record(
    *, device: torch.device, world_size: int, batch_per_process: int, seed: int, step: int
) -> dict[str, Any]:
    """One start of a run (a first start or a resume), as plain values."""
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "started_at_step": step,
        "command": list(sys.argv),
        "world_size": world_size,
        "batch_per_process": batch_per_process,
        "batch_total": batch_per_process * world_size,
        "seed": seed,
        "device": device_description(device),
        "versions": versions(),
        "git": git_state(),
        "cwd_git": git_state(Path.cwd()),
    }
