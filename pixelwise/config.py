"""Typed run configuration: dataclasses loaded from YAML and overridden with ``key=value``.

The schema is documented field by field in docs/config-schema.md. Every key is checked: an unknown
one is an error that lists the valid keys of its section, so a typo never silently does nothing.
A file may extend others (``base: other.yaml``): they are loaded first and its sections merged over
them (``load_config``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from pixelwise.errors import PixelwiseError
from pixelwise.outputs import write_text
from pixelwise.values import TypeMismatch, coerce, describe


@dataclass
class ModelConfig:
    name: str = "unet"
    num_classes: int | None = None
    weights_backbone: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # A pixelwise checkpoint (a trained run's best.pt/last.pt, or `pixelwise convert`'s output)
    # whose network weights start this run: fine-tuning. Optimizer, schedule and step start afresh.
    init: str | None = field(default=None, metadata={"example": "runs/enet_camvid/best.pt"})
    # A zoo name (docs/model-zoo.md): the run starts from the authors' released weights, fetched
    # and converted once into torch's hub folder, then loaded as `init` loads its checkpoint.
    weights: str | None = field(default=None, metadata={"example": "pspnet50-ade20k"})


@dataclass
class DataConfig:
    dataset: str = "shapes"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    val_options: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] | None = field(default=None, metadata={"length": 2, "example": [512, 512]})
    resize: list[int] | None = field(default=None, metadata={"length": 2, "example": [360, 480]})
    # Scores at each label's own size (the papers' protocol), or at the size after resize.
    score_at: str = "label"
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0], metadata={"length": 2})
    hflip: bool = True
    color_jitter: float = 0.0
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406], metadata={"length": 3})
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225], metadata={"length": 3})
    batch_size: int = 8
    val_batch_size: int = 8
    num_workers: int = 2
    # Semi-supervised runs keep the pixel labels of a seeded part of the training split only
    # (pixelwise/data/subset.py); at most one of the two may be set.
    labeled_fraction: float | None = field(default=None, metadata={"example": 0.125})
    labeled_per_class: int | None = field(default=None, metadata={"example": 25})
    labeled_list: str | None = field(default=None, metadata={"example": "labeled.txt"})

    def split_options(self, split: str) -> dict[str, Any]:
        """The dataset options ``split`` is read with: ``options``, updated by ``val_options``
        for every split but the training one."""
        if split == self.train_split:
            return dict(self.options)
        return {**self.options, **self.val_options}


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata={"length": 2})
    alpha: float = 0.99
    eps: float = 1e-8
    # Caffe's lr_mult / decay_mult: rules {params: bias | norm | NAME_PATTERN, lr_mult, decay_mult};
    # a parameter takes the first rule it matches (pixelwise/engine/schedule.py).
    param_groups: list[dict[str, Any]] = field(
        default_factory=list,
        metadata={"example": [{"params": "bias", "lr_mult": 2, "decay_mult": 0}]},
    )


@dataclass
class ScheduleConfig:
    name: str = "poly"
    power: float = 0.9
    step_size: int = 30
    # multistep: multiply by gamma at each of these (in units), e.g. torchvision's detection
    # recipe's epochs 16 and 22.
    milestones: list[int] = field(default_factory=list, metadata={"example": [16, 22]})
    gamma: float = 0.1
    unit: Literal["epoch", "iter"] = "epoch"
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    min_lr: float = 0.0


@dataclass
class LossConfig:
    name: str = "ce"
    class_weights: str | list[float] | None = field(
        default=None, metadata={"example": "median_frequency"}
    )
    top_k: int = 512
    aux_weights: list[float] = field(default_factory=list)
    # A class-weighted average divided by the summed weights (PyTorch, torch7) or by the number of
    # counted pixels (Caffe's SoftmaxWithLoss); pixelwise/losses.py says why it matters.
    normalize: str = "weights"


@dataclass
class TrainConfig:
    epochs: int | None = field(default=None, metadata={"example": 100})
    iters: int | None = field(default=None, metadata={"example": 10000})
    eval_every: int = 1
    log_every: int = 10
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    out_dir: str = "runs"
    vis_samples: int = 4
    sync_bn: bool = False
    # Skip a batch whose loss or gradients are inf/NaN (no update) instead of stopping the run.
    skip_nonfinite: bool = False
    # DecoupledNet only: the first N iterations train the classifier alone, the rest the
    # segmentation stage with the classifier frozen (the release's two runs; the schedule starts
    # again at N). 0 trains both at once.
    classifier_iters: int = 0


@dataclass
class Config:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_CHOICES = {
    ("optim", "name"): ("sgd", "adam", "adamw", "rmsprop"),
    ("schedule", "name"): ("poly", "step", "multistep", "cosine", "exponential", "constant"),
    ("loss", "name"): ("ce", "bootstrap_ce"),
    ("loss", "normalize"): ("weights", "valid"),
    ("data", "score_at"): ("label", "input"),
}


# Smallest sensible values; a list's every element is held to its bound.
_AT_LEAST = {
    ("data", "crop_size"): 1,
    ("data", "resize"): 1,
    ("data", "color_jitter"): 0,
    ("data", "batch_size"): 1,
    ("data", "val_batch_size"): 1,
    ("data", "num_workers"): 0,
    ("optim", "weight_decay"): 0,
    ("schedule", "step_size"): 1,
    ("schedule", "milestones"): 1,
    ("schedule", "warmup_iters"): 0,
    ("loss", "top_k"): 1,
    ("train", "classifier_iters"): 0,
    ("train", "epochs"): 1,
    ("train", "iters"): 1,
    ("train", "eval_every"): 1,
    ("train", "log_every"): 1,
    ("train", "vis_samples"): 0,
}


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a :class:`Config`, rejecting unknown keys and values of the wrong type."""
    config = _build(Config, data or {}, source, prefix="")
    validate(config, source)
    return config


