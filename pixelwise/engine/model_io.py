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
from pixelwise.models import build_model
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


def model_from_meta(
    meta: dict[str, Any], weights: dict[str, torch.Tensor], source: str
) -> nn.Module:
    """Build the network a checkpoint's meta names and load its weights strictly.

    Raises:
        PixelwiseError: when the weights do not fit that network (another model or class count).
    """
    model = build_model(meta["model"], meta["num_classes"], **meta.get("model_options", {}))
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        lines = str(error).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(error)
        raise PixelwiseError(
            f"Checkpoint {source}: its weights do not fit the {meta['model']} its meta names "
            f"({first[:160]}); use a checkpoint written by `pixelwise train`."
        ) from None
    return model


def load_model(checkpoint: str | Path, device: str | torch.device = "auto") -> LoadedModel:
    """Read ``checkpoint`` (data only, never code) and return its network ready for inference."""
    source = str(checkpoint)
    payload = load_checkpoint(checkpoint)
    if isinstance(device, str):
        device = resolve_device(device, DistInfo())
    meta = payload["meta"]
    model = model_from_meta(meta, payload["model"], source)
    model.to(device).eval()
    config = config_from_dict(payload["config"], source)
    task = build_task(
        config, meta["num_classes"], meta["classes"], meta["palette"],
        category_ids=meta.get("category_ids", ()),
    )  # fmt: skip
    precision = decide_precision(config.train.amp, device)
    channels_last = bool(config.train.channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return LoadedModel(model, meta, config, device, source, task, precision, channels_last)
