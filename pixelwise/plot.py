"""``pixelwise plot RUN [RUN ...]``: the curves a researcher looks at, several runs overlaid, in one PNG.

Panels: the training loss terms (and the validation loss, crosses), the learning rate, the validation score (the task's headline, e.g.
mIoU) and the validation per-class IoU, all against iterations. A run folder holds what it needs:
``train_log.jsonl`` (one row per ``train.log_every``: step, loss terms, lr, images/s) and
``metrics.jsonl`` (one row per validation: step, scores, per-class IoU, the mean training loss
since the previous validation). A run written before ``train_log.jsonl`` existed still plots: its
loss comes from ``metrics.jsonl``'s averages and its lr panel says there is none.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixelwise.errors import PixelwiseError
from pixelwise.outputs import write_with

#: Scores a validation row may hold, in the order the headline is chosen.
HEADLINES = ("mean_iou", "mask_ap", "box_ap", "pixel_accuracy")


@dataclass
class RunCurves:
    """One run's rows: training (every log step) and validation (every evaluation)."""

    name: str
    folder: Path
    train: list[dict[str, Any]] = field(default_factory=list)
    val: list[dict[str, Any]] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)


def read_run(folder: Path) -> RunCurves:
    """The curves of one run folder; a folder without any log is refused in one sentence."""
    folder = Path(folder)
    if folder.is_file() and folder.suffix == ".pt":
        folder = folder.parent  # a checkpoint stands for its run
    if not folder.is_dir():
        raise PixelwiseError(
            f"Run {folder} is not a folder; give a run folder of `pixelwise train`."
        )
    train, val = _rows(folder / "train_log.jsonl"), _rows(folder / "metrics.jsonl")
    if not train and not val:
        raise PixelwiseError(
            f"Run {folder} has no metrics.jsonl or train_log.jsonl; give a run folder of "
            "`pixelwise train` that ran at least one validation."
        )
    return RunCurves(_run_name(folder), folder, train, val, _classes(folder))


def _rows(path: Path) -> list[dict[str, Any]]:
    """JSON lines; a half-written last line (a run killed mid-write) is left out, not fatal."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int | float):
            rows.append(row)
    # A resumed run may repeat steps after a kill; the latest row of a step wins.
    latest = {row["step"]: row for row in rows}
    return [latest[step] for step in sorted(latest)]


def _run_name(folder: Path) -> str:
    return folder.name if folder.name not in ("", ".") else folder.resolve().name


def _classes(folder: Path) -> list[str]:
    """Class names of the run's dataset (named in its ``run.json``), else none (numbers then)."""
    try:
        record = json.loads((folder / "run.json").read_text())
        name = record["config"]["data"]["dataset"]
        from pixelwise.data import dataset_class

        return list(dataset_class(name).classes)
    except (OSError, ValueError, KeyError, TypeError, PixelwiseError):
        return []


def headline(runs: Sequence[RunCurves]) -> str | None:
    """The validation score every run has, the task's headline first."""
    for key in HEADLINES:
        if any(key in row for run in runs for row in run.val):
            return key
    return None


