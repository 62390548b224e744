"""What a comparison will run: its settings, their checks, and the config each network trains with.

Nothing here trains or writes: :func:`check_settings` refuses settings that cannot be run,
:func:`network_config` turns the settings into one :class:`NetworkPlan` per network, and
:func:`check_networks` refuses networks that cannot be scored on one setting. Whatever differs
between networks is asked of the model registry (the builder's options, the built module's
``crops_output``) or of the network's task class (``scored_per_pixel``, ``staged``), never decided
by a network's name.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from pixelwise.config import (
    Config,
    DataConfig,
    apply_overrides,
    config_from_dict,
    load_config_data,
)
from pixelwise.errors import PixelwiseError

RECIPES_DIR = Path(__file__).resolve().parents[2] / "configs"
#: Keys that set a run's length: the comparison gives every network the one budget.
BUDGET_KEYS = ("train.iters", "train.epochs")


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
        network_overrides: per network name, ``key=value`` config overrides applied to that
            network's config only, after the shared overrides and the recipe
            (``--set NAME:key=value`` on the command line).
        split: the split checkpoints are evaluated on (default their val split).
        device: the device checkpoints are evaluated on.
        rows: validation images in ``comparison.png``.
        latency_warmup: untimed batch-1 forwards before the timed ones.
        latency_runs: timed batch-1 forwards whose median is reported.
        progress: progress bars (None: only on a terminal).
        seeds: training runs per network, with ``train.seed`` s, s+1, ... (s the network's
            config's); the table shows their mean ± sample standard deviation.
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
    network_overrides: dict[str, list[str]] = field(default_factory=dict)
    split: str | None = None
    device: str = "auto"
    rows: int = 4
    latency_warmup: int = 3
    latency_runs: int = 10
    progress: bool | None = None
    seeds: int = 1


@dataclass
class NetworkPlan:
    """One network's part of a comparison, before it trains.

    Attributes:
        name: the registered network.
        config: the config it trains with (budget, shared and own overrides applied).
        source: where the setting came from: the shared base config or a recipe, and what the
            budget did to a staged recipe.
        overrides: its own ``key=value`` overrides (``--set``), in the order applied.
    """

    name: str
    config: Config
    source: str
    overrides: list[str]


# -- the command line's words -> settings --------------------------------------------------------
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


def split_network_sets(items: Sequence[str]) -> dict[str, list[str]]:
    """``--set NAME:key=value`` values as ``{NAME: ["key=value", ...]}``, in the order given.

    The network is what comes before the first ``:`` of the key (a value may hold colons of its
    own, as ``data.root=/a:b`` does); whether the rest is a ``key=value`` the network may take is
    :func:`check_settings`' to say.
    """
    sets: dict[str, list[str]] = {}
    for item in items:
        network, colon, override = item.partition(":")
        if not colon or "=" in network or not network.strip():
            raise PixelwiseError(
                f"--set {item!r} names no network; write it as NAME:key=value for one network of "
                "--models (e.g. --set enet:optim.lr=5e-4), or give key=value without --set for all."
            )
        sets.setdefault(network.strip(), []).append(override)
    return sets


# -- settings -> one config per network ---------------------------------------------------------
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
    return load_config_data(file)


def network_config(
    name: str, settings: CompareSettings, base: dict[str, Any], iters: int
) -> NetworkPlan:
    """The config ``name`` trains with for ``iters`` iterations, and where its setting came from.

    In order: the shared base config (or the network's recipe), the network's builder options,
    ``--root``, the budget, the shared overrides, then the network's own (``--set``).
    """
    from pixelwise.tasks import task_class

    data = copy.deepcopy(base)
    source = "shared base config"
    base_model = data.get("model") or {}
    dataset = settings.dataset or (data.get("data") or {}).get("dataset", "shapes")
    recipe = RECIPES_DIR / f"{name}_{dataset}.yaml"
    if settings.recipes and recipe.is_file():
        data = load_config_data(recipe)
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
    options.update(settings.model_options.get(name, {}))
    data["model"]["options"] = options
    data["name"] = name
    if settings.root is not None:
        data.setdefault("data", {})["root"] = settings.root
    train = data.setdefault("train", {})
    if task_class(name).staged and train.get("classifier_iters"):
        source += " " + _scale_stages(train, iters)
    train.update(iters=iters, epochs=None, eval_every=iters)
    apply_overrides(data, list(settings.overrides), "pixelwise compare")
    own = list(settings.network_overrides.get(name, []))
    apply_overrides(data, own, f"--set {name}:...")
    return NetworkPlan(
        name, config_from_dict(data, f"the config of {name} ({source})"), source, own
    )


def seeded(plan: NetworkPlan, seed: int) -> NetworkPlan:
    """``plan`` trained with ``train.seed`` ``seed``: the same setting, another draw of the
    initial weights, batch order and augmentation."""
    data = plan.config.to_dict()
    data["train"]["seed"] = seed
    config = config_from_dict(data, f"the config of {plan.name} with seed {seed}")
    return NetworkPlan(plan.name, config, plan.source, list(plan.overrides))


def _scale_stages(train: dict[str, Any], iters: int) -> str:
    """Give a staged recipe's first stage its share of ``iters``; say what was done.

    A staged task's recipe trains its first stage (the classifier) for a part of its own
    ``train.iters`` (``train.classifier_iters``); under the comparison's budget the part keeps its
    share, and one iteration cannot be split (both stages train at once).
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


# -- checks -------------------------------------------------------------------------------------
def _refuse_reserved(item: str, given_as: str, whose: str) -> None:
    """Refuse an override that would undo what the comparison fixes for all: the one budget and
    the network each row trains. ``given_as`` is the value as the user wrote it, ``whose`` who
    would get a budget of their own."""
    key = item.split("=", 1)[0].strip()
    if key in BUDGET_KEYS:
        raise PixelwiseError(
            f"{given_as} would give {whose}; give the one budget of all with --iters N or "
            "--seconds S."
        )
    if key == "model.name":
        raise PixelwiseError(
            f"{given_as} would train another network than the one named; name the networks to "
            "compare with --models."
        )


def _check_network_overrides(settings: CompareSettings) -> None:
    for network, items in settings.network_overrides.items():
        for item in items:
            given = repr(f"{network}:{item}")
            if network not in settings.models:
                raise PixelwiseError(
                    f"--set {given} is for {network}, which is not in --models "
                    f"({', '.join(settings.models)}); add it to --models or drop the --set."
                )
            key, equals, _ = item.partition("=")
            if not equals:
                raise PixelwiseError(
                    f"--set {given} has no '='; write it as NAME:key=value, e.g. "
                    f"--set {network}:optim.lr=5e-4."
                )
            if not key.strip():
                raise PixelwiseError(
                    f"--set {given} names no key; write it as NAME:key=value, e.g. "
                    f"--set {network}:optim.lr=5e-4."
                )
            _refuse_reserved(item, f"--set {given}", f"{network} a budget of its own")


def check_settings(settings: CompareSettings) -> None:
    """Refuse, before any work, a comparison that cannot be run as asked."""
    if settings.seeds < 1:
        raise PixelwiseError(f"--seeds {settings.seeds} must be at least 1.")
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
        for item in settings.overrides:
            _refuse_reserved(item, f"Override {item!r}", "the networks a budget of their own")
        names = settings.models
    else:
        names = settings.checkpoints
        if settings.seeds != 1:
            raise PixelwiseError(
                f"--seeds {settings.seeds} would change nothing: --checkpoints evaluates each "
                "checkpoint as trained once; train with --models to repeat each run over seeds."
            )
        given = [
            *settings.overrides,
            *(f"{n}.{k}=..." for n, o in settings.model_options.items() for k in o),
            *(f"--set {n}:{i}" for n, items in settings.network_overrides.items() for i in items),
        ]
        if given:
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
    _check_network_overrides(settings)
    if settings.rows < 1:
        raise PixelwiseError(f"--rows {settings.rows} must be at least 1.")


def _builder_options(name: str) -> str:
    """The registered builder's options with their defaults, as ``pixelwise models`` knows them."""
    from pixelwise.models import model_info

    parameters = inspect.signature(model_info(name).builder).parameters.values()
    shown = [
        f"{p.name}={p.default!r}"
        for p in parameters
        if p.name != "num_classes" and p.default is not inspect.Parameter.empty
    ]
    return ", ".join(shown) or "none"


def check_networks(
    names: Sequence[str], configs: Sequence[Config], given: Sequence[str] = ()
) -> None:
    """Refuse networks that cannot be scored on one setting, each with one sentence.

    A network whose task is not scored on the K-class map (``Task.scored_per_pixel``: an instance
    task's mask AP) cannot share the table; the semi-supervised ones (a combined map, a discriminator's classes) can. A
    network whose output is only the centre of its input (the built module's ``crops_output``)
    would be scored on fewer pixels than full-size networks; and the networks must be evaluated on
    the same images (``given``: the data keys the command sets for all, such as ``root`` or
    ``val_split``).
    """
    from pixelwise.models import build_model
    from pixelwise.tasks import task_class

    for name in names:
        task = task_class(name)  # an unknown name raises, listing the registered ones
        if not task.scored_per_pixel:
            raise PixelwiseError(
                f"{name} is a {task.name!r} network, scored by {task.score_name} rather than per "
                "pixel; pixelwise compare scores networks on one confusion matrix of the same "
                "pixels, so leave it out of --models."
            )
    crops = {}
    for name, cfg in zip(names, configs, strict=True):
        with torch.device("meta"):  # options are checked and the layout read; nothing allocated
            model = build_model(name, 2, **cfg.model.options)
        crops[name] = bool(getattr(model, "crops_output", False))
    cropping = [n for n in names if crops[n]]
    if cropping and len(cropping) < len(names):
        first = cropping[0]
        others = ", ".join(n for n in names if not crops[n])
        raise PixelwiseError(
            f"{first} as built predicts only the centre of its input (its output is smaller than "
            f"the input), so it cannot be scored on the same pixels as {others}; give it the "
            f"builder option that keeps the input's size ({first}.OPTION=VALUE; its options and "
            f"defaults: {_builder_options(first)}) or compare it only with networks that crop too."
        )
    _check_same_evaluation(names, [c.data for c in configs], given)


def _check_same_evaluation(
    names: Sequence[str], data: Sequence[DataConfig], given: Sequence[str]
) -> None:
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
