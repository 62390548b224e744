"""The one place that decides mixed precision: autocast's dtype and whether gradients are scaled.

Every forward of pixelwise runs under a :class:`Precision`: a training step of any task, the
Trainer's validation, ``eval``, ``predict``, ``compare`` and ``bench``. It is decided once from
what was asked (``train.amp``, ``bench --amp``) and the device, by :func:`decide_precision`:

============  ======================  ==========================  ============================
device        asked                   autocast                    gradient scaling
============  ======================  ==========================  ============================
any           no                      none (float32)              none
cuda          yes                     float16                     GradScaler (every optimizer)
cpu           yes, native bf16        bfloat16                    none (bf16 keeps fp32's range)
cpu           yes, no native bf16     none (float32), said once   none
============  ======================  ==========================  ============================

On a CPU without native bfloat16 (AVX2 only) autocast falls back to reference kernels, ~10x
slower than float32, so it is left off there. ``PIXELWISE_CPU_BF16`` overrides the detection
(``1``: use bf16 as if native, ``0``: as if absent, unset or ``auto``: ask oneDNN): tests force each
path with it, so a suite behaves the same on every CPU.

A run's evaluation uses the run's precision: validation during training and a later
``pixelwise eval`` of its checkpoint on the same machine decide the same, so they score the same.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from pixelwise.errors import PixelwiseError

#: The environment variable that overrides the CPU's bfloat16 detection.
CPU_BF16_VARIABLE = "PIXELWISE_CPU_BF16"


@dataclass(frozen=True)
class Precision:
    """How forwards run on one device: ``dtype`` None is plain float32.

    Attributes:
        device_type: ``"cpu"`` or ``"cuda"`` (what :func:`torch.autocast` takes).
        dtype: the autocast dtype, or None for float32.
        asked: whether mixed precision was asked for (it may be off where it would be slower).
    """

    device_type: str
    dtype: torch.dtype | None = None
    asked: bool = False

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def scales_gradients(self) -> bool:
        """float16's range needs loss scaling; bfloat16 has float32's exponent and needs none."""
        return self.dtype == torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context every forward of this precision runs in."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A new GradScaler for one optimizer: enabled exactly where gradients are scaled."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scales_gradients)

    @property
    def name(self) -> str:
        """``float32``, ``bfloat16`` or ``float16``: what run.json records."""
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    @property
    def note(self) -> str | None:
        """The sentence to print when mixed precision was asked for but is left off."""
        if self.asked and not self.enabled:
            return (
                "mixed precision: this CPU has no fast bfloat16 (no AVX-512 BF16/AMX), where "
                "autocast is ~10x slower than float32; running in float32."
            )
        return None


def float32(device: torch.device | str = "cpu") -> Precision:
    """Plain float32 on ``device``."""
    return Precision(torch.device(device).type)


def decide_precision(asked: bool, device: torch.device | str) -> Precision:
    """The precision of a run that ``asked`` for mixed precision (or not) on ``device``."""
    device_type = torch.device(device).type
    if not asked:
        return Precision(device_type)
    if device_type == "cuda":
        return Precision(device_type, torch.float16, asked=True)
    if device_type == "cpu":
        return Precision(device_type, torch.bfloat16 if cpu_has_fast_bf16() else None, asked=True)
    return Precision(device_type, None, asked=True)  # mps and others: float32, no claim made


def cpu_has_fast_bf16() -> bool:
    """Whether bfloat16 convolutions run natively on this CPU (AVX-512 BF16 or AMX), unless
    ``PIXELWISE_CPU_BF16`` says otherwise (see the module docstring)."""
    forced = os.environ.get(CPU_BF16_VARIABLE, "auto").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    if forced != "auto":
        raise PixelwiseError(
            f"{CPU_BF16_VARIABLE}={forced!r} is not one of 1, 0 or auto; unset it to let pixelwise "
            "ask the CPU."
        )
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False
