"""One way to get a model back from a checkpoint, for eval, predict, compare, export, bench and
notebooks: the network, its task (what it predicts, how its images are preprocessed, what it
writes) and the precision its forwards run in, built once.

>>> loaded = load_model("runs/demo/best.pt")
>>> loaded.model, loaded.task.classes, loaded.config.data.resize, loaded.precision.name
>>> loaded.write_prediction(read_image("photo.jpg"), [Path("photo_label.png"), ...])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelwise.config import Config, config_from_dict
from pixelwise.engine.checkpoint import load_checkpoint
from pixelwise.engine.distributed import DistInfo, resolve_device
from pixelwise.engine.precision import Precision, decide_precision
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model, list_models
from pixelwise.models.registry import MODELS, option_problem
from pixelwise.tasks import build_task
from pixelwise.tasks.base import Inference, PredictSettings, Task


@dataclass
class LoadedModel:
    """A checkpoint's network in eval mode on ``device``, with what was saved beside it.

    Attributes:
        model: the network, eval mode, weights loaded strictly.
        meta: the checkpoint's meta (model name, classes, palette, mean, std, model options, run).
        config: the run's configuration (data.resize, splits, dataset options ...).
        device: where the model lives.
        source: the checkpoint path, for messages.
        task: the network's task, which preprocesses, predicts, scores and writes.
        precision: the run's ``train.amp`` as decided on ``device``: the precision the run's
            validation scored in, so an evaluation here scores what training reported.
        channels_last: the run's ``train.channels_last``: the model and its inputs in the memory
            layout its validation used (under bf16 the layout changes the rounding).
    """

    model: nn.Module
    meta: dict[str, Any]
    config: Config
    device: torch.device
    source: str
    task: Task
    precision: Precision
    channels_last: bool = False

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def palette(self) -> list[list[int]]:
        return [list(c) for c in self.meta["palette"]]

    @property
    def preprocessing(self) -> dict[str, Any]:
        """What the task does to an image before the network (``resize``, ``mean``, ``std``)."""
        return self.task.preprocessing()

    @property
    def name(self) -> str:
        """The registered network's name."""
        return str(self.meta["model"])

    @property
    def inference(self) -> Inference:
        """The network, its device and precision: what a task predicts with."""
        return Inference(self.model, self.device, self.precision, self.channels_last)

    def write_prediction(
        self, image: torch.Tensor, paths: Sequence[Path], settings: PredictSettings | None = None
    ) -> None:
        """Predict the uint8 3×H×W ``image`` and write the task's files to ``paths``
        (``task.prediction_files(stem)`` in ``--out``)."""
        self.task.write_prediction(self.inference, image, paths, settings or PredictSettings())


# Class ids share 8-bit label maps with 255 = ignore (data/base.py), and predictions are palette
# PNGs of 256 colours: no network here can predict more than 255 classes.
MAX_CLASSES = 255
# Builder options naming pretrained weights: the checkpoint's own weights replace them, and
# honouring them would read another file or download one because a checkpoint said so.
_PRETRAINED_OPTIONS = ("weights", "weights_backbone")


def checked_meta(meta: dict[str, Any], source: str) -> dict[str, Any]:
    """The builder options of a checkpoint's meta, after every value the meta holds was checked
    like a config value: a registered network, a class count within 1..255 with as many class
    names and palette colours, options the builder takes with values of its types.

    Raises:
        PixelwiseError: one sentence naming the checkpoint, the value and the fix.
    """
    fix = "use a checkpoint written by `pixelwise train`"
    name, num_classes = meta["model"], meta["num_classes"]
    if name not in MODELS:
        raise PixelwiseError(
            f"Checkpoint {source} holds a network named {name!r}, which this pixelwise does not "
            f"have (it has {', '.join(list_models())}); {fix}, or the pixelwise that wrote it."
        )
    if isinstance(num_classes, bool) or not 1 <= num_classes <= MAX_CLASSES:
        raise PixelwiseError(
            f"Checkpoint {source}: its meta's num_classes is {num_classes!r}, but a network here "
            f"predicts 1 to {MAX_CLASSES} classes (255 is the ignore label); {fix}."
        )
    classes, palette = meta.get("classes"), meta.get("palette")
    if not _is_list(classes, num_classes, lambda c: isinstance(c, str)):
        raise PixelwiseError(
            f"Checkpoint {source}: its meta's classes are {_brief(classes)}, not {num_classes} "
            f"class names; {fix}."
        )
    if not _is_list(palette, num_classes, _is_colour):
        raise PixelwiseError(
            f"Checkpoint {source}: its meta's palette is {_brief(palette)}, not {num_classes} "
            f"colours [r, g, b] of 0..255; {fix}."
        )
    ids = meta.get("category_ids", [])
    if not _is_list(ids, None, lambda i: isinstance(i, int) and not isinstance(i, bool)):
        raise PixelwiseError(
            f"Checkpoint {source}: its meta's category_ids are {_brief(ids)}, not a list of "
            f"integers; {fix}."
        )
    options = meta.get("model_options", {})
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise PixelwiseError(
            f"Checkpoint {source}: its meta's model_options are {_brief(options)}, not a "
            f"mapping of option names to values; {fix}."
        )
    options = {k: v for k, v in options.items() if k not in _PRETRAINED_OPTIONS}
    problem = option_problem(name, options)
    if problem is not None:
        raise PixelwiseError(
            f"Checkpoint {source}: its meta builds {name} with {options}, but {name} {problem}; "
            f"{fix}."
        )
    return options


def _is_list(value: Any, length: int | None, item: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and (length is None or len(value) == length)
        and all(item(v) for v in value)
    )


