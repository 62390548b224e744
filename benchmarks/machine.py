"""What every benchmark figure states: the machine, the torch version and the thread count."""

from __future__ import annotations

from pixelwise.bench import machine


def machine_info() -> dict[str, object]:
    """The machine record of ``pixelwise bench`` (CPU, cores, native bf16, torch, threads, GPU)."""
    return machine()


def machine_line() -> str:
    """One line for a table's caption."""
    info = machine_info()
    gpu = f", {info['gpu']}" if "gpu" in info else ""
    return (
        f"{info['cpu']} ({info['cores']} cores){gpu}, torch {info['torch']}, "
        f"{info['threads']} threads"
    )
