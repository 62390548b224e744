"""Networks compared on equal footing: what ``pixelwise compare`` trains, measures and writes.

Every network is trained by the same :class:`~pixelwise.engine.train.Trainer` from one shared base
config (the ``pixelwise demo`` recipe unless ``--config`` names another): the same dataset, split,
seed and so batch order, crop, augmentation, optimizer, schedule and budget. Only the network
differs, and its builder options (the base config's ``model.options`` go to the network the base
config names; ``NAME.key=value`` sets one network's option). With ``recipes=True`` each network
trains with its own paper recipe, ``configs/<model>_<dataset>.yaml``, where one exists, under the
same budget. Or the networks come from checkpoints, and are only evaluated.

The budget is iterations, or wall-clock seconds of training. The learning-rate schedule is a
function of a known number of iterations, so for seconds each network's iteration count is fixed
before its run: a throwaway start of the same run (same seed, a temporary folder) times a few
steps after a warm-up, and the run gets as many iterations as fit into the seconds at that speed.
The table reports the training time each run actually took.

Each network is scored once, after its last step (``train.eval_every`` defaults to the budget, so
``best.pt`` and ``last.pt`` hold the same weights and no validation score picks a checkpoint), by
the Evaluator ``pixelwise eval`` uses. Beside the scores: learnable parameters, GFLOPs of one
forward at the evaluated size (counted on the meta device), batch-1 latency (fp32, eval mode,
median after warm-up), training images/s (the Trainer's, validation time left out), training time
and peak memory of training (CUDA: ``max_memory_allocated``; CPU: sampled growth of the process's
resident memory, see :mod:`pixelwise.bench`).

>>> from pixelwise.compare import CompareSettings, run_comparison
>>> run_comparison(CompareSettings(models=["unet", "enet"], iters=300), "runs/compare")
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from pixelwise.config import Config, apply_overrides, config_from_dict
from pixelwise.engine.rundir import output_folder
from pixelwise.errors import PixelwiseError

COMPARISON_FILES = ("comparison.md", "comparison.json", "comparison.png")
RECIPES_DIR = Path(__file__).resolve().parent.parent / "configs"
CALIBRATION_STEPS = 3  # timed iterations of a --seconds run's throwaway start


@dataclass
class CompareSettings:
    """What one comparison trains (or loads) and how.

    Attributes:
        models: registered network names (train mode).
        checkpoints: checkpoint paths (evaluate mode); exclusive with ``models``.
        dataset: the dataset, default the base config's.
        root: the dataset's folder.
        iters: iterations each network trains.
        seconds: wall-clock seconds of training each network gets (instead of ``iters``).
        recipes: train each network with ``configs/<model>_<dataset>.yaml`` where present.
        config: the shared base config (YAML); default the ``pixelwise demo`` recipe.
        overrides: ``key=value`` applied to every network's config.
        model_options: per network name, builder options (``NAME.key=value`` on the command line).
        split: the split checkpoints are evaluated on (default their val split).
        device: the device checkpoints are evaluated on.
        rows: validation images in ``comparison.png``.
        latency_warmup: untimed batch-1 forwards before the timed ones.
        latency_runs: timed batch-1 forwards whose median is reported.
        progress: progress bars (None: only on a terminal).
    """

    models: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    dataset: str | None = None
    root: str | None = None
    iters: int | None = None
    seconds: float | None = None
    recipes: bool = False
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    split: str | None = None
    device: str = "auto"
    rows: int = 4
    latency_warmup: int = 3
    latency_runs: int = 10
    progress: bool | None = None


@dataclass
class NetworkResult:
    """One row of the comparison; the training figures are None for a checkpoint only evaluated."""

    name: str
    model: str
    options: dict[str, Any]
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


# -- settings -> one config per network ---------------------------------------------------------
def split_network_options(
    items: Sequence[str], networks: Sequence[str]
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Separate ``NETWORK.option=value`` (one network's builder option, as ``pixelwise bench``
    takes it) from ``key=value`` config overrides; ``networks`` are the registered names."""
    overrides: list[str] = []
    options: dict[str, dict[str, Any]] = {}
    for item in items:
        key, equals, raw = item.partition("=")
        network, dot, option = key.strip().partition(".")
        if equals and dot and network in networks:
            if not option:
                raise PixelwiseError(
                    f"Network option {item!r} names no option; write it like unet.base_channels=16."
                )
            options.setdefault(network, {})[option] = yaml.safe_load(raw)
        else:
            overrides.append(item)
    return overrides, options


