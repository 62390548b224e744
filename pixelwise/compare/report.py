"""What a comparison writes: the :class:`Comparison` record, ``comparison.md``, ``comparison.json``
and ``comparison.png``, and the command that runs it again.

Two things keep a table from ranking what it should not. A row whose per-class IoU is 0 (or
undefined) for every class but at most one gets :func:`prediction_flags`: a network that predicts
the majority class everywhere scores a respectable mIoU on a background-heavy dataset while having
learnt nothing, so the flag sits in its name cell, under the table and in the JSON. And with
``--seeds N`` each network trains N times; :func:`seed_mean` makes its row the mean of the runs with
their sample standard deviation, since one seed's difference between two networks may be noise.
"""

from __future__ import annotations

import json
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
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
    seed: int | None = None  # the run's train.seed; None for a row that averages several
    flags: list[str] = field(default_factory=list)  # why its scores rank nothing (see below)
    seeds: list[NetworkResult] = field(default_factory=list)  # --seeds N > 1: each run's row
    spread: dict[str, float | None] = field(default_factory=dict)  # sample std over seeds
    scored_at: str | None = None  # e.g. "scored at the labels' size 360×480"


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
    seeds: int = 1  # training runs per network

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["networks"] = [asdict(n) for n in self.networks]
        return data


# -- rows that rank nothing -------------------------------------------------------------------
LEARNT_NOTHING = "learnt nothing"
SINGLE_CLASS = "single class"
FLAG_MARK = "⚠"


