"""What every benchmark figure states: the machine, the torch version and the thread count."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_line() -> str:
    """One line for a table's caption."""
    info = machine_info()
    gpu = f", {info['gpu']}" if "gpu" in info else ""
    return (
        f"{info['cpu']} ({info['cores']} cores){gpu}, torch {info['torch']}, "
        f"{info['threads']} threads"
    )