def _is_colour(value: Any) -> bool:
    return _is_list(value, 3, lambda v: isinstance(v, int) and not isinstance(v, bool)) and all(
        0 <= v <= 255 for v in value
    )


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def model_from_meta(
    meta: dict[str, Any], weights: dict[str, torch.Tensor], source: str
) -> nn.Module:
    """Build the network a checkpoint's meta names and load its weights strictly.

    The meta is checked first (:func:`checked_meta`), and the network is built on the meta device
    (shapes only, nothing allocated) and compared with the weights, name by name and shape by
    shape, before it is built for real: a meta that asks for a larger network than the
    checkpoint's own weights is refused, and the network built is then exactly as large as those
    weights, which are already in memory; no other ceiling is needed.

    Raises:
        PixelwiseError: when the meta does not check, or the weights do not fit that network
            (another model, class count or options).
    """
    name, num_classes = meta["model"], meta["num_classes"]
    options = checked_meta(meta, source)
    try:
        with torch.device("meta"):
            shape_only = build_model(name, num_classes, **options)
    except PixelwiseError:
        raise
    except Exception as error:  # the builder's own refusal of a value (a negative width ...)
        reason = " ".join(str(error).split())[:160]
        raise PixelwiseError(
            f"Checkpoint {source}: its meta's options {options} do not build a {name} "
            f"({reason}); use a checkpoint written by `pixelwise train`."
        ) from None
    expected = shape_only.state_dict()
    difference = _difference(expected, weights)
    if difference is not None:
        needed = sum(t.numel() for t in [*shape_only.parameters(), *shape_only.buffers()])
        held = sum(t.numel() for t in weights.values())
        # A network several times its weights: the meta's size is the news, not the first key.
        if needed > 2 * held and expected.keys() == weights.keys():
            raise PixelwiseError(
                f"Checkpoint {source}: its meta builds {name} with {num_classes} classes and "
                f"options {options}, a network of {needed:,} values ({_gib(needed * 4)} in "
                f"float32), but its weights hold {held:,} ({difference}); the meta was changed "
                "or belongs to another file, so use a checkpoint written by `pixelwise train`."
            )
        raise PixelwiseError(
            f"Checkpoint {source}: its weights do not fit the {name} its meta names "
            f"({difference}); use a checkpoint written by `pixelwise train`."
        )
    del shape_only
    model = build_model(name, num_classes, **options)
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:  # a dtype or a storage the shapes above do not show
        lines = str(error).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(error)
        raise PixelwiseError(
            f"Checkpoint {source}: its weights do not fit the {name} its meta names "
            f"({first[:160]}); use a checkpoint written by `pixelwise train`."
        ) from None
    return model


def _difference(expected: dict[str, torch.Tensor], weights: dict[str, torch.Tensor]) -> str | None:
    """The first way ``weights`` differ from the network's ``expected`` state, in words."""
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    for keys, word in ((missing, "missing"), (unexpected, "unexpected")):
        if keys:
            more = f" and {len(keys) - 1} more" if len(keys) > 1 else ""
            return f"{word} {keys[0]}{more}"
    for key, tensor in expected.items():
        if tensor.shape != weights[key].shape:
            return (
                f"{key} is {list(weights[key].shape)} in the checkpoint but "
                f"{list(tensor.shape)} in the network"
            )
    return None


def _gib(count: int) -> str:
    return f"{count / 2**30:.3g} GiB"


def checked_config(payload: dict[str, Any], meta: dict[str, Any], source: str) -> Config:
    """The run's configuration saved in the checkpoint, checked as a YAML config is, and agreeing
    with the meta on the network (the task is looked up from the config's model name).

    Raises:
        PixelwiseError: one sentence naming the checkpoint, the key and the fix.
    """
    data = payload.get("config")
    if not isinstance(data, dict):
        raise PixelwiseError(
            f"Checkpoint {source} holds no run configuration (config is {_brief(data)}); use a "
            "checkpoint written by `pixelwise train`."
        )
    config = config_from_dict(data, source)
    declared = config.model.num_classes
    if config.model.name != meta["model"] or declared not in (None, meta["num_classes"]):
        count = "its dataset's" if declared is None else str(declared)
        raise PixelwiseError(
            f"Checkpoint {source}: its config names {config.model.name} with {count} classes but "
            f"its meta {meta['model']} with {meta['num_classes']}; the file was changed, so use a "
            "checkpoint written by `pixelwise train`."
        )
    return config


def load_model(
    checkpoint: str | Path, device: str | torch.device = "auto", *, device_option: str = "--device"
) -> LoadedModel:
    """Read ``checkpoint`` (data only, never code) and return its network ready for inference.

    Args:
        checkpoint: a ``best.pt`` or ``last.pt``.
        device: auto, cpu, cuda, cuda:N or a torch device.
        device_option: where the user wrote ``device``, named in the sentence that refuses it
            (the commands' ``--device``; ``train.device`` for a run's own).
    """
    source = str(checkpoint)
    payload = load_checkpoint(checkpoint)
    if isinstance(device, str):
        device = resolve_device(device, DistInfo(), device_option)
    meta = payload["meta"]
    checked_meta(meta, source)  # before the config is compared with it
    config = checked_config(payload, meta, source)
    model = model_from_meta(meta, payload["model"], source)
    model.to(device).eval()
    task = build_task(
        config, meta["num_classes"], meta["classes"], meta["palette"],
        category_ids=meta.get("category_ids", ()),
    )  # fmt: skip
    precision = decide_precision(config.train.amp, device)
    channels_last = bool(config.train.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return LoadedModel(model, meta, config, device, source, task, precision, channels_last)
