"""Checkpoints: written atomically, holding everything a resume needs to continue exactly."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pixelwise.errors import PixelwiseError

CHECKPOINT_VERSION = 1


def capture_rng() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to ``path.tmp`` then rename, so a crash mid-write never leaves a broken checkpoint."""
    payload = {"version": CHECKPOINT_VERSION, **payload}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PixelwiseError(f"Checkpoint {path} does not exist; pass the best.pt or last.pt of a run.")
    try:
        # RNG states hold numpy arrays, so the full unpickler is needed: load only files you trust.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types on a corrupt file
        raise PixelwiseError(f"Checkpoint {path} could not be read ({error}); it may be truncated.") from None
    if not isinstance(payload, dict) or "model" not in payload or "meta" not in payload:
        raise PixelwiseError(
            f"{path} is not a pixelwise checkpoint (no model/meta entries); pass a file written by "
            "`pixelwise train`."
        )
    return payload


def check_compatible(meta: dict[str, Any], model_name: str, num_classes: int, source: str) -> None:
    """A checkpoint for another model or class count fails loudly instead of loading partially."""
    if meta["model"] != model_name or meta["num_classes"] != num_classes:
        raise PixelwiseError(
            f"Checkpoint {source} holds {meta['model']} with {meta['num_classes']} classes, but the "
            f"config asks for {model_name} with {num_classes}; use a matching config or checkpoint."
        )