def base_config_dict(path: str | None) -> dict[str, Any]:
    """The shared base config as a mapping: ``path`` or the ``pixelwise demo`` recipe."""
    if path is None:
        with resources.as_file(resources.files("pixelwise") / "configs" / "demo.yaml") as demo:
            return yaml.safe_load(demo.read_text())
    file = Path(path)
    if not file.is_file():
        raise PixelwiseError(
            f"--config {file} does not exist; give a YAML config, e.g. configs/enet_camvid.yaml."
        )
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise PixelwiseError(f"--config {file} must hold a mapping of sections.")
    return data


def _forbid_budget_overrides(overrides: Sequence[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in ("train.iters", "train.epochs"):
            raise PixelwiseError(
                f"Override {item!r} would give the networks a budget of their own; give the one "
                "budget of all with --iters N or --seconds S."
            )


def network_config(
    name: str, settings: CompareSettings, base: dict[str, Any], iters: int
) -> tuple[Config, str]:
    """The config ``name`` trains with for ``iters`` iterations, and where its setting came from."""
    data = copy.deepcopy(base)
    source = "shared base config"
    base_model = data.get("model") or {}
    dataset = settings.dataset or (data.get("data") or {}).get("dataset", "shapes")
    recipe = RECIPES_DIR / f"{name}_{dataset}.yaml"
    if settings.recipes and recipe.is_file():
        data = yaml.safe_load(recipe.read_text()) or {}
        source = f"recipe {recipe.relative_to(RECIPES_DIR.parent)}"
        options = dict((data.get("model") or {}).get("options") or {})
    else:
        # The base config's model options were written for the network it names only.
        options = dict(base_model.get("options") or {}) if base_model.get("name") == name else {}
        data["model"] = {"name": name}
        section = data.setdefault("data", {})
        if section.get("dataset", "shapes") != dataset:
            # Dataset options (the shapes' image size) belong to the base config's dataset.
            section.update(dataset=dataset, options={}, val_options={})
    if name == "unet":
        # The builder's default is the paper's valid padding, whose output is a centre crop that
        # cannot be scored on the pixels the other networks are; a recipe or the user may ask for it.
        options.setdefault("padding", "same")
    options.update(settings.model_options.get(name, {}))
    data["model"]["options"] = options
    data["name"] = name
    if settings.root is not None:
        data.setdefault("data", {})["root"] = settings.root
    train = data.setdefault("train", {})
    if train.get("classifier_iters"):
        source += " " + _scale_stages(train, iters)
    train.update(iters=iters, epochs=None, eval_every=iters)
    apply_overrides(data, list(settings.overrides), "pixelwise compare")
    return config_from_dict(data, f"the config of {name} ({source})"), source


def _scale_stages(train: dict[str, Any], iters: int) -> str:
    """Give a staged recipe's first stage its share of ``iters``; say what was done.

    DecoupledNet's recipe trains its classifier for a part of its own ``train.iters``; under the
    comparison's budget the part keeps its share, and one iteration cannot be split (both stages
    train at once).
    """
    first, total = int(train["classifier_iters"]), int(train.get("iters") or 0)
    share = first / total if total > first else 0.5
    if iters < 2:
        train["classifier_iters"] = 0
        return f"(both stages at once: {iters} iteration cannot be split)"
    train["classifier_iters"] = min(iters - 1, max(1, round(share * iters)))
    return (
        f"(classifier stage {train['classifier_iters']} of the {iters} iterations, the recipe's "
        "share)"
    )


def check_settings(settings: CompareSettings) -> None:
    """Refuse, before any work, a comparison that cannot be run as asked."""
    if bool(settings.models) == bool(settings.checkpoints):
        raise PixelwiseError(
            "Give the networks to compare either with --models (trained here, e.g. "
            "--models unet,enet,linknet) or with --checkpoints (evaluated only), not both or neither."
        )
    if settings.models:
        if (settings.iters is None) == (settings.seconds is None):
            raise PixelwiseError(
                "Give the one training budget of all networks, either --iters N or --seconds S."
            )
        if settings.iters is not None and settings.iters < 1:
            raise PixelwiseError(f"--iters {settings.iters} must be at least 1.")
        if settings.seconds is not None and not settings.seconds > 0:
            raise PixelwiseError(f"--seconds {settings.seconds} must be positive.")
        _forbid_budget_overrides(settings.overrides)
        names = settings.models
    else:
        names = settings.checkpoints
        if settings.overrides or settings.model_options:
            given = [
                *settings.overrides,
                *(f"{n}.{k}=..." for n, o in settings.model_options.items() for k in o),
            ]
            raise PixelwiseError(
                f"{given[0]} would change nothing: --checkpoints evaluates each checkpoint with "
                "the config it was trained with; choose the images with --root and --split, or "
                "train with --models to set a config."
            )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise PixelwiseError(f"{repeated[0]} is named twice; compare each network once.")
    stray = sorted(set(settings.model_options) - set(settings.models))
    if stray:
        raise PixelwiseError(
            f"Options are given for {stray[0]}, which is not in --models; add it to --models or "
            "drop its options."
        )
    if settings.rows < 1:
        raise PixelwiseError(f"--rows {settings.rows} must be at least 1.")


def check_networks(
    names: Sequence[str], configs: Sequence[Config], given: Sequence[str] = ()
) -> None:
    """Refuse networks that cannot be scored on one setting, each with one sentence.

    A network whose task is not scored on the K-class map (Mask R-CNN's COCO AP) cannot share the
    table; the semi-supervised ones (DecoupledNet's combined map, GAN-SS's discriminator) can. A
    valid-padding network predicts the centre of its input only, so among same-size networks it
    would be scored on fewer pixels; and the networks must be evaluated on the same images
    (``given``: the data keys the command sets for all, such as ``root`` or ``val_split``).
    """
    from pixelwise.engine.task import task_class
    from pixelwise.models import build_model

    for name in names:
        task = task_class(name)  # an unknown name raises, listing the registered ones
        if not task.scored_per_pixel:
            raise PixelwiseError(
                f"{name} is a {task.name!r} network, scored by COCO AP rather than per pixel; "
                "pixelwise compare scores networks on one confusion matrix of the same pixels, so "
                "leave it out of --models."
            )
    crops = {}
    for name, cfg in zip(names, configs, strict=True):
        with torch.device("meta"):  # options are checked and the layout read; nothing allocated
            model = build_model(name, 2, **cfg.model.options)
        crops[name] = bool(getattr(model, "crops_output", False))
    cropping = [n for n in names if crops[n]]
    if cropping and len(cropping) < len(names):
        others = ", ".join(n for n in names if not crops[n])
        raise PixelwiseError(
            f"{cropping[0]} with valid padding predicts only the centre of its input (its output "
            f"is smaller than the input), so it cannot be scored on the same pixels as {others}; "
            f"give it {cropping[0]}.padding=same or compare it only with valid-padding networks."
        )
    _check_same_evaluation(names, [c.data for c in configs], given)


def _check_same_evaluation(names: Sequence[str], data: Sequence[Any], given: Sequence[str]) -> None:
    """The networks must be scored on the same validation images; their training data may differ
    (a recipe brings its own), so the options compared are those the validation split is read
    with (:meth:`~pixelwise.config.DataConfig.split_options`)."""
    first = data[0]
    for name, d in zip(names[1:], data[1:], strict=True):
        for key in ("dataset", "root", "val_split"):
            if key in given:
                continue
            if getattr(d, key) != getattr(first, key):
                raise PixelwiseError(
                    f"{name} is evaluated with data.{key} {getattr(d, key)!r} but {names[0]} with "
                    f"{getattr(first, key)!r}; networks are compared on the same validation images, "
                    "so make them agree (an override key=value applies to all)."
                )
        mine, theirs = d.split_options(d.val_split), first.split_options(first.val_split)
        if mine != theirs:
            raise PixelwiseError(
                f"{name} reads the {d.dataset} validation split with options "
                f"{mine!r} but {names[0]} with {theirs!r}; "
                "networks are compared on the same validation images, so set the same "
                "(data.val_options=... applies to all)."
            )


# -- measuring ----------------------------------------------------------------------------------
def evaluated_size(task: Any, dataset: Any) -> list[int]:
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
) -> tuple[int, float | None, float]:
    """(learnable parameters, GFLOPs of one batch-1 forward at ``size``, batch-1 latency in ms)."""
    from pixelwise.bench import median_seconds
    from pixelwise.models import build_model
    from pixelwise.models.complexity import count_flops, count_parameters

    params = count_parameters(model)
    in_channels = next(m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d))
    try:
        with torch.device("meta"):
            meta = build_model(name, num_classes, **options)
        gflops: float | None = count_flops(meta, tuple(size), in_channels) / 1e9
    except (RuntimeError, NotImplementedError, PixelwiseError):
        gflops = None  # an operation without a meta kernel: no count rather than a wrong one
    was_training = model.training
    model.eval()
    x = torch.randn(1, in_channels, *size, device=device)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    try:
        latency = 1e3 * median_seconds(forward, device, warmup, runs)
    finally:
        model.train(was_training)
    return params, gflops, latency


