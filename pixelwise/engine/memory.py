"""The memory a prediction needs, estimated before it runs, and the sliding window that makes it fit.

An 8000x8000 photo through a segmentation network in one forward needs gigabytes of activations,
and ``--scales 1000`` asks for an image a million times larger. Before a prediction runs,
:func:`fit_prediction` compares what it would hold at its peak with the memory free on its device:

- the network's own peak is *measured*, not guessed: its forward runs once on the ``meta`` device
  (shapes only, nothing computed or allocated, milliseconds even for ResNet-152) at the exact
  input size, and :class:`LivePeak` adds up the bytes of the tensors alive at each moment;
- what the inference code keeps around it (the input, its rescaled and flipped copies, the class
  probabilities and their running sum, the label map) is counted from the shapes.

A request that fits runs as asked. One whose forward does not fit is predicted in sliding windows
chosen to fit (the largest square, a multiple of 32, moved by two thirds of its size), with a note
that says so. One that cannot fit whatever the window, because the images and probability maps
alone exceed the memory, is refused in one sentence before anything runs. Where the free memory
or the forward cannot be measured (another device type, an operation without a meta kernel), the
request runs as asked: no estimate is better than a wrong one.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call

# torch's flop counter is built on the same hook; it is the documented way to see every operation.
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pixelwise.errors import PixelwiseError

# Plan against this share of the free memory: the allocator's fragmentation, the OS's page cache
# and other processes need the rest.
BUDGET_FRACTION = 0.8
# Kernels' workspaces and layout copies that are not tensors of the forward. Measured on CPU
# (2 threads, one forward at 768-1536 px), the process's peak resident memory rose 1.05x (SegNet,
# FC-DenseNet56) to 1.2x (U-Net, RefineNet-50), 1.4x (G-FRNet) and 1.5-1.6x (ENet, PSPNet-50,
# LinkNet: oneDNN's blocked copies of their many thin layers) over the tensors' peak counted here.
ACTIVATION_MARGIN = 1.5
# Smaller windows see too little context to be worth running; a request that needs them is refused.
MIN_WINDOW = 64
FLOAT_BYTES = 4  # inputs, probabilities and their sums are float32 under any autocast
LABEL_BYTES = 8  # the int64 label map


# -- free memory -------------------------------------------------------------------------------
def available_bytes(device: torch.device) -> int | None:
    """Bytes a new allocation on ``device`` can still get, or None where that cannot be known.

    CUDA: the driver's free memory plus what torch's caching allocator holds unused. CPU: the
    kernel's ``MemAvailable`` (psutil's figure when installed), lowered to the room left under a
    cgroup's memory limit, which is what a container actually gets.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    if device.type != "cpu":
        return None
    figures = [f for f in (_system_available(), _cgroup_room()) if f is not None]
    return min(figures) if figures else None


def _system_available() -> int | None:
    try:
        import psutil
    except ImportError:
        return _meminfo_available(Path("/proc/meminfo"))
    return int(psutil.virtual_memory().available)


def _meminfo_available(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the kernel writes kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Limit minus usage of this process's cgroup (v2, else v1); None without a limit."""
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            cap = Path(limit).read_text().strip()
            used = int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
        # v2 writes "max" without a limit; v1 a number near 2**63.
        if cap.isdigit() and int(cap) < 2**60:
            return max(0, int(cap) - used)
    return None


# -- the network's own peak ----------------------------------------------------------------------
class LivePeak(TorchDispatchMode):
    """Counts the bytes of tensors created under it that are alive at once, and their peak.

    Every operation's outputs are seen here; a storage counts once however many views share it,
    from its first tensor until the last tensor of it seen here is gone. Storages that exist
    before (``known``: the input, the weights) do not count.
    """

    def __init__(self, known: Sequence[Tensor] = ()) -> None:
        super().__init__()
        self.known = {_storage_key(t) for t in known}
        self.live: dict[int, list[int]] = {}  # storage -> [bytes, tensors of it still alive]
        self.now = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, Tensor):
                self._track(item)
        return out

    def _track(self, tensor: Tensor) -> None:
        key = _storage_key(tensor)
        if key in self.known:
            return
        entry = self.live.get(key)
        if entry is None:
            entry = self.live[key] = [tensor.untyped_storage().nbytes(), 0]
            self.now += entry[0]
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[key]


