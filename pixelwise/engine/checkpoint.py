"""Checkpoints: plain data written durably, holding everything a resume needs to continue exactly.

A checkpoint holds only tensors and plain Python values (dict, list, tuple, str, int, float, bool,
None) and every load uses ``torch.load(weights_only=True)``, so a file from someone else can never
run code. Version 1 checkpoints kept numpy's RNG state as a numpy array; they are still read, with
exactly the three numpy globals that array needs allowed, and converted on restore.
"""

from __future__ import annotations

import pickle
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pixelwise.errors import PixelwiseError
from pixelwise.outputs import write_with

# 2: RNG states as tensors and plain values (loadable with weights_only=True); meta["run"].
CHECKPOINT_VERSION = 2


def _v1_numpy_globals() -> list[Any]:
    """What a version-1 checkpoint's numpy RNG state (a uint32 array) needs to unpickle, no more."""
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed np.core to np._core
    names = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    if hasattr(np, "dtypes"):  # numpy >= 1.25 pickles the dtype's class too
        names.append(np.dtypes.UInt32DType)
    return names


_V1_NUMPY_GLOBALS = _v1_numpy_globals()


def capture_rng() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) RNG states as tensors and plain values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {
            "version": version,
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng` captured; also reads version-1 states (tuples, numpy arrays)."""
    python = state["python"]
    if isinstance(python, dict):
        python = (
            python["version"],
            tuple(int(v) for v in python["state"].tolist()),
            python["gauss"],
        )
    random.setstate(python)
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Serialise in memory, then write beside ``path``, fsync, and rename over it
    (:func:`pixelwise.outputs.write_with`): a crash, a kill or a full disk leaves the old checkpoint
    or the new one, never a half-written file or a stray ``.tmp``."""
    payload = {"version": CHECKPOINT_VERSION, **payload}
    write_with(path, lambda buffer: torch.save(payload, buffer))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint as data only; anything that would run code is refused in one sentence."""
    path = Path(path)
    if path.is_dir():
        raise PixelwiseError(_folder_message(path))
    if not path.is_file():
        raise PixelwiseError(
            f"Checkpoint {path} does not exist; pass the best.pt or last.pt of a run."
        )
    try:
        # torch warns about a foreign pickle protocol before refusing it; the refusal below is
        # the one sentence the user gets.
        with warnings.catch_warnings(), torch.serialization.safe_globals(_V1_NUMPY_GLOBALS):
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = _foreign_globals(path)
        raise PixelwiseError(
            f"Checkpoint {path} holds Python objects that are not tensors or plain values "
            f"({names}), and pixelwise never runs code from a checkpoint; use a file written by "
            "`pixelwise train`."
        ) from None
    except Exception as error:  # torch raises many types on a corrupt file
        reason = " ".join(str(error).split())[:200]
        raise PixelwiseError(
            f"Checkpoint {path} could not be read ({reason}); it may be truncated."
        ) from None
    if not _looks_like_a_checkpoint(payload):
        raise PixelwiseError(
            f"{path} is not a pixelwise checkpoint (no model weights and meta with model name and "
            "class count); pass a file written by `pixelwise train`."
        )
    bad = first_nonfinite(payload["model"])
    if bad is not None:
        # pixelwise before checkpoint version 2 saved last.pt after the loss went NaN.
        raise PixelwiseError(
            f"Checkpoint {path} holds non-finite weights ({bad}): it was saved after its run "
            "diverged; use the run's best.pt or an earlier checkpoint."
        )
    return payload


def _folder_message(folder: Path) -> str:
    """A run folder given as ``--checkpoint``: name the checkpoints inside it (best.pt first)."""
    what = {"best.pt": "the best validation score", "last.pt": "the last step"}
    inside = [f"{folder / name} ({why})" for name, why in what.items() if (folder / name).is_file()]
    if inside:
        return f"Checkpoint {folder} is a folder, not a file; pass {' or '.join(inside)}."
    others = sorted(p for p in folder.glob("*.pt") if p.is_file())
    fix = f"pass one of its .pt files, e.g. {others[0]}" if others else "pass a run's best.pt"
    return f"Checkpoint {folder} is a folder without best.pt or last.pt; {fix}."


def _looks_like_a_checkpoint(payload: Any) -> bool:
    if not isinstance(payload, dict):
        return False
    model, meta = payload.get("model"), payload.get("meta")
    return (
        isinstance(model, dict)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items())
        and isinstance(meta, dict)
        and isinstance(meta.get("model"), str)
        and isinstance(meta.get("num_classes"), int)
    )


def _foreign_globals(path: Path) -> str:
    """The globals a refused pickle names (read from its opcodes, nothing executed)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) file or a corrupt one: the names are a courtesy only
        return "unknown globals"
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _V1_NUMPY_GLOBALS}
    foreign = [n for n in names if n not in allowed]
    return ", ".join(foreign[:3]) or "unknown globals"


def all_finite(tensors: list[Tensor]) -> bool:
    """True when no floating-point tensor holds inf or NaN; one reduction per tensor, one sync."""
    floats = [t.detach() for t in tensors if t is not None and t.is_floating_point()]
    if not floats:
        return True
    # The max-abs norm propagates inf and NaN and, unlike a sum or L2 norm, never overflows.
    return bool(torch.stack(torch._foreach_norm(floats, float("inf"))).isfinite().all())


def first_nonfinite(state: dict[str, Tensor]) -> str | None:
    """The name of the first parameter or buffer holding inf or NaN, or None when all are finite."""
    if all_finite(list(state.values())):
        return None
    return next(
        k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())
    )


def check_compatible(meta: dict[str, Any], model_name: str, num_classes: int, source: str) -> None:
    """A checkpoint for another model or class count fails loudly instead of loading partially."""
    if meta["model"] != model_name or meta["num_classes"] != num_classes:
        raise PixelwiseError(
            f"Checkpoint {source} holds {meta['model']} with {meta['num_classes']} classes, but the "
            f"config asks for {model_name} with {num_classes}; use a matching config or checkpoint."
        )