def _defined(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def prediction_flags(
    iou: Mapping[str, float | None],
    accuracy: Mapping[str, float | None],
    pixel_accuracy: float,
) -> list[str]:
    """Why a row's scores say nothing of its network, from its per-class scores; [] for none.

    ``learnt nothing``: every class but at most one has IoU 0 or none (absent from truth and
    prediction alike). ``single class``: besides, the one class is predicted everywhere, which the
    scores tell exactly: all its pixels are found (accuracy 1), no other class is hit, and its IoU
    equals the pixel accuracy, so its union is every pixel.

    Args:
        iou: per class, the IoU (None or NaN where undefined).
        accuracy: per class, the share of its true pixels predicted as it.
        pixel_accuracy: the share of all pixels predicted right.
    """
    if not any(_defined(v) for v in iou.values()):
        return []  # nothing was scored, so nothing to say
    learnt = [c for c, v in iou.items() if _defined(v) and v > 0]
    if len(learnt) > 1:
        return []
    if not learnt:
        return [f"{LEARNT_NOTHING}: every class at 0 IoU"]
    (only,) = learnt
    flags = [f"{LEARNT_NOTHING}: every class but {only} at 0 IoU"]
    found = accuracy.get(only)
    if (
        _defined(found)
        and math.isclose(found, 1.0, rel_tol=1e-12)
        and math.isclose(iou[only], pixel_accuracy, rel_tol=1e-12)
    ):
        flags.append(f"{SINGLE_CLASS}: predicts {only} everywhere")
    return flags


def _seed_list(seeds: Sequence[int | None]) -> str:
    return ", ".join(str(s) for s in seeds)


def seed_flags(runs: Sequence[NetworkResult]) -> list[str]:
    """A row's flags from its runs' flags, each saying in which of the seeds it holds."""
    flags = []
    for flag in dict.fromkeys(f for run in runs for f in run.flags):
        which = [run.seed for run in runs if flag in run.flags]
        if len(which) == len(runs):
            flags.append(f"{flag} (all {len(runs)} seeds)")
        else:
            word = "seed" if len(which) == 1 else "seeds"
            flags.append(f"{flag} ({word} {_seed_list(which)} of {len(runs)})")
    return flags


def flag_notes(networks: Sequence[NetworkResult]) -> list[str]:
    """The lines under the table, one per flagged row: what the flag means for ranking."""
    notes = []
    for n in networks:
        if not n.flags:
            continue
        some = n.seeds and any(not run.flags for run in n.seeds)
        why = (
            "Its mean includes runs whose scores come from one class at most"
            if some
            else "Its scores come from one class at most"
        )
        notes.append(
            f"{FLAG_MARK} {n.name}: {'; '.join(n.flags)}. {why}, so it is listed but must not be "
            "ranked as better than any other row (train it longer, or check its learning rate)."
        )
    return notes


# -- several seeds, one row ---------------------------------------------------------------------
#: What differs between seeds of one network: the scores and the speeds. The rest (parameters,
#: GFLOPs, eval size, iterations) is fixed by the setting.
SEED_VARYING = (
    "mean_iou", "pixel_accuracy", "mean_accuracy", "fw_iou", "latency_ms", "train_images_per_s",
    "train_seconds", "peak_memory_mb",
)  # fmt: skip


def mean_and_spread(
    values: Sequence[float | None], *, skip_undefined: bool = False
) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation (n - 1) of ``values``.

    (None, None) when one of them is missing, since a mean of fewer runs than the row claims would
    mislead; with ``skip_undefined`` the missing ones are left out instead (a class's IoU is
    undefined in a run that neither has nor predicts it, as the mIoU of that run leaves it out).
    """
    defined = [v for v in values if _defined(v)]
    if not defined or (len(defined) < len(values) and not skip_undefined):
        return None, None
    array = np.asarray(defined, dtype=np.float64)
    spread = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return float(array.mean()), spread


def seed_mean(runs: Sequence[NetworkResult], run_dir: str) -> NetworkResult:
    """One row for the runs of one network over seeds: the mean of each score and speed, their
    sample standard deviations in ``spread`` (also ``iou/<class>``), every run in ``seeds``, and
    the first run's checkpoint (the one the picture shows)."""
    first = runs[0]
    row = {f.name: getattr(first, f.name) for f in fields(NetworkResult)}
    spread: dict[str, float | None] = {}
    for key in SEED_VARYING:
        row[key], spread[key] = mean_and_spread([getattr(run, key) for run in runs])
    iou: dict[str, float | None] = {}
    for name in first.iou:
        iou[name], spread[f"iou/{name}"] = mean_and_spread(
            [run.iou[name] for run in runs], skip_undefined=True
        )
    row.update(
        iou=iou, run_dir=run_dir, seed=None, flags=seed_flags(runs), seeds=list(runs),
        spread=spread,
    )  # fmt: skip
    return NetworkResult(**row)


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
    if settings.seeds != CompareSettings.seeds:
        words += ["--seeds", str(settings.seeds)]
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


def _with_spread(n: NetworkResult, key: str, value: Any, kind: str) -> str:
    """A cell, with ``± sample std`` where the row averages seeds."""
    text = cell(value, kind)
    if not n.seeds or key not in n.spread or text == "-":
        return text
    # The spread of a fraction is shown in percentage points, like its mean.
    return f"{text} ± {cell(n.spread[key], kind)}"


def _name_cell(n: NetworkResult) -> str:
    return f"{n.name} {FLAG_MARK}" if n.flags else n.name


def _setting_line(n: NetworkResult) -> str:
    options = ", ".join(f"{k}={v}" for k, v in n.options.items()) or "builder defaults"
    own = f"; own overrides {' '.join(n.overrides)}" if n.overrides else ""
    if n.seeds:
        runs = ", ".join(f"`{run.checkpoint}`" for run in n.seeds)
        return f"- {n.name}: {n.source}; options {options}{own}; checkpoints {runs}"
    return f"- {n.name}: {n.source}; options {options}{own}; checkpoint `{n.checkpoint}`"


def format_markdown(comparison: Comparison) -> str:
    """``comparison.md``: the summary table, per-class IoU, and how the numbers were made."""
    c = comparison
    seeds = f", mean ± sample std of {c.seeds} seeds" if c.seeds > 1 else ""
    lines = [
        f"# {len(c.networks)} networks on {c.dataset} ({c.split}, {c.val_images} images{seeds})",
        "",
    ]
    headers = (h.format(split=c.split) for h, _, _ in SUMMARY_COLUMNS)
    lines.append("| network | " + " | ".join(headers) + " |")
    lines.append("|---|" + "---:|" * len(SUMMARY_COLUMNS))
    for n in c.networks:
        values = asdict(n)
        lines.append(
            f"| {_name_cell(n)} | "
            + " | ".join(_with_spread(n, k, values[k], f) for _, k, f in SUMMARY_COLUMNS)
            + " |"
        )
    flagged = flag_notes(c.networks)
    if flagged:
        # Right under the table, where it is read (the command prints the table and these).
        lines += ["", *flagged]
    lines += ["", "Per-class IoU (%):", ""]
    lines.append("| network | " + " | ".join(c.classes) + " |")
    lines.append("|---|" + "---:|" * len(c.classes))
    for n in c.networks:
        cells = (_with_spread(n, f"iou/{k}", n.iou[k], "pct") for k in c.classes)
        lines.append(f"| {_name_cell(n)} | " + " | ".join(cells) + " |")
    lines += ["", "## Setting", ""]
    if c.mode == "train":
        budget = (
            f"{c.budget['iters']} iterations each" if "iters" in c.budget
            else f"{c.budget['seconds']:g} s of training each"
        )  # fmt: skip
        lines.append(f"- Budget: {budget}; scored once, after the last step (last.pt = best.pt).")
        if c.seeds > 1:
            lines.append(
                f"- Seeds: each network trained {c.seeds} times (train.seed s, s+1, ..., s its "
                "config's), each run in <name>/seed-<seed>/; a cell is the mean over the runs ± "
                "their sample standard deviation (n - 1; percentage points for the scores); "
                "comparison.json keeps every run's numbers under networks[].seeds; the picture "
                "shows each network's first seed."
            )
    lines += [_setting_line(n) for n in c.networks]
    scored = sorted({n.scored_at for n in c.networks if n.scored_at})
    if scored:
        said = "; ".join(scored)
        lines.append(f"- {said[:1].upper()}{said[1:]} (data.score_at; docs/evaluation.md).")
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