def _storage_key(tensor: Tensor) -> int:
    return tensor.untyped_storage()._cdata


def forward_peak_bytes(
    model: nn.Module, shape: Sequence[int], dtype: torch.dtype = torch.float32
) -> int | None:
    """Peak bytes of the tensors one forward of ``model`` holds for an input of ``shape``
    (its output included), measured on the meta device in ``dtype``; the weights are not counted
    (they are already in memory). None where an operation has no meta kernel.

    Raises:
        PixelwiseError: when the network refuses the size itself (it would refuse it for real too).
    """
    state = {
        name: torch.empty_like(t, device="meta", dtype=dtype if t.is_floating_point() else None)
        for name, t in [*model.named_parameters(), *model.named_buffers()]
    }
    x = torch.zeros(tuple(shape), device="meta", dtype=dtype)
    try:
        with torch.no_grad(), LivePeak(known=[x, *state.values()]) as counter:
            out = functional_call(model, state, (x,))
            del out
    except PixelwiseError:
        raise
    except Exception:  # an operation without a meta kernel, or a forward that reads values
        return None
    return counter.peak


# -- the plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """One prediction as asked: a batch of ``shape`` (N, 3, h, w) for ``num_classes`` classes at
    ``scales`` (and flipped), in ``crop`` windows moved by ``stride`` if given, its labels scaled to
    ``output_size`` (the image's own size, when the run resizes its inputs)."""

    shape: tuple[int, int, int, int]
    num_classes: int
    scales: Sequence[float] = (1.0,)
    flip: bool = False
    crop: Sequence[int] | None = None
    stride: Sequence[int] | None = None
    output_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class Fit:
    """How the request runs: the window and stride (None: whole image) and a note when the plan
    differs from what was asked, to be shown once."""

    crop: tuple[int, int] | None
    stride: tuple[int, int] | None
    note: str | None = None


def fit_prediction(
    model: nn.Module,
    request: Request,
    device: torch.device,
    *,
    dtype: torch.dtype = torch.float32,
    available: Callable[[torch.device], int | None] | None = None,
) -> Fit:
    """The way to run ``request`` within the memory free on ``device``.

    Args:
        model: the network, in eval mode (only its shapes are used).
        request: what is asked.
        device: where the prediction runs.
        dtype: the dtype the forward runs in (the autocast dtype, else float32).
        available: the free-memory reader (default :func:`available_bytes`).

    Raises:
        PixelwiseError: when the request cannot fit whatever the window, in one sentence naming
            the size, the memory needed and free, and the fix.
    """
    asked = _asked(request)
    free = (available or available_bytes)(device)
    if free is None:
        return asked
    budget = int(free * BUDGET_FRACTION)
    floor = _floor_bytes(request, sliding=True)
    if floor > budget:
        raise PixelwiseError(_refusal(request, floor, free, device))
    cost = _Cost(model, request, device, dtype)
    need = cost.total(asked.crop)
    if need is None or need <= budget:
        return asked
    if getattr(model, "crops_output", False):
        raise PixelwiseError(
            f"{_size(request).capitalize()} needs about {_gib(need)} to predict but {_gib(free)} "
            f"are free on {device}, and {type(model).__name__} predicts only the centre of its input, "
            "so it cannot be split into windows; predict a smaller image or on a machine with "
            "more memory."
        )
    largest = _largest_scaled(request)
    limit = min(asked.crop) if asked.crop else max(largest)
    side = _fitting_side(cost, budget, limit, largest)
    if side is None:
        smallest = cost.total(_window(MIN_WINDOW, largest)) or floor
        raise PixelwiseError(
            f"{_size(request).capitalize()} needs about {_gib(smallest)} to predict even in "
            f"{MIN_WINDOW}x{MIN_WINDOW} windows but {_gib(free)} are free on {device}; "
            f"{_smaller_fix(request)}."
        )
    crop = _window(side, largest)
    stride = (max(1, math.ceil(crop[0] * 2 / 3)), max(1, math.ceil(crop[1] * 2 / 3)))
    way = f"in --crop {asked.crop[0]} {asked.crop[1]} windows" if asked.crop else "in one pass"
    note = (
        f"{_size(request)} needs about {_gib(need)} {way} but {_gib(free)} are free on "
        f"{device}; predicting it in {crop[0]}x{crop[1]} windows moved by {stride[0]}x{stride[1]} "
        f"instead (as --crop {crop[0]} {crop[1]} --stride {stride[0]} {stride[1]} would)."
    )
    return Fit(crop, stride, note)


def needed_bytes(
    model: nn.Module,
    request: Request,
    device: torch.device,
    *,
    crop: tuple[int, int] | None = None,
    dtype: torch.dtype = torch.float32,
) -> int | None:
    """The estimated peak bytes of ``request`` on ``device`` in ``crop`` windows (None: each scale
    in one pass); None where the network's forward cannot be measured."""
    return _Cost(model, request, device, dtype).total(crop)


def _asked(request: Request) -> Fit:
    if request.crop is None:
        return Fit(None, None)
    crop = (int(request.crop[0]), int(request.crop[1]))
    stride = tuple(request.stride) if request.stride is not None else crop
    return Fit(crop, (int(stride[0]), int(stride[1])))


class _Cost:
    """Bytes a request needs with a given window, the network measured once per window size."""

    def __init__(
        self, model: nn.Module, request: Request, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.model, self.request, self.dtype = model, request, dtype
        # On the CPU, oneDNN copies a convolution's weight into its own layout while it runs.
        self.workspace = (
            max((p.numel() * p.element_size() for p in model.parameters()), default=0)
            if device.type == "cpu"
            else 0
        )
        self.measured: dict[tuple[int, int], int | None] = {}

    def forward(self, size: tuple[int, int]) -> int | None:
        if size not in self.measured:
            shape = (self.request.shape[0], self.request.shape[1], *size)
            peak = forward_peak_bytes(self.model, shape, self.dtype)
            self.measured[size] = None if peak is None else int(peak * ACTIVATION_MARGIN)
        return self.measured[size]

    def total(self, crop: tuple[int, int] | None) -> int | None:
        """Peak bytes over the scales with ``crop`` windows (None: each scale in one pass)."""
        worst = 0
        for hs, ws in _scaled_sizes(self.request):
            size = (hs, ws) if crop is None else (min(crop[0], hs), min(crop[1], ws))
            peak = self.forward(size)
            if peak is None:
                return None
            sliding = size != (hs, ws)
            worst = max(worst, _scale_bytes(self.request, hs, ws, sliding) + peak)
        return _base_bytes(self.request) + worst + self.workspace


def _fitting_side(cost: _Cost, budget: int, limit: int, largest: tuple[int, int]) -> int | None:
    """The largest square window side (a multiple of 32 from 64, at most ``limit``) that fits."""
    steps = [s for s in range(MIN_WINDOW, limit + 1, 32)] or [min(limit, MIN_WINDOW)]
    low, high, best = 0, len(steps) - 1, None
    while low <= high:  # a window's peak grows with its side; a few meta forwards find the edge
        mid = (low + high) // 2
        need = cost.total(_window(steps[mid], largest))
        if need is not None and need <= budget:
            best, low = steps[mid], mid + 1
        else:
            high = mid - 1
    return best


def _window(side: int, largest: tuple[int, int]) -> tuple[int, int]:
    return (min(side, largest[0]), min(side, largest[1]))


def _scaled_sizes(request: Request) -> list[tuple[int, int]]:
    _, _, h, w = request.shape
    return [(max(1, round(h * s)), max(1, round(w * s))) for s in request.scales]


def _largest_scaled(request: Request) -> tuple[int, int]:
    return max(_scaled_sizes(request), key=lambda hw: hw[0] * hw[1])


def _base_bytes(request: Request) -> int:
    """The input, the running sum of the views' probabilities, and the label map (with the
    probabilities scaled to the image's own size when the run resizes its inputs)."""
    n, channels, h, w = request.shape
    c = request.num_classes
    out_h, out_w = request.output_size or (h, w)
    scaled_back = n * c * out_h * out_w * FLOAT_BYTES if (out_h, out_w) != (h, w) else 0
    labels = n * out_h * out_w * LABEL_BYTES
    return n * (channels + c) * h * w * FLOAT_BYTES + scaled_back + labels


def _scale_bytes(request: Request, hs: int, ws: int, sliding: bool) -> int:
    """At one scale, as :func:`~pixelwise.engine.inference.predict_probs` holds them: the rescaled
    and flipped inputs, the view's probabilities (the softmax, or the windows' sum and count) and
    their flipped-back or rescaled copy."""
    n, channels, h, w = request.shape
    c = request.num_classes
    rescaled = (hs, ws) != (h, w)
    copies = int(rescaled) + int(request.flip)
    maps = 1 + int(rescaled or request.flip)
    pixels = n * hs * ws
    total = pixels * (channels * copies + c * maps) * FLOAT_BYTES
    if sliding:
        total += hs * ws * FLOAT_BYTES  # how many windows covered each pixel
    return total


def _floor_bytes(request: Request, *, sliding: bool) -> int:
    """What no window can make smaller: every buffer but the network's forward."""
    worst = max(_scale_bytes(request, hs, ws, sliding) for hs, ws in _scaled_sizes(request))
    return _base_bytes(request) + worst


def _refusal(request: Request, floor: int, free: int, device: torch.device) -> str:
    budget = free * BUDGET_FRACTION
    scale = _largest_fitting_scale(request, budget)
    if scale is None:
        fix = "split the image into tiles and predict each"
    elif scale < max(request.scales):
        fix = f"use --scales no larger than {scale:.3g}"
    else:
        fix = _smaller_fix(request)
    asked = ""
    if tuple(request.scales) != (1.0,):
        asked = f" at --scales {' '.join(f'{s:g}' for s in request.scales)}"
    return (
        f"{_size(request).capitalize()}{asked} needs about {_gib(floor)} for its rescaled copies and "
        f"class probabilities alone (the network aside) but {_gib(free)} are free on {device}; "
        f"{fix}."
    )


def _largest_fitting_scale(request: Request, budget: float) -> float | None:
    """The largest single scale (up to the largest asked, 3 significant digits) whose buffers fit;
    None when not even the image's own size does."""

    def fits(scale: float) -> bool:
        alone = Request(request.shape, request.num_classes, (scale,), request.flip,
                        output_size=request.output_size)  # fmt: skip
        return _floor_bytes(alone, sliding=True) <= budget

    if not fits(min(1.0, max(request.scales))):
        return None
    low, high = min(1.0, max(request.scales)), max(request.scales)
    while high - low > 1e-3 * high:  # the buffers grow with the scale's square
        mid = (low + high) / 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def _smaller_fix(request: Request) -> str:
    if max(request.scales) > 1:
        return "use smaller --scales (1 predicts at the image's own size)"
    return "predict a smaller image, or on a machine with more memory"


def _size(request: Request) -> str:
    _, _, h, w = request.shape
    return f"an image of {h}x{w} pixels"


def _gib(count: int) -> str:
    value = count / 2**30
    return f"{value:.3g} GiB" if value < 1000 else f"{value:.2e} GiB"