def _build(cls: type, data: Any, source: str, prefix: str):
    if not isinstance(data, dict):
        raise PixelwiseError(
            f"{source}: {prefix or 'the top level'} must be a mapping, got {data!r}."
        )
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise PixelwiseError(
            f"{source}: unknown key '{prefix}{unknown[0]}' in {where}; valid keys: {', '.join(fields)}."
        )
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, source, f"{prefix}{name}.")
        else:
            length = fields[name].metadata.get("length")
            values[name] = _check_type(value, hint, f"{prefix}{name}", source, length, fields[name])
    return cls(**values)


def _check_type(
    value: Any,
    hint: Any,
    key: str,
    source: str,
    length: int | None = None,
    spec: dataclasses.Field | None = None,
) -> Any:
    """Return ``value`` converted to ``hint`` (an int or ``1e-3`` where a float is expected).

    Raises:
        PixelwiseError: one sentence naming the key, the value, the expected type and an example.
    """
    try:
        return coerce(value, hint, length)
    except TypeMismatch:
        example = _example(hint, length, spec)
        raise PixelwiseError(
            f"{source}: {key} is {_show(value)} but must be {describe(hint, length)}; "
            f"write it like {key}={example}."
        ) from None


def _example(hint: Any, length: int | None, spec: dataclasses.Field | None) -> str:
    """A valid value in the YAML spelling: the field's default when it has one, else a made-up one."""
    default = None
    if spec is not None:
        default = spec.metadata.get("example")
        if default is None and spec.default is not dataclasses.MISSING:
            default = spec.default
        elif default is None and spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
    if default is None or default == [] or default == {}:
        default = _made_up(hint, length)
    return _show(default).strip("'")


def _made_up(hint: Any, length: int | None) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return _made_up(next(a for a in args if a is not type(None)), length)
    if origin is Literal:
        return args[0]
    if origin in (list, tuple):
        item = _made_up(args[0] if args else float, None)
        return [item] * (length or 2)
    if origin is dict or hint is dict:
        return {"name": "value"}
    return {bool: True, int: 2, float: 0.5, str: "name"}.get(hint, "value")


