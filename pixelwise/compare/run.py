"""Running a comparison: train (or load) each network, score it, measure it, and write the files.

Each network becomes one :class:`Entry` (its row and its loaded checkpoint); all of them, with the
validation images they were scored on and what the table's notes say, one :class:`Evaluated`.
What a network's task or model allows is asked of them: a task without one fixed forward
(``Task.fixed_forward``) gets no meta-device FLOPs count, and a part of a model (``model.parts()``)
that its forward never runs is named in the notes beside the parameter count that includes it.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pixelwise.compare.plan import (
    CompareSettings,
    NetworkPlan,
    base_config_dict,
    check_networks,
    check_settings,
    network_config,
    seeded,
)
from pixelwise.compare.report import (
    Comparison,
    NetworkResult,
    command_line,
    comparison_picture,
    prediction_flags,
    prepare_out,
    seed_mean,
    write_comparison,
)
from pixelwise.config import Config, config_from_dict
from pixelwise.errors import PixelwiseError

if TYPE_CHECKING:
    from pixelwise.engine.model_io import LoadedModel
    from pixelwise.tasks.base import Report, Task

CALIBRATION_STEPS = 3  # timed iterations of a --seconds run's throwaway start


@dataclass
class Trained:
    """One training run to its budget: its last validation and what it took."""

    report: Report
    iterations: int
    images_per_s: float
    seconds: float  # training time, validation left out
    peak_mb: float | None


@dataclass
class Measured:
    """What is measured of a network besides its scores.

    Attributes:
        params: learnable parameters of the whole model.
        gflops: GFLOPs of one batch-1 forward at the evaluated size; None where not counted.
        latency_ms: median batch-1 latency (fp32, eval mode).
        no_gflops: why ``gflops`` is None.
        idle_parts: the model's parts (``model.parts()``) that its forward never runs, with their
            parameter counts (included in ``params``).
    """

    params: int
    gflops: float | None
    latency_ms: float
    no_gflops: str | None = None
    idle_parts: dict[str, int] = field(default_factory=dict)


@dataclass
class Entry:
    """One network of the comparison: its row, the checkpoint scored, and its notes."""

    result: NetworkResult
    loaded: LoadedModel
    notes: list[str] = field(default_factory=list)


@dataclass
class Evaluated:
    """Every network scored on the same images, and what the comparison says about them.

    Attributes:
        entries: the networks, in the order given.
        dataset: the validation images every network was scored on.
        dataset_name: the registered dataset.
        split: the split scored.
        classes: class names, one per output.
        palette: RGB per class, for the picture.
        budget: ``{"iters": N}``, ``{"seconds": S, "iterations": {name: N}}`` or ``{}``.
        notes: the lines under the table.
    """

    entries: list[Entry]
    dataset: Any
    dataset_name: str
    split: str
    classes: list[str]
    palette: list[list[int]]
    budget: dict[str, Any]
    notes: list[str]


# -- the comparison ----------------------------------------------------------------------------
def run_comparison(settings: CompareSettings, out: str | Path) -> Comparison:
    """Train (or load) every network, score and measure each, and write the three files."""
    from pixelwise.bench import machine
    from pixelwise.engine.provenance import versions

    check_settings(settings)
    command = command_line(settings, out)
    started = time.perf_counter()
    load_before = _loadavg()
    out = Path(out)
    evaluated = train_all(settings, out) if settings.models else load_all(settings, out)
    picture = comparison_picture(
        evaluated.entries, evaluated.dataset, evaluated.palette, evaluated.classes, settings.rows
    )
    comparison = Comparison(
        command=command, mode="train" if settings.models else "checkpoints",
        dataset=evaluated.dataset_name, split=evaluated.split, val_images=len(evaluated.dataset),
        classes=evaluated.classes, budget=evaluated.budget,
        networks=[entry.result for entry in evaluated.entries], versions=versions(),
        machine=machine(), load_average={"start": load_before, "end": _loadavg()},
        wall_seconds=time.perf_counter() - started, notes=evaluated.notes, seeds=settings.seeds,
    )  # fmt: skip
    write_comparison(out, comparison, picture)
    return comparison


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def train_all(settings: CompareSettings, out: Path) -> Evaluated:
    """Train every network of ``settings.models`` in ``out/<name>`` and score each; with
    ``settings.seeds`` N > 1, N times in ``out/<name>/seed-<seed>``, one row of their mean."""
    from pixelwise.engine.evaluate import split_dataset

    base = base_config_dict(settings.config)
    plans = [network_config(n, settings, base, settings.iters or 1) for n in settings.models]
    check_networks(settings.models, [plan.config for plan in plans])
    prepare_out(out, settings.models)
    dataset, split = split_dataset(plans[0].config)
    entries: list[Entry] = []
    iterations: dict[str, int] = {}
    for index, plan in enumerate(plans):
        if settings.seconds is not None:
            iterations[plan.name] = iterations_for_seconds(plan.config, settings.seconds)
            plan = network_config(plan.name, settings, base, iterations[plan.name])
        if settings.seeds == 1:
            print(
                f"[{index + 1}/{len(plans)}] {plan.name} ({plan.source}): "
                f"{plan.config.train.iters} iterations on {plan.config.data.dataset}; "
                f"run folder {out / plan.name}",
                flush=True,
            )
            entries.append(train_entry(plan, out / plan.name, dataset, settings))
            continue
        runs: list[Entry] = []
        for seed in seed_values(plan.config.train.seed, settings.seeds):
            run_dir = out / plan.name / f"seed-{seed}"
            print(
                f"[{index + 1}/{len(plans)}] {plan.name} seed {seed} ({plan.source}): "
                f"{plan.config.train.iters} iterations on {plan.config.data.dataset}; "
                f"run folder {run_dir}",
                flush=True,
            )
            runs.append(train_entry(seeded(plan, seed), run_dir, dataset, settings))
        # The picture shows the first run; the others' models are not kept in memory.
        row = seed_mean([run.result for run in runs], str(out / plan.name))
        entries.append(Entry(row, runs[0].loaded, runs[0].notes))
    notes: list[str] = []
    if settings.seconds is not None:
        notes.append(
            f"Budget {settings.seconds:g} s of training per network: the iterations each run got "
            "were fixed before it from a timed throwaway start (the schedule needs a known length); "
            "the training time column shows what each took."
        )
    if settings.recipes:
        missing = [plan.name for plan in plans if not plan.source.startswith("recipe")]
        if missing:
            notes.append(
                f"No recipe configs/<model>_{plans[0].config.data.dataset}.yaml for "
                f"{', '.join(missing)}: trained with the shared base config."
            )
    budget: dict[str, Any] = (
        {"iters": settings.iters}
        if settings.iters
        else {"seconds": settings.seconds, "iterations": iterations}
    )
    return Evaluated(
        entries=entries, dataset=dataset, dataset_name=plans[0].config.data.dataset, split=split,
        classes=list(entries[0].loaded.classes), palette=entries[0].loaded.palette, budget=budget,
        notes=[*notes, *(note for entry in entries for note in entry.notes)],
    )  # fmt: skip


def seed_values(first: int, count: int) -> list[int]:
    """The ``train.seed`` of each of ``count`` runs: ``first``, ``first + 1``, ..."""
    return list(range(first, first + count))


def train_entry(plan: NetworkPlan, run_dir: Path, dataset: Any, settings: CompareSettings) -> Entry:
    """Train one planned network in ``run_dir``, load its last checkpoint, and measure it."""
    from pixelwise.engine.model_io import load_model

    config = plan.config
    trained = train_network(config, run_dir, settings.progress)
    loaded = load_model(run_dir / "last.pt", config.train.device)
    size = evaluated_size(loaded.task, dataset)
    measured = measure_network(
        loaded.model, plan.name, config.model.options, loaded.meta["num_classes"], size,
        loaded.device, warmup=settings.latency_warmup, runs=settings.latency_runs,
    )  # fmt: skip
    result = NetworkResult(
        name=plan.name, model=plan.name, options=dict(config.model.options),
        overrides=list(plan.overrides), source=plan.source, checkpoint=str(run_dir / "last.pt"),
        run_dir=str(run_dir), eval_size=size, **_scores(trained.report, loaded.classes),
        params=measured.params, gflops=measured.gflops, latency_ms=measured.latency_ms,
        iterations=trained.iterations, train_images_per_s=trained.images_per_s,
        train_seconds=trained.seconds, peak_memory_mb=trained.peak_mb, seed=config.train.seed,
        scored_at=_scored_text(trained.report),
    )  # fmt: skip
    print(
        f"    val mIoU {100 * result.mean_iou:.2f} after {trained.iterations} iterations in "
        f"{trained.seconds:.0f} s",
        flush=True,
    )
    return Entry(result, loaded, network_notes(plan.name, measured))


def load_all(settings: CompareSettings, out: Path) -> Evaluated:
    """Load every checkpoint of ``settings.checkpoints`` and score each on the same images."""
    from pixelwise.engine.evaluate import Evaluator
    from pixelwise.engine.model_io import load_model

    loaded = [load_model(path, settings.device) for path in settings.checkpoints]
    models = [item.meta["model"] for item in loaded]
    names = _row_names(models, settings.checkpoints)
    given = [
        k for k, v in (("root", settings.root), ("val_split", settings.split)) if v is not None
    ]
    check_networks(models, [item.config for item in loaded], given)
    for item in loaded[1:]:
        if item.classes != loaded[0].classes:
            raise PixelwiseError(
                f"{item.source} predicts the classes {item.classes} but {loaded[0].source} "
                f"{loaded[0].classes}; compare checkpoints trained on the same dataset."
            )
    prepare_out(out, [])
    entries: list[Entry] = []
    dataset = split = None
    for name, item in zip(names, loaded, strict=True):
        evaluator = Evaluator(
            item.config, item.task, split=settings.split, root=settings.root, dataset=dataset
        )
        if dataset is None:
            dataset, split = evaluator.dataset, evaluator.split
        scored = evaluator.run_loaded(item)
        size = evaluated_size(item.task, dataset)
        options = dict(item.meta.get("model_options", {}))
        measured = measure_network(
            item.model, item.meta["model"], options, item.meta["num_classes"], size, item.device,
            warmup=settings.latency_warmup, runs=settings.latency_runs,
        )  # fmt: skip
        result = NetworkResult(
            name=name, model=item.meta["model"], options=options, overrides=[],
            source=f"checkpoint {item.source}", checkpoint=item.source,
            run_dir=str(Path(item.source).parent), eval_size=size,
            **_scores(scored.report, item.classes), params=measured.params,
            gflops=measured.gflops, latency_ms=measured.latency_ms, seed=item.config.train.seed,
            scored_at=_scored_text(scored.report),
        )  # fmt: skip
        entries.append(Entry(result, item, network_notes(name, measured)))
        print(
            f"{name}: {split} mIoU {100 * scored.report.mean_iou:.2f} ({item.source})", flush=True
        )
    assert dataset is not None and split is not None  # at least one checkpoint was scored
    return Evaluated(
        entries=entries, dataset=dataset, dataset_name=loaded[0].config.data.dataset, split=split,
        classes=loaded[0].classes, palette=loaded[0].palette, budget={},
        notes=[
            "Checkpoints evaluated only: the training columns are left empty.",
            *(note for entry in entries for note in entry.notes),
        ],
    )  # fmt: skip


def network_notes(name: str, measured: Measured) -> list[str]:
    """The notes under the table on one network's counts: why it has no GFLOPs figure, and the
    parts its parameter count holds that its forward never runs (the count is the whole model's,
    as ``pixelwise models`` prints it)."""
    notes = []
    if measured.gflops is None and measured.no_gflops:
        notes.append(f"No GFLOPs for {name}: {measured.no_gflops}.")
    for part, count in measured.idle_parts.items():
        notes.append(
            f"{name}'s parameter count ({measured.params:,}) includes its {part}'s {count:,}, "
            "which its forward never runs (training uses it); predictions come from the rest."
        )
    return notes


def _row_names(models: Sequence[str], paths: Sequence[str]) -> list[str]:
    """The model's name, or ``model (run folder)`` where two checkpoints share a model."""
    return [
        m if models.count(m) == 1 else f"{m} ({Path(p).resolve().parent.name})"
        for m, p in zip(models, paths, strict=True)
    ]


