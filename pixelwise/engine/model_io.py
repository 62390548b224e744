"""One way to get a model back from a checkpoint, for eval, predict, compare, export and notebooks.

>>> loaded = load_model("runs/demo/best.pt")
>>> loaded.model, loaded.meta["classes"], loaded.config.data.resize
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pixelwise.config import Config, config_from_dict
from pixelwise.engine.checkpoint import load_checkpoint
from pixelwise.engine.distributed import DistInfo, resolve_device
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model


@dataclass
class LoadedModel:
    """A checkpoint's network in eval mode on ``device``, with what was saved beside it.

    Attributes:
        model: the network, eval mode, weights loaded strictly.
        meta: the checkpoint's meta (model name, classes, palette, mean, std, model options, run).
        config: the run's configuration (data.resize, splits, dataset options ...).
        device: where the model lives.
        source: the checkpoint path, for messages.
    """

    model: nn.Module
    meta: dict[str, Any]
    config: Config
    device: torch.device
    source: str

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def palette(self) -> list[list[int]]:
        return [list(c) for c in self.meta["palette"]]


def model_from_meta(meta: dict[str, Any], weights: dict[str, torch.Tensor], source: str) -> nn.Module:
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
    model = model_from_meta(payload["meta"], payload["model"], source)
    model.to(device).eval()
    config = config_from_dict(payload["config"], source)
    return LoadedModel(model, payload["meta"], config, device, source)