def _show(value: Any) -> str:
    """The refused value as the user wrote it (YAML), not as Python's repr."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    text = text.removesuffix("...").strip()
    return f"{text!r}" if isinstance(value, str) else text


def check_run_name(name: str, source: str) -> None:
    """A run name is one folder name under ``train.out_dir``: a separator or ``..`` would put the
    run folder (and everything it writes) somewhere else, so they are refused."""
    bad = (
        not name.strip()
        or name in (".", "..")
        or any(c in name for c in "/\\\0")
        or name != name.strip()
    )
    if bad:
        raise PixelwiseError(
            f"{source}: name is {name!r}; a run name is one folder name inside train.out_dir "
            "(no '/', '\\', '..', surrounding spaces, and not empty), e.g. name: unet_camvid."
        )


def validate(config: Config, source: str) -> None:
    check_run_name(config.name, source)
    _check_start_weights(config.model, source)
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in choices:
            raise PixelwiseError(
                f"{source}: {section}.{key} is {value!r}; choose one of {', '.join(choices)}."
            )
    for (section, key), low in _AT_LEAST.items():
        value = getattr(getattr(config, section), key)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item < low:
                raise PixelwiseError(
                    f"{source}: {section}.{key} is {_show(value)}; it must be at least {low}."
                )
    lr = config.optim.lr
    # 0 would train nothing for the whole run, below 0 climb the loss; the type check already
    # refused NaN and infinities, isfinite keeps this sentence true if that ever changes.
    if not (math.isfinite(lr) and lr > 0):
        raise PixelwiseError(
            f"{source}: optim.lr is {_show(lr)}; it must be a number above 0, e.g. optim.lr=0.01."
        )
    if any(s == 0 for s in config.data.std):
        raise PixelwiseError(
            f"{source}: data.std is {_show(config.data.std)}; no channel may have std 0; "
            "use e.g. [0.229, 0.224, 0.225]."
        )
    low, high = config.data.scale_range
    if not 0 < low <= high:
        raise PixelwiseError(
            f"{source}: data.scale_range is {_show(config.data.scale_range)}; "
            "write [low, high] with 0 < low <= high, e.g. [0.5, 2.0]."
        )
    fraction = config.data.labeled_fraction
    if fraction is not None and not 0 < fraction <= 1:
        raise PixelwiseError(
            f"{source}: data.labeled_fraction is {_show(fraction)}; it must lie in (0, 1], "
            "e.g. 0.125 to keep the pixel labels of an eighth of the training split."
        )
    per_class = config.data.labeled_per_class
    if per_class is not None and per_class < 1:
        raise PixelwiseError(
            f"{source}: data.labeled_per_class is {_show(per_class)}; it must be at least 1, "
            "e.g. 25 to keep the pixel labels of 25 images of each class (DecoupledNet's setting)."
        )
    modes = [
        f"data.{key}"
        for key in ("labeled_fraction", "labeled_per_class", "labeled_list")
        if getattr(config.data, key) is not None
    ]
    if len(modes) > 1:
        raise PixelwiseError(
            f"{source}: {' and '.join(modes)} are {'both' if len(modes) == 2 else 'all'} set; "
            "keep one (a fraction draws the "
            "labelled images, a count per class draws that many of each class, a list names them)."
        )
    _check_param_groups(config.optim.param_groups, source)
    train = config.train
    if (train.epochs is None) == (train.iters is None):
        raise PixelwiseError(
            f"{source}: set exactly one of train.epochs and train.iters "
            f"(got epochs={train.epochs}, iters={train.iters})."
        )
    weights = config.loss.class_weights
    if isinstance(weights, str) and weights not in ("median_frequency", "enet"):
        raise PixelwiseError(
            f"{source}: loss.class_weights is {weights!r}; use null, median_frequency, enet or a list."
        )


def _check_start_weights(model: ModelConfig, source: str) -> None:
    """model.weights names a zoo release, and at most one of model.init and model.weights is set
    (both would start the same network from two different sets of weights)."""
    if model.weights is None:
        return
    if model.init is not None:
        raise PixelwiseError(
            f"{source}: model.init and model.weights are both set; keep one (model.init starts "
            "from a pixelwise checkpoint, model.weights from a zoo release)."
        )
    from pixelwise.convert.zoo import get_release  # here: loading a config stays light

    get_release(model.weights, flag=f"{source}: model.weights")


_RULE_KEYS = ("params", "lr_mult", "decay_mult")


def _check_param_groups(rules: list[dict[str, Any]], source: str) -> None:
    """Each rule of ``optim.param_groups`` names its parameters and multiplies by numbers >= 0."""
    example = "e.g. {params: bias, lr_mult: 2, decay_mult: 0}"
    for index, rule in enumerate(rules):
        where = f"{source}: optim.param_groups[{index}]"
        unknown = sorted(set(rule) - set(_RULE_KEYS))
        if unknown:
            raise PixelwiseError(
                f"{where} has {', '.join(unknown)}; a rule takes {', '.join(_RULE_KEYS)}, {example}."
            )
        if not isinstance(rule.get("params"), str) or not rule["params"].strip():
            raise PixelwiseError(
                f"{where}: params is {_show(rule.get('params'))}; name the parameters: bias, norm "
                f"or a pattern of parameter names such as 'backbone.*', {example}."
            )
        for key in ("lr_mult", "decay_mult"):
            value = rule.get(key, 1.0)
            bad = isinstance(value, bool) or not isinstance(value, int | float)
            if bad or not (math.isfinite(value) and value >= 0):
                raise PixelwiseError(
                    f"{where}: {key} is {_show(value)}; it must be a number of at least 0, {example}."
                )


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, its bases merged under it, and apply ``key=value`` overrides (values
    parsed as YAML) last."""
    path = Path(path)
    data, bases = _read_with_bases(path, ())
    apply_overrides(data, overrides or [], str(path))
    _one_length(data, _override_keys(overrides or []))
    return config_from_dict(data, _describe_source(path, bases))


def load_config_data(path: str | Path) -> dict[str, Any]:
    """The mapping a YAML config holds, with the files its ``base:`` names merged under it.

    Every base file's keys and types are checked on their own (an error names that file); the
    merged mapping is what :func:`config_from_dict` takes, and it has no ``base`` key.
    """
    return _read_with_bases(Path(path), ())[0]


