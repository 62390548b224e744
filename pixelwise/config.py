"""Typed run configuration: dataclasses loaded from YAML and overridden with ``key=value``.

The schema is documented field by field in docs/config-schema.md. Every key is checked: an unknown
one is an error that lists the valid keys of its section, so a typo never silently does nothing.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from pixelwise.errors import PixelwiseError


@dataclass
class ModelConfig:
    name: str = "unet"
    num_classes: int | None = None
    weights_backbone: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = "shapes"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    val_options: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] | None = None
    resize: list[int] | None = None
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0])
    hflip: bool = True
    color_jitter: float = 0.0
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    batch_size: int = 8
    val_batch_size: int = 8
    num_workers: int = 2


@dataclass
class OptimConfig:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    alpha: float = 0.99
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    name: str = "poly"
    power: float = 0.9
    step_size: int = 30
    gamma: float = 0.1
    unit: str = "epoch"
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    min_lr: float = 0.0


@dataclass
class LossConfig:
    name: str = "ce"
    class_weights: str | list[float] | None = None
    top_k: int = 512
    aux_weights: list[float] = field(default_factory=list)


@dataclass
class TrainConfig:
    epochs: int | None = None
    iters: int | None = None
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
    ("schedule", "name"): ("poly", "step", "cosine", "exponential", "constant"),
    ("schedule", "unit"): ("epoch", "iter"),
    ("loss", "name"): ("ce", "bootstrap_ce"),
}


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    """Build a :class:`Config`, rejecting unknown keys and values of the wrong type."""
    config = _build(Config, data or {}, source, prefix="")
    validate(config, source)
    return config


def _build(cls: type, data: Any, source: str, prefix: str):
    if not isinstance(data, dict):
        raise PixelwiseError(f"{source}: {prefix or 'the top level'} must be a mapping, got {data!r}.")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise PixelwiseError(
            f"{source}: unknown key '{prefix}{unknown[0]}' in {where}; valid keys: {', '.join(names)}."
        )
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, source, f"{prefix}{name}.")
        else:
            values[name] = _check_type(value, hint, f"{prefix}{name}", source)
    return cls(**values)


def _check_type(value: Any, hint: Any, key: str, source: str) -> Any:
    """Accept YAML's natural spellings (an int where a float is expected); reject the rest."""
    text = str(hint)
    if value is None:
        if "None" in text or "Any" in text:
            return None
        raise PixelwiseError(f"{source}: {key} must not be null.")
    if hint is bool and not isinstance(value, bool):
        raise PixelwiseError(f"{source}: {key} must be true or false, got {value!r}.")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise PixelwiseError(f"{source}: {key} must be an integer, got {value!r}.")
    if hint is str and not isinstance(value, str):
        raise PixelwiseError(f"{source}: {key} must be a string, got {value!r}.")
    if text.startswith("list") and not isinstance(value, list):
        raise PixelwiseError(f"{source}: {key} must be a list, got {value!r}.")
    return value


def validate(config: Config, source: str) -> None:
    for (section, key), choices in _CHOICES.items():
        value = getattr(getattr(config, section), key)
        if value not in choices:
            raise PixelwiseError(
                f"{source}: {section}.{key} is {value!r}; choose one of {', '.join(choices)}."
            )
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


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config and apply ``key=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.is_file():
        raise PixelwiseError(f"Config file {path} does not exist; see configs/ for the recipes.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise PixelwiseError(f"Config file {path} is not valid YAML: {error}") from None
    apply_overrides(data, overrides or [], str(path))
    return config_from_dict(data, str(path))


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
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
