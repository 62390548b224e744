"""Distributed set-up: join the ``torchrun`` process group, pick the device, unwrap DDP/compile.

Under ``torchrun`` (WORLD_SIZE > 1) each process joins the group (nccl on GPUs, gloo on the CPU)
and uses the GPU of its LOCAL_RANK; otherwise everything runs in one process.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from pixelwise.errors import PixelwiseError

T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # init_distributed joined the group here (so this process leaves it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> DistInfo:
    """Join the process group when started by ``torchrun`` (WORLD_SIZE > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if device_name != "cpu" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, owns_group=owns)


def main_first(make: Callable[[], T]) -> T:
    """``make()`` on rank 0 first, then on the other ranks, which find its files made.

    For work that writes one shared file (a zoo download and its conversion): every rank calling
    it at once would write the same ``.part`` together. Rank 0's failure is raised on every rank
    (on the others as a PixelwiseError with its message), so that no rank waits for a file that
    will not come.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return make()
    outcome: list[object] = [None]
    if dist.get_rank() == 0:
        try:
            result = make()
        except Exception as error:  # any failure: the other ranks must not wait on
            outcome[0] = str(error)
            dist.broadcast_object_list(outcome, src=0)
            raise
        dist.broadcast_object_list(outcome, src=0)
        return result
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise PixelwiseError(str(outcome[0]))
    return make()


def leave_process_group() -> None:
    """Destroy the default process group now, while the interpreter is fully alive.

    Gloo runs each collective on a worker thread, which lets go of the collective's tensors only
    after the caller was told that it finished, and letting go of a tensor Python made takes the
    GIL. A process that exits right after its last collective can start shutting the interpreter
    down first; the worker thread then dies taking the GIL: ``terminate called without an active
    exception`` (SIGABRT) or a segfault in the last garbage collection, now and then, on a busy
    machine (the DDP tests failed about one run in four so). The group's destructor waits for its
    worker threads, but it runs only when nothing holds the group any more: DistributedDataParallel
    does (its holder lets go of it first), and its reference cycles go only with a collection.
    """
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
        gc.collect()


def resolve_device(name: str, info: DistInfo, option: str = "train.device") -> torch.device:
    """The torch device ``name`` means here (``auto``: CUDA when visible, else the CPU).

    Args:
        name: auto, cpu, cuda or cuda:N, as the user wrote it.
        info: the process group; under it ``cuda`` is the GPU of this process's local rank.
        option: where the user wrote ``name`` (``train.device``, ``--device``), for the message.

    Raises:
        PixelwiseError: for CUDA on a machine without it, or a name torch does not know.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PixelwiseError(
                f"{option} is {name!r} but no CUDA device is visible; use cpu or auto."
            )
        if info.world_size > 1:
            return torch.device("cuda", info.local_rank)
    try:
        return torch.device(name)
    except RuntimeError:
        raise PixelwiseError(
            f"Device {name!r} is not one torch knows; set {option} to auto, cpu, cuda or cuda:N."
        ) from None


def unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