def _read_with_bases(path: Path, chain: tuple[Path, ...]) -> tuple[dict[str, Any], list[Path]]:
    """``path``'s mapping over its bases (each read the same way, recursively) and the base files
    read, in the order they were merged; ``chain`` is the files whose bases led here.

    A base is loaded first, then each later base and finally ``path``'s own sections are merged
    over it: mappings key by key, lists and scalars replaced. ``path`` setting one run length
    (``train.iters``) clears its bases' other one, as an override does.
    """
    data = _read_mapping(path, chain[-1] if chain else None)
    names = _base_names(data.pop("base", None), path)
    if not names:
        return data, []
    merged: dict[str, Any] = {}
    read: list[Path] = []
    for name in names:
        base = Path(os.path.normpath(path.parent / name))
        if not base.is_file():
            raise PixelwiseError(
                f"Config file {path} names base {name!r}, but {base} does not exist; fix the "
                "path in its base: key (it is relative to the folder of the file that names it)."
            )
        if base.resolve() in {p.resolve() for p in (*chain, path)}:
            loop = " -> ".join(str(p) for p in (*chain, path, base))
            raise PixelwiseError(
                f"Config file {path} names base {name!r}, which is already in its chain of bases "
                f"({loop}); remove one of these base: keys so that no file is its own base."
            )
        base_data, base_read = _read_with_bases(base, (*chain, path))
        # Checked here, on its own, so that a wrong key or type names the file that holds it.
        _build(Config, copy.deepcopy(base_data), str(base), prefix="")
        merged = _merge(merged, base_data)
        _one_length(merged, _train_keys(base_data))
        read += [*base_read, base]
    merged = _merge(merged, data)
    _one_length(merged, _train_keys(data))
    return merged, read


def _read_mapping(path: Path, named_by: Path | None = None) -> dict[str, Any]:
    """The YAML mapping in ``path``, refused in one sentence when the file is missing, is not
    YAML or holds something other than a mapping; ``named_by`` is the file whose base it is."""
    if not path.is_file():
        raise PixelwiseError(f"Config file {path} does not exist; see configs/ for the recipes.")
    name = f"Config file {path}" + (f" (the base of {named_by})" if named_by else "")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        # PyYAML's own text spans several lines with a drawing of the spot; keep one sentence.
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise PixelwiseError(
            f"{name} is not valid YAML{where} ({problem}); fix the syntax there."
        ) from None
    if not isinstance(data, dict):
        raise PixelwiseError(f"{name} must hold a mapping of sections, got {_show(data)}.")
    return data


def _base_names(value: Any, path: Path) -> list[str]:
    """The files a config's ``base:`` names: one path or a list of paths (null for none)."""
    if value is None:
        return []
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise PixelwiseError(
            f"Config file {path}: base is {_show(value)} but must be a file name or a list of "
            "them, relative to this file's folder; write it like base: fcdensenet56_camvid.yaml."
        )
    return names


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings key by key, anything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _describe_source(path: Path, bases: list[Path]) -> str:
    """How an error in the merged config names where it came from."""
    if not bases:
        return str(path)
    which = "base" if len(bases) == 1 else "bases"
    return f"{path} (with its {which} {', '.join(str(b) for b in bases)})"


def _override_keys(overrides: list[str]) -> set[str]:
    return {item.split("=", 1)[0].strip() for item in overrides if "=" in item}


def _train_keys(data: dict[str, Any]) -> set[str]:
    """The dotted ``train.*`` keys a config file sets itself."""
    train = data.get("train")
    return {f"train.{key}" for key in train} if isinstance(train, dict) else set()


def _one_length(data: dict[str, Any], keys: set[str]) -> None:
    """Setting one run length over a recipe that has the other clears the other
    (``train.iters=300`` on an epochs recipe trains 300 iterations): ``keys`` are the dotted keys
    set, by command-line overrides or by a config file over its base. The recipe's ``eval_every``
    counted the other unit, so unless it was set too it becomes ten validations over the new
    length."""
    train = data.get("train")
    if not isinstance(train, dict):
        return
    for given, other in (("iters", "epochs"), ("epochs", "iters")):
        switched = (
            f"train.{given}" in keys
            and f"train.{other}" not in keys
            and train.get(given) is not None
            and train.get(other) is not None
        )
        if not switched:
            continue
        train[other] = None
        if "train.eval_every" not in keys and isinstance(train[given], int):
            train["eval_every"] = max(1, train[given] // 10)


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str) -> None:
    """Set dotted keys in ``data`` from ``["optim.lr=0.01", ...]``; validation happens after."""
    for item in overrides:
        if "=" not in item:
            raise PixelwiseError(
                f"Override {item!r} has no '='; write overrides as key=value, e.g. optim.lr=0.01."
            )
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PixelwiseError(f"Override {item!r}: {part} is not a section.")
        node[parts[-1]] = value


def dump_config(config: Config, path: Path) -> None:
    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