# -- measuring ----------------------------------------------------------------------------------
def evaluated_size(task: Task, dataset: Any) -> list[int]:
    """The H×W the network sees for the first validation image (after data.resize)."""
    image, target = dataset[0]
    x, _ = task.eval_transforms()(image, target)
    return [int(s) for s in x.shape[-2:]]


def measure_network(
    model: nn.Module,
    name: str,
    options: dict[str, Any],
    num_classes: int,
    size: Sequence[int],
    device: torch.device,
    *,
    warmup: int,
    runs: int,
) -> Measured:
    """Parameters, GFLOPs of one batch-1 forward at ``size``, and batch-1 latency of the
    registered network ``name`` (built with ``options``), whose weights ``model`` holds."""
    from pixelwise.bench import median_seconds
    from pixelwise.models import build_model
    from pixelwise.models.complexity import count_flops, count_parameters
    from pixelwise.tasks import task_class

    task = task_class(name)
    params = count_parameters(model)
    in_channels = next(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    gflops: float | None = None
    no_gflops: str | None = None
    if not task.fixed_forward:
        why = task.bench_refusal or "its forward depends on the image"
        no_gflops = f"{why}; the count needs one fixed forward, run on the meta device"
    else:
        try:
            with torch.device("meta"):
                meta = build_model(name, num_classes, **options)
            gflops = count_flops(meta, tuple(size), in_channels) / 1e9
        except (RuntimeError, NotImplementedError, PixelwiseError):
            # no count rather than a wrong one
            no_gflops = (
                "the count runs its forward on the meta device, and an operation of it has no "
                "meta kernel"
            )
    was_training = model.training
    model.eval()
    x = torch.randn(1, in_channels, *size, device=device)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    try:
        # A forward that depends on the image may leave a part out for this one only.
        idle = _idle_parts(model, forward) if task.fixed_forward else {}
        latency = 1e3 * median_seconds(forward, device, warmup, runs)
    finally:
        model.train(was_training)
    return Measured(params, gflops, latency, no_gflops, idle)


def _idle_parts(model: nn.Module, forward: Any) -> dict[str, int]:
    """The parts of ``model`` (``model.parts()``, where it has them) that ``forward`` never
    runs, with their learnable parameters."""
    from pixelwise.models.complexity import count_parameters

    parts = model.parts() if callable(getattr(model, "parts", None)) else {}
    ran: set[str] = set()
    handles = [
        module.register_forward_pre_hook(lambda *_, part=name: ran.add(part))
        for name, part in parts.items()
        for module in part.modules()
    ]
    try:
        forward()
    finally:
        for handle in handles:
            handle.remove()
    return {name: count_parameters(part) for name, part in parts.items() if name not in ran}


def _scores(report: Any, classes: Sequence[str]) -> dict[str, Any]:
    """A row's scores and flags from a per-pixel task's report (a dataset-wide confusion
    matrix's :class:`~pixelwise.metrics.Scores`)."""
    iou = {c: (None if math.isnan(v) else v) for c, v in zip(classes, report.iou, strict=True)}
    accuracy = dict(zip(classes, getattr(report, "class_accuracy", []), strict=False))
    return {
        "mean_iou": report.mean_iou,
        "pixel_accuracy": report.pixel_accuracy,
        "mean_accuracy": report.mean_accuracy,
        "fw_iou": report.fw_iou,
        "iou": iou,
        "flags": prediction_flags(iou, accuracy, report.pixel_accuracy),
    }


# -- training -----------------------------------------------------------------------------------
def train_network(config: Config, run_dir: Path, progress: bool | None) -> Trained:
    """Train one network to its budget in ``run_dir``, measuring time and peak memory."""
    from pixelwise.bench import peak_memory  # the measure pixelwise bench reports
    from pixelwise.engine.train import Trainer

    trainer = Trainer.from_config(config, run_dir=run_dir, progress=progress)
    with peak_memory(trainer.device) as peak:
        started = time.perf_counter()
        report = trainer.fit()
        seconds = time.perf_counter() - started - trainer.eval_seconds
    if trainer.interrupted:
        raise KeyboardInterrupt
    if report is None:  # fit always scores the last step; a guard against a changed Trainer
        report = trainer.validate()
    return Trained(
        report, trainer.step, trainer.train_images_per_s, seconds,
        None if peak.bytes is None else peak.bytes / 2**20,
    )  # fmt: skip


def iterations_for_seconds(config: Config, seconds: float) -> int:
    """How many iterations of ``config``'s run fit into ``seconds`` of training.

    A throwaway start of the same run (same seed and data, a temporary folder) trains
    ``CALIBRATION_STEPS + 2`` steps; the time of one iteration is the median interval between the
    starts of consecutive steps after the first (which pays for workers, allocations and kernel
    choice), so it holds loading, the step and logging, as the real run's iterations do.
    """
    from pixelwise.engine.train import Trainer

    data = config.to_dict()
    # A long nominal run, so that nothing is evaluated while timing.
    data["train"].update(iters=10**9, eval_every=10**9)
    probe = config_from_dict(data, "the timing run")
    starts: list[float] = []
    with tempfile.TemporaryDirectory(prefix="pixelwise-compare-") as folder:
        trainer = Trainer.from_config(probe, run_dir=folder, progress=False)
        step = trainer.task.train_step

        def timed(*args: Any, **kwargs: Any) -> Any:
            starts.append(time.perf_counter())
            return step(*args, **kwargs)

        # Only this throwaway trainer's task is wrapped; the run itself is built afresh.
        trainer.task.train_step = timed  # type: ignore[method-assign]
        trainer.fit(max_steps=CALIBRATION_STEPS + 2)
    intervals = np.diff(starts)[1:]
    return max(1, int(seconds / float(np.median(intervals))))


def _scored_text(report: Any) -> str | None:
    """The size a report was scored at, in the console's words (None where unrecorded)."""
    text = getattr(report, "scored_text", None)
    return text() if callable(text) else None
