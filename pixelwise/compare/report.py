"""What a comparison writes: the :class:`Comparison` record, ``comparison.md``, ``comparison.json``
and ``comparison.png``, and the command that runs it again."""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from pixelwise.compare.plan import CompareSettings
from pixelwise.engine.rundir import output_folder
from pixelwise.errors import PixelwiseError
from pixelwise.outputs import write_text

if TYPE_CHECKING:
    from pixelwise.compare.run import Entry

COMPARISON_FILES = ("comparison.md", "comparison.json", "comparison.png")


@dataclass
class NetworkResult:
    """One row of the comparison; the training figures are None for a checkpoint only evaluated."""

    name: str
    model: str
    options: dict[str, Any]
    overrides: list[str]  # the network's own config overrides (--set), the shared ones aside
    source: str  # where the setting came from: the base config, a recipe, or a checkpoint
    checkpoint: str
    run_dir: str | None
    eval_size: list[int]
    mean_iou: float
    pixel_accuracy: float
    mean_accuracy: float
    fw_iou: float
    iou: dict[str, float | None]
    params: int
    gflops: float | None
    latency_ms: float
    iterations: int | None = None
    train_images_per_s: float | None = None
    train_seconds: float | None = None
    peak_memory_mb: float | None = None


@dataclass
class Comparison:
    """Everything written to ``comparison.json``; ``networks`` are the table's rows."""

    command: str
    mode: str  # "train" or "checkpoints"
    dataset: str
    split: str
    val_images: int
    classes: list[str]
    budget: dict[str, Any]
    networks: list[NetworkResult]
    versions: dict[str, str]
    machine: dict[str, Any]
    load_average: dict[str, list[float] | None]
    wall_seconds: float
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["networks"] = [asdict(n) for n in self.networks]
        return data


# -- the output folder and the command ----------------------------------------------------------
def prepare_out(out: Path, names: Sequence[str]) -> Path:
    """Create ``out``; refuse one that already holds a comparison or a run folder of these names."""
    if out.exists() and not out.is_dir():
        raise PixelwiseError(
            f"--out {out} is a file, not a folder; give a folder for the comparison."
        )
    taken = [out / f for f in COMPARISON_FILES if (out / f).exists()]
    taken += [out / n for n in names if (out / n).exists()]
    if taken:
        raise PixelwiseError(
            f"--out {out} already holds {taken[0].name}; give a new --out folder so that no "
            "earlier comparison or run is overwritten."
        )
    return output_folder(out, "--out")


def _yaml_value(value: Any) -> str:
    """A builder option's value as ``NAME.option=value`` takes it back."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def command_line(settings: CompareSettings, out: str | Path) -> str:
    """The ``pixelwise compare`` command that runs this comparison again."""
    words = ["pixelwise", "compare"]
    if settings.models:
        words += ["--models", ",".join(settings.models)]
    if settings.checkpoints:
        words += ["--checkpoints", ",".join(settings.checkpoints)]
    for flag, value in (
        ("--dataset", settings.dataset), ("--root", settings.root), ("--iters", settings.iters),
        ("--seconds", settings.seconds), ("--config", settings.config), ("--split", settings.split),
    ):  # fmt: skip
        if value is not None:
            words += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    if settings.recipes:
        words.append("--recipes")
    if settings.checkpoints and settings.device != "auto":
        words += ["--device", settings.device]
    if settings.rows != CompareSettings.rows:
        words += ["--rows", str(settings.rows)]
    for network, items in settings.network_overrides.items():
        for item in items:
            words += ["--set", f"{network}:{item}"]
    words += ["--out", str(out), *settings.overrides]
    for network, options in settings.model_options.items():
        words += [f"{network}.{k}={_yaml_value(v)}" for k, v in options.items()]
    return " ".join(shlex.quote(w) for w in words)


# -- the picture --------------------------------------------------------------------------------
@torch.no_grad()
def comparison_picture(
    entries: Sequence[Entry],
    dataset: Any,
    palette: Sequence,
    classes: Sequence[str],
    rows: int,
) -> np.ndarray:
    """The same validation images down the rows: image | ground truth | each network's labels,
    predicted as ``pixelwise predict`` does (each network's own preprocessing, at the image's size)."""
    from pixelwise.engine.train import spread_indices
    from pixelwise.viz import comparison_grid

    indices = spread_indices(len(dataset), rows)
    images, targets = [], []
    for i in indices:
        image, target = dataset[i]
        images.append(image.permute(1, 2, 0).numpy())
        targets.append(target)
    predictions = []
    for entry in entries:
        loaded = entry.loaded
        predictions.append(
            [loaded.task.predict_image(loaded.inference, dataset[i][0])[0] for i in indices]
        )
    names = [entry.result.name for entry in entries]
    return comparison_grid(images, targets, predictions, names, palette, classes=classes)


# -- the table ----------------------------------------------------------------------------------
SUMMARY_COLUMNS = (
    # (header, key, format); percentages are 100 x the JSON's fractions
    ("{split} mIoU", "mean_iou", "pct"),  # the split scored: val, or --split test
    ("pixel acc", "pixel_accuracy", "pct"),
    ("mean acc", "mean_accuracy", "pct"),
    ("fwIoU", "fw_iou", "pct"),
    ("params", "params", "int"),
    ("GFLOPs", "gflops", ".3f"),
    ("eval size", "eval_size", "size"),
    ("latency b1 (ms)", "latency_ms", ".2f"),
    ("iterations", "iterations", "int"),
    ("train img/s", "train_images_per_s", ".2f"),
    ("train time (s)", "train_seconds", ".1f"),
    ("peak memory (MB)", "peak_memory_mb", ".0f"),
)


def cell(value: Any, kind: str) -> str:
    """A value as the markdown table shows it ("-" for none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f}"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "size":
        return f"{value[0]}x{value[1]}"
    return format(value, kind)