def _scores(report: Any, classes: Sequence[str]) -> dict[str, Any]:
    return {
        "mean_iou": report.mean_iou,
        "pixel_accuracy": report.pixel_accuracy,
        "mean_accuracy": report.mean_accuracy,
        "fw_iou": report.fw_iou,
        "iou": {
            c: (None if math.isnan(v) else v) for c, v in zip(classes, report.iou, strict=True)
        },
    }


@dataclass
class _Trained:
    report: Any
    iterations: int
    images_per_s: float
    seconds: float
    peak_mb: float | None


def _train(config: Config, run_dir: Path, progress: bool | None) -> _Trained:
    """Train one network to its budget in ``run_dir``, measuring time and peak memory."""
    from pixelwise.bench import peak_memory  # the measure pixelwise bench reports
    from pixelwise.engine.train import Trainer

    trainer = Trainer(config, run_dir=run_dir, progress=progress)
    with peak_memory(trainer.device) as peak:
        started = time.perf_counter()
        report = trainer.fit()
        seconds = time.perf_counter() - started - trainer.eval_seconds
    if trainer.interrupted:
        raise KeyboardInterrupt
    if report is None:  # fit always scores the last step; a guard against a changed Trainer
        report = trainer.validate()
    return _Trained(
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
        trainer = Trainer(probe, run_dir=folder, progress=False)
        step = trainer.task.train_step

        def timed(*args: Any, **kwargs: Any) -> Any:
            starts.append(time.perf_counter())
            return step(*args, **kwargs)

        # Only this throwaway trainer's task is wrapped; the run itself is built afresh.
        trainer.task.train_step = timed  # type: ignore[method-assign]
        trainer.fit(max_steps=CALIBRATION_STEPS + 2)
    intervals = np.diff(starts)[1:]
    return max(1, int(seconds / float(np.median(intervals))))


# -- the comparison ----------------------------------------------------------------------------
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


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


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


def run_comparison(settings: CompareSettings, out: str | Path) -> Comparison:
    """Train (or load) every network, score and measure each, and write the three files."""
    check_settings(settings)
    command = command_line(settings, out)
    started = time.perf_counter()
    load_before = _loadavg()
    out = Path(out)
    if settings.models:
        entries, context = _train_all(settings, out)
    else:
        entries, context = _load_all(settings, out)
    results = [entry[0] for entry in entries]
    picture = comparison_picture(
        entries, context["dataset"], context["palette"], context["classes"], settings.rows
    )
    from pixelwise.bench import machine
    from pixelwise.engine.provenance import versions

    comparison = Comparison(
        command=command, mode="train" if settings.models else "checkpoints",
        dataset=context["dataset_name"], split=context["split"], val_images=len(context["dataset"]),
        classes=context["classes"], budget=context["budget"], networks=results,
        versions=versions(), machine=machine(),
        load_average={"start": load_before, "end": _loadavg()},
        wall_seconds=time.perf_counter() - started, notes=context["notes"],
    )  # fmt: skip
    write_comparison(out, comparison, picture)
    return comparison


def _train_all(settings: CompareSettings, out: Path) -> tuple[list, dict[str, Any]]:
    from pixelwise.engine.evaluate import split_dataset, task_of
    from pixelwise.engine.model_io import load_model

    base = base_config_dict(settings.config)
    nominal = settings.iters or 1
    planned = [network_config(n, settings, base, nominal) for n in settings.models]
    check_networks(settings.models, [c for c, _ in planned])
    prepare_out(out, settings.models)
    dataset, split = split_dataset(planned[0][0])
    entries: list = []
    notes: list[str] = []
    iterations: dict[str, int] = {}
    for index, (name, (config, source)) in enumerate(zip(settings.models, planned, strict=True)):
        if settings.seconds is not None:
            iterations[name] = iterations_for_seconds(config, settings.seconds)
            config = network_config(name, settings, base, iterations[name])[0]
        run_dir = out / name
        print(
            f"[{index + 1}/{len(planned)}] {name} ({source}): {config.train.iters} iterations "
            f"on {config.data.dataset}; run folder {run_dir}",
            flush=True,
        )
        trained = _train(config, run_dir, settings.progress)
        loaded = load_model(run_dir / "last.pt", config.train.device)
        task = task_of(loaded)
        size = evaluated_size(task, dataset)
        params, gflops, latency = measure_network(
            loaded.model, name, config.model.options, loaded.meta["num_classes"], size,
            loaded.device, warmup=settings.latency_warmup, runs=settings.latency_runs,
        )  # fmt: skip
        result = NetworkResult(
            name=name, model=name, options=dict(config.model.options), source=source,
            checkpoint=str(run_dir / "last.pt"), run_dir=str(run_dir), eval_size=size,
            **_scores(trained.report, loaded.classes), params=params, gflops=gflops,
            latency_ms=latency, iterations=trained.iterations,
            train_images_per_s=trained.images_per_s, train_seconds=trained.seconds,
            peak_memory_mb=trained.peak_mb,
        )  # fmt: skip
        print(
            f"    val mIoU {100 * result.mean_iou:.2f} after {trained.iterations} iterations in "
            f"{trained.seconds:.0f} s",
            flush=True,
        )
        entries.append((result, loaded, task))
    if settings.seconds is not None:
        notes.append(
            f"Budget {settings.seconds:g} s of training per network: the iterations each run got "
            "were fixed before it from a timed throwaway start (the schedule needs a known length); "
            "the training time column shows what each took."
        )
    if settings.recipes:
        missing = [
            n
            for (n, (_, s)) in zip(settings.models, planned, strict=True)
            if not s.startswith("recipe")
        ]
        if missing:
            notes.append(
                f"No recipe configs/<model>_{planned[0][0].data.dataset}.yaml for "
                f"{', '.join(missing)}: trained with the shared base config."
            )
    notes += count_notes(entries)
    first = planned[0][0]
    context = {
        "dataset": dataset, "dataset_name": first.data.dataset, "split": split,
        "classes": list(entries[0][1].classes), "palette": entries[0][1].palette,
        "budget": {"iters": settings.iters} if settings.iters else {
            "seconds": settings.seconds, "iterations": iterations},
        "notes": notes,
    }  # fmt: skip
    return entries, context


def _load_all(settings: CompareSettings, out: Path) -> tuple[list, dict[str, Any]]:
    from pixelwise.engine.evaluate import Evaluator, task_of
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
    entries: list = []
    dataset = split = None
    for name, item in zip(names, loaded, strict=True):
        task = task_of(item)
        evaluator = Evaluator(
            item.config, task, split=settings.split, root=settings.root, dataset=dataset
        )
        if dataset is None:
            dataset, split = evaluator.dataset, evaluator.split
        result = evaluator.run(item.model, item.device)
        size = evaluated_size(task, dataset)
        options = dict(item.meta.get("model_options", {}))
        params, gflops, latency = measure_network(
            item.model, item.meta["model"], options, item.meta["num_classes"], size, item.device,
            warmup=settings.latency_warmup, runs=settings.latency_runs,
        )  # fmt: skip
        run_dir = Path(item.source).parent
        entries.append((NetworkResult(
            name=name, model=item.meta["model"], options=options, source=f"checkpoint {item.source}",
            checkpoint=item.source, run_dir=str(run_dir), eval_size=size,
            **_scores(result.report, item.classes), params=params, gflops=gflops, latency_ms=latency,
        ), item, task))  # fmt: skip
        print(
            f"{name}: {split} mIoU {100 * result.report.mean_iou:.2f} ({item.source})", flush=True
        )
    context = {
        "dataset": dataset, "dataset_name": loaded[0].config.data.dataset, "split": split,
        "classes": loaded[0].classes, "palette": loaded[0].palette, "budget": {},
        "notes": [
            "Checkpoints evaluated only: the training columns are left empty.",
            *count_notes(entries),
        ],
    }  # fmt: skip
    return entries, context


def count_notes(entries: Sequence[tuple[Any, Any, Any]]) -> list[str]:
    """Notes on the counts: a network without a GFLOPs figure, and one whose parameter count holds
    a part prediction never runs (GAN-SS's generator; the count is the whole model's, as
    ``pixelwise models`` prints it)."""
    from pixelwise.models.complexity import count_parameters

    notes = []
    uncounted = [result.name for result, _, _ in entries if result.gflops is None]
    if uncounted:
        notes.append(
            f"No GFLOPs for {', '.join(uncounted)}: the count runs the forward on the meta device, "
            "which cannot follow a forward that depends on the image (DecoupledNet: one decoder "
            "pass per class its classifier detects) or an operation without a meta kernel."
        )
    for result, loaded, _ in entries:
        parts = loaded.model.parts() if hasattr(loaded.model, "parts") else {}
        if "generator" in parts:
            notes.append(
                f"{result.name}'s parameter count ({result.params:,}) includes its generator's "
                f"{count_parameters(parts['generator']):,}, which only training runs; predictions "
                "come from its discriminator."
            )
    return notes


def _row_names(models: Sequence[str], paths: Sequence[str]) -> list[str]:
    """The model's name, or ``model (run folder)`` where two checkpoints share a model."""
    return [
        m if models.count(m) == 1 else f"{m} ({Path(p).resolve().parent.name})"
        for m, p in zip(models, paths, strict=True)
    ]


@torch.no_grad()
def comparison_picture(
    entries: Sequence[tuple[NetworkResult, Any, Any]],
    dataset: Any,
    palette: Sequence,
    classes: Sequence[str],
    rows: int,
) -> np.ndarray:
    """The same validation images down the rows: image | ground truth | each network's labels,
    predicted as ``pixelwise predict`` does (each network's own preprocessing, at the image's size)."""
    from pixelwise.engine.evaluate import predict_image
    from pixelwise.engine.train import spread_indices
    from pixelwise.viz import comparison_grid

    indices = spread_indices(len(dataset), rows)
    images, targets = [], []
    for i in indices:
        image, target = dataset[i]
        images.append(image.permute(1, 2, 0).numpy())
        targets.append(target)
    predictions = []
    for _, loaded, task in entries:
        predictions.append(
            [predict_image(loaded.model, task, dataset[i][0], loaded.device)[0] for i in indices]
        )
    names = [result.name for result, _, _ in entries]
    return comparison_grid(images, targets, predictions, names, palette, classes=classes)


# -- writing ------------------------------------------------------------------------------------
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
    for n in c.networks:
        options = ", ".join(f"{k}={v}" for k, v in n.options.items()) or "builder defaults"
        lines.append(f"- {n.name}: {n.source}; options {options}; checkpoint `{n.checkpoint}`")
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

    (out / "comparison.json").write_text(json.dumps(comparison.to_dict(), indent=2) + "\n")
    (out / "comparison.md").write_text(format_markdown(comparison))
    save_png(picture, out / "comparison.png")


def command_line(settings: CompareSettings, out: str | Path) -> str:
    """The ``pixelwise compare`` command that runs this comparison again."""
    import shlex

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
    words += ["--out", str(out), *settings.overrides]
    for network, options in settings.model_options.items():
        words += [
            f"{network}.{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in options.items()
        ]
    return " ".join(shlex.quote(w) for w in words)