def loss_terms(runs: Sequence[RunCurves]) -> list[str]:
    """Training loss terms seen in any run, ``loss`` (the total) first."""
    terms: list[str] = []
    for run in runs:
        for row in run.train:
            terms += [k for k in row if k.startswith("loss") and k not in terms]
        for row in run.val:
            terms += [k for k in row.get("train", {}) if k.startswith("loss") and k not in terms]
    return sorted(terms, key=lambda t: (t != "loss", t))


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [
        (float(r["step"]), float(r[key]))
        for r in rows
        if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_runs(folders: Sequence[Path], out: Path, *, per_class_of: int = 0) -> Path:
    """Draw the runs' curves into ``out`` (PNG). Per-class IoU is drawn for run ``per_class_of``
    (per-class curves of several runs overlaid are unreadable)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not 0 <= per_class_of < len(folders):
        raise PixelwiseError(
            f"--per-class-of is {per_class_of}, but {len(folders)} run(s) were given; give the "
            f"position of one of them, 0 to {len(folders) - 1}."
        )
    runs = [read_run(Path(f)) for f in folders]
    names = _distinct_names(runs)
    score = headline(runs)
    terms = loss_terms(runs)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = ["-", "--", ":", "-."]
    loss_ax, lr_ax, score_ax, class_ax = axes.ravel()
    for index, (run, name) in enumerate(zip(runs, names, strict=True)):
        colour = colours[index % len(colours)]
        for t, term in enumerate(terms):
            x, y = _series(run.train, term)
            if not x:  # no per-step log: the averages kept beside each validation
                x, y = _series([{"step": r["step"], **r.get("train", {})} for r in run.val], term)
            if x:
                label = name if len(terms) == 1 else f"{name}: {term}"
                loss_ax.plot(x, y, styles[t % len(styles)], color=colour, label=label, lw=1.2)
        x, y = _series(run.val, "loss")  # the validation loss, where the run recorded one
        if x:
            loss_ax.plot(x, y, "x--", color=colour, label=f"{name}: val loss", ms=5, lw=1)
        x, y = _series(run.train, "lr")
        if x:
            lr_ax.plot(x, y, color=colour, label=name, lw=1.2)
        if score:
            x, y = _series(run.val, score)
            if x:
                score_ax.plot(x, [100 * v for v in y], "o-", color=colour, label=name, ms=3)
    _per_class(class_ax, runs[per_class_of], names[per_class_of])
    loss_ax.set_title("training loss")
    lr_ax.set_title("learning rate")
    score_ax.set_title(f"validation {_pretty(score)}" if score else "validation (no scores)")
    score_ax.set_ylabel("%")
    for ax in (loss_ax, lr_ax, score_ax, class_ax):
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if any(line.get_label()[0] != "_" for line in loss_ax.lines):
        loss_ax.legend(fontsize=8)
    if lr_ax.lines:
        lr_ax.legend(fontsize=8)
    else:
        lr_ax.text(
            0.5, 0.5, "no train_log.jsonl in these runs", ha="center", transform=lr_ax.transAxes
        )
    if score_ax.lines:
        score_ax.legend(fontsize=8)
    fig.suptitle(" vs ".join(names))
    fig.tight_layout()
    try:
        write_with(out, lambda buffer: fig.savefig(buffer, dpi=100, format="png"))
    finally:
        plt.close(fig)
    return out


def _per_class(ax: Any, run: RunCurves, name: str) -> None:
    """Per-class IoU of one run against iterations, one line per class, named in a legend."""
    rows = [r for r in run.val if isinstance(r.get("iou"), list)]
    ax.set_title(f"validation IoU per class ({name})")
    ax.set_ylabel("%")
    if not rows:
        ax.text(0.5, 0.5, "no per-class IoU in metrics.jsonl", ha="center", transform=ax.transAxes)
        return
    count = len(rows[-1]["iou"])
    for c in range(count):
        x = [r["step"] for r in rows if c < len(r["iou"]) and r["iou"][c] is not None]
        y = [100 * r["iou"][c] for r in rows if c < len(r["iou"]) and r["iou"][c] is not None]
        label = run.classes[c] if c < len(run.classes) else str(c)
        ax.plot(x, y, lw=1, label=label)
    ax.legend(fontsize=7, ncol=2 if count > 10 else 1, loc="best")


def _pretty(key: str) -> str:
    return {"mean_iou": "mIoU", "mask_ap": "mask AP", "box_ap": "box AP"}.get(key, key)


def _distinct_names(runs: Sequence[RunCurves]) -> list[str]:
    """Run names, longer (parent/name) where two runs share a folder name."""
    names = [r.name for r in runs]
    for i, run in enumerate(runs):
        if names.count(run.name) > 1:
            names[i] = f"{run.folder.parent.name}/{run.name}"
    return names