def _setting_line(n: NetworkResult) -> str:
    options = ", ".join(f"{k}={v}" for k, v in n.options.items()) or "builder defaults"
    own = f"; own overrides {' '.join(n.overrides)}" if n.overrides else ""
    return f"- {n.name}: {n.source}; options {options}{own}; checkpoint `{n.checkpoint}`"


def format_markdown(comparison: Comparison) -> str:
    """``comparison.md``: the summary table, per-class IoU, and how the numbers were made."""
    c = comparison
    lines = [f"# {len(c.networks)} networks on {c.dataset} ({c.split}, {c.val_images} images)", ""]
    headers = (h.format(split=c.split) for h, _, _ in SUMMARY_COLUMNS)
    lines.append("| network | " + " | ".join(headers) + " |")
    lines.append("|---|" + "---:|" * len(SUMMARY_COLUMNS))
    for n in c.networks:
        values = asdict(n)
        lines.append(
            f"| {n.name} | " + " | ".join(cell(values[k], f) for _, k, f in SUMMARY_COLUMNS) + " |"
        )
    lines += ["", "Per-class IoU (%):", ""]
    lines.append("| network | " + " | ".join(c.classes) + " |")
    lines.append("|---|" + "---:|" * len(c.classes))
    for n in c.networks:
        lines.append(f"| {n.name} | " + " | ".join(cell(n.iou[k], "pct") for k in c.classes) + " |")
    lines += ["", "## Setting", ""]
    if c.mode == "train":
        budget = (
            f"{c.budget['iters']} iterations each" if "iters" in c.budget
            else f"{c.budget['seconds']:g} s of training each"
        )  # fmt: skip
        lines.append(f"- Budget: {budget}; scored once, after the last step (last.pt = best.pt).")
    lines += [_setting_line(n) for n in c.networks]
    lines += [f"- {note}" for note in c.notes]
    lines += [
        "- Measured: mIoU, accuracies and fwIoU over the split's dataset-wide confusion matrix; "
        "params learnable; GFLOPs one batch-1 forward at the eval size (2 x multiply-adds); "
        "latency batch 1, fp32, eval mode, median of the timed forwards after warm-up; train img/s "
        "and time without validation; peak memory of training (CUDA max allocated, or the CPU "
        "process's sampled resident-memory growth).",
        "",
        "## Reproduce",
        "",
        f"    {c.command}" if c.command else "    (run from Python)",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in c.versions.items()),
        "",
        "Machine: " + _machine_line(c.machine, c.load_average),
        "",
        f"Wall time of the whole comparison: {c.wall_seconds:.0f} s.",
        "",
        "![comparison](comparison.png)",
        "",
    ]
    return "\n".join(lines)


def _machine_line(machine: dict[str, Any], load: dict[str, Any]) -> str:
    text = f"{machine.get('cpu')} ({machine.get('cores')} cores, {machine.get('threads')} torch threads)"
    if machine.get("gpu"):
        text += f", GPU {machine['gpu']}"
    if load.get("start") is not None:
        text += f"; load average {load['start'][0]} at the start, {load['end'][0]} at the end"
    return text


def write_comparison(out: Path, comparison: Comparison, picture: np.ndarray) -> None:
    """Write comparison.md, comparison.json and comparison.png into ``out``."""
    from pixelwise.viz import save_png

    write_text(out / "comparison.json", json.dumps(comparison.to_dict(), indent=2) + "\n")
    write_text(out / "comparison.md", format_markdown(comparison))
    save_png(picture, out / "comparison.png")
