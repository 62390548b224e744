"""Speed and size of networks on one machine: what ``pixelwise bench`` prints and writes.

For each network, at one input size on one device:

- parameters (learnable, :func:`~pixelwise.models.complexity.count_parameters`) and GFLOPs of one
  batch-1 forward (:func:`~pixelwise.models.complexity.count_flops`, counted on the meta device);
- inference latency at batch 1 and at batch N: eval mode, ``torch.inference_mode``, the median of
  ``runs`` timed forwards after ``warmup`` untimed ones;
- training throughput: batch N, train mode, forward + cross entropy + backward + SGD step on random
  data; N over the median step time;
- peak memory of the training steps (weights, gradients, optimizer state and activations). On CUDA
  it is ``torch.cuda.max_memory_allocated`` above what was allocated before the network was built.
  On the CPU torch keeps no such count, so it is the growth of the process's resident set size,
  sampled every 2 ms from ``/proc/self/statm`` after returning freed heap to the system
  (``malloc_trim``): an estimate that includes the allocator's own slack, and ``None`` where
  ``/proc`` is missing.

AMP is the engine's :class:`~pixelwise.engine.precision.Precision`: autocast to bfloat16 on the CPU
and float16 on CUDA (with a GradScaler for training), and only where it is in effect (on a CPU
without native bf16 it would be ~10x slower, so the networks run in fp32 and the result says so).
Only networks whose task has one fixed forward to logits are timed (``Task.bench_refusal``).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.engine.precision import Precision, cpu_has_fast_bf16, decide_precision
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model, model_info
from pixelwise.models.complexity import count_flops, count_parameters
from pixelwise.outputs import write_text

CPU_MEMORY = "peak RSS growth (sampled /proc/self/statm, after malloc_trim)"
CUDA_MEMORY = "torch.cuda.max_memory_allocated above the allocation before the network"


@dataclass(frozen=True)
class BenchSettings:
    """How every network of one bench is measured.

    Attributes:
        size: input (H, W).
        batch: N, the batch of the second latency and of training.
        device: ``"auto"`` (CUDA when visible), ``"cpu"``, ``"cuda"`` or ``"cuda:K"``.
        amp: autocast asked for (in effect where :func:`~pixelwise.engine.precision.decide_precision` says so).
        channels_last: network and inputs in channels_last memory format.
        compile: ``torch.compile`` the network (its compilation happens in the warm-up calls).
        num_classes: output classes; None for each network's paper setting.
        warmup: untimed calls before each timing.
        runs: timed calls whose median is reported.
        model_options: per network name, keyword options for its builder.
    """

    size: tuple[int, int] = (360, 480)
    batch: int = 4
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    compile: bool = False
    num_classes: int | None = None
    warmup: int = 2
    runs: int = 5
    model_options: dict[str, dict] = field(default_factory=dict)


@dataclass
class BenchResult:
    """One network's row; the timings are None when measuring failed (``error`` says why)."""

    model: str
    device: str
    size: list[int]
    batch: int
    num_classes: int
    amp: bool  # in effect, not only asked for
    channels_last: bool
    compile: bool
    params: int
    gflops: float | None = None
    latency_ms: float | None = None  # batch 1
    latency_batch_ms: float | None = None  # batch N
    train_images_per_s: float | None = None
    peak_memory_mb: float | None = None
    memory_measure: str = ""
    error: str | None = None


def resolve_device(name: str) -> torch.device:
    """``--device`` as a torch device; CUDA asked for on a machine without it is refused."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PixelwiseError(f"--device {name} needs CUDA but none is visible; use cpu or auto.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise PixelwiseError(
            f"--device {name!r} is not a device torch knows; use auto, cpu, cuda or cuda:N."
        ) from None


def check_networks(names: Sequence[str], settings: BenchSettings) -> dict[str, float]:
    """Refuse, before any work, a name that is not registered, a network that does not predict
    per-pixel logits, options for a network not benched, and sizes that cannot run.

    Returns:
        Each network's GFLOPs at the size, counted on the way.
    """
    if not names:
        raise PixelwiseError(
            "No network to bench; name some with --models, e.g. --models enet,linknet."
        )
    from pixelwise.tasks import task_class

    for name in names:
        refusal = task_class(name).bench_refusal  # an unknown name raises, listing the known ones
        if refusal is not None:
            raise PixelwiseError(f"{name} cannot be benched: {refusal}; leave it out of --models.")
    stray = sorted(set(settings.model_options) - set(names))
    if stray:
        raise PixelwiseError(
            f"Options are given for {', '.join(stray)}, which is not benched; add it to --models "
            "or drop its options."
        )
    if min(settings.size) < 1 or settings.batch < 1 or settings.runs < 1 or settings.warmup < 0:
        raise PixelwiseError(
            f"--size {settings.size[0]} {settings.size[1]}, --batch {settings.batch}, "
            f"--runs {settings.runs} and --warmup {settings.warmup} must be positive "
            "(warm-up may be 0)."
        )
    if settings.num_classes is not None and settings.num_classes < 1:
        raise PixelwiseError(f"--classes {settings.num_classes} must be at least 1.")
    # A forward on the meta device computes nothing but meets the network's own checks
    # (unknown options, a size it cannot take) before any network is timed.
    return {name: _gflops(name, settings) for name in names}


def bench_models(names: Sequence[str], settings: BenchSettings) -> list[BenchResult]:
    """Every network in ``names``, one after the other (checked first, so a typo costs nothing)."""
    device = resolve_device(settings.device)
    gflops = check_networks(names, settings)
    return [bench_model(name, settings, device=device, gflops=gflops[name]) for name in names]


def bench_model(
    name: str,
    settings: BenchSettings,
    *,
    device: torch.device | None = None,
    model: nn.Module | None = None,
    gflops: float | None = None,
) -> BenchResult:
    """Measure one registered network (or ``model``, e.g. loaded from a checkpoint, as ``name``;
    its class count is then reported as ``settings.num_classes``, or the paper's if that is None).

    A given ``model`` is left as it was: the timings run on copies. A failure while measuring
    (out of memory, an operation without a kernel) is recorded in ``error``, not raised. ``gflops``
    is the count already made by :func:`check_networks`, if any.
    """
    device = device or resolve_device(settings.device)
    options = settings.model_options.get(name, {})
    num_classes = settings.num_classes or model_info(name).num_classes
    if model is None:

        def fresh() -> nn.Module:
            return build_model(name, num_classes, **options)

        with torch.device("meta"):  # counts need shapes only
            template = fresh()
    else:

        def fresh() -> nn.Module:
            return copy.deepcopy(model)

        template = model

    precision = decide_precision(settings.amp, device)
    result = BenchResult(
        model=name,
        device=str(device),
        size=list(settings.size),
        batch=settings.batch,
        num_classes=num_classes,
        amp=precision.enabled,
        channels_last=settings.channels_last,
        compile=settings.compile,
        params=count_parameters(template),
        memory_measure=CUDA_MEMORY if device.type == "cuda" else CPU_MEMORY,
    )
    try:
        if gflops is None:
            gflops = count_flops(template, settings.size, _in_channels(template)) / 1e9
        result.gflops = gflops
        del template
        torch.manual_seed(0)
        inference = prepare_model(fresh(), device, settings).eval()
        result.latency_ms = 1e3 * time_inference(inference, 1, device, precision, settings)
        result.latency_batch_ms = 1e3 * time_inference(
            inference, settings.batch, device, precision, settings
        )
        del inference
        seconds, peak = time_training(fresh, device, precision, settings)
        result.train_images_per_s = settings.batch / seconds
        result.peak_memory_mb = None if peak is None else peak / 2**20
    except (RuntimeError, ValueError, NotImplementedError) as error:
        # torch's errors are long; their first line names the failing operation and sizes.
        result.error = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
    finally:
        _release(device)
    return result


def _gflops(name: str, settings: BenchSettings) -> float:
    """GFLOPs of one batch-1 forward, counted on the meta device: nothing computed or allocated."""
    num_classes = settings.num_classes or model_info(name).num_classes
    with torch.device("meta"):
        model = build_model(name, num_classes, **settings.model_options.get(name, {}))
    return count_flops(model, settings.size, _in_channels(model)) / 1e9


def _in_channels(model: nn.Module) -> int:
    """The input channels: those of the first convolution."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3


def prepare_model(model: nn.Module, device: torch.device, settings: BenchSettings) -> nn.Module:
    """``model`` on ``device``, in channels_last and compiled where ``settings`` ask for it."""
    model = model.to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if settings.compile:
        model = torch.compile(model)
    return model


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    step: Callable[[], object], device: torch.device, warmup: int, runs: int
) -> float:
    """Median wall time of ``step`` over ``runs`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    synchronize(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(batch: int, model: nn.Module, device: torch.device, settings: BenchSettings):
    x = torch.randn(batch, _in_channels(model), *settings.size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if settings.channels_last else x


def time_inference(
    model: nn.Module,
    batch: int,
    device: torch.device,
    precision: Precision,
    settings: BenchSettings,
) -> float:
    """Median seconds of one forward of a random ``batch`` in ``torch.inference_mode`` under
    ``precision``; the caller puts ``model`` in eval mode.
    """
    x = _inputs(batch, model, device, settings)

    def step() -> None:
        with torch.inference_mode(), precision.autocast():
            model(x)

    # A compiled network compiles (again, for a new batch) on its first call: never timed.
    warmup = max(settings.warmup, 1) if settings.compile else settings.warmup
    return median_seconds(step, device, warmup, settings.runs)


def time_training(
    fresh: Callable[[], nn.Module],
    device: torch.device,
    precision: Precision,
    settings: BenchSettings,
) -> tuple[float, int | None]:
    """Median seconds of one SGD step at ``settings.batch`` and the steps' peak memory in bytes.

    Args:
        fresh: builds the network to train (a new one: training changes its weights).
        device: where it runs.
        precision: autocast and gradient scaling (:mod:`pixelwise.engine.precision`).
        settings: size, batch, channels_last, compile, warm-up and runs.
    """
    with peak_memory(device) as peak:
        torch.manual_seed(0)
        model = prepare_model(fresh(), device, settings).train()
        # A small learning rate keeps the weights (and so the kernels' speed) from blowing up.
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        scaler = precision.grad_scaler()
        x = _inputs(settings.batch, model, device, settings)
        target: torch.Tensor | None = None

        def step() -> None:
            nonlocal target
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                logits = model(x)
                if target is None:  # at the logits' size: a valid-padding U-Net predicts less
                    shape = (logits.shape[0], *logits.shape[-2:])
                    target = torch.randint(0, logits.shape[1], shape, device=device)
                loss = F.cross_entropy(logits, target)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        seconds = median_seconds(step, device, max(settings.warmup, 1), settings.runs)
    return seconds, peak.bytes


class _Peak:
    bytes: int | None = None


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[_Peak]:
    """Peak memory of the block above what was in use when it began (see the module docstring)."""
    peak = _Peak()
    _release(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield peak
        peak.bytes = torch.cuda.max_memory_allocated(device) - before
        return
    sampler = _RssSampler()
    with sampler:
        yield peak
    peak.bytes = sampler.growth


class _RssSampler:
    """The highest resident set size seen while active, read by a thread every ``interval`` s."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.growth: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._fd: int | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._peak = 0

    def _rss(self) -> int:
        assert self._fd is not None
        return int(os.pread(self._fd, 128, 0).split()[1]) * self._page

    def _run(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> _RssSampler:
        try:
            self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            return self  # not Linux: no estimate
        self._before = self._peak = self._rss()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is None:
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._rss())
        os.close(self._fd)
        self.growth = self._peak - self._before


def _release(device: torch.device) -> None:
    """Free what earlier measurements left, so that the next peak starts from the floor."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed heap otherwise


# -- report ------------------------------------------------------------------------------------
def machine() -> dict[str, object]:
    """The machine, torch version and threads every figure depends on."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    info: dict[str, object] = {
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cpu_native_bf16": cpu_has_fast_bf16(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def amp_note(settings: BenchSettings, results: Sequence[BenchResult]) -> str | None:
    """The sentence saying that AMP was asked for but not used, or None."""
    if settings.amp and results and not results[0].amp:
        return (
            "AMP was asked for but is not in effect: this CPU has no native bf16 (AVX-512/AMX), "
            "where autocast would be ~10x slower, so the networks ran in fp32."
        )
    return None


def format_table(results: Sequence[BenchResult], settings: BenchSettings) -> str:
    """The table ``pixelwise bench`` prints, with what it measured under it."""
    n = settings.batch
    lines = [
        f"{'model':<16} {'params':>11} {'GFLOPs':>8} {'b1 ms':>9} {f'b{n} ms':>9} "
        f"{'train img/s':>11} {'peak MB':>9}"
    ]
    for r in results:
        head = f"{r.model:<16} {r.params:>11,}"
        if r.error is not None:
            gflops = "-" if r.gflops is None else f"{r.gflops:.2f}"
            lines.append(f"{head} {gflops:>8}  failed: {r.error}")
            continue
        peak = "-" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.0f}"
        lines.append(
            f"{head} {r.gflops:>8.2f} {r.latency_ms:>9.1f} {r.latency_batch_ms:>9.1f} "
            f"{r.train_images_per_s:>11.2f} {peak:>9}"
        )
    first = results[0] if results else None
    device = first.device if first else settings.device
    amp = "on" if first and first.amp else "off"
    lines.append(
        f"{device}, input {settings.size[0]}x{settings.size[1]}, batch 1 and {n}, amp {amp}, "
        f"channels_last {'on' if settings.channels_last else 'off'}, "
        f"compile {'on' if settings.compile else 'off'}, {torch.get_num_threads()} threads; "
        f"median of {settings.runs} after {settings.warmup} warm-up"
    )
    lines.append(
        "params: learnable; GFLOPs: one batch-1 forward (2 x multiply-adds); train: forward + "
        f"cross entropy + backward + SGD at batch {n}; peak MB: the training steps, "
        + (CUDA_MEMORY if device.startswith("cuda") else CPU_MEMORY)
    )
    note = amp_note(settings, results)
    if note:
        lines.append(note)
    return "\n".join(lines)


def bench_report(
    results: Sequence[BenchResult], settings: BenchSettings, command: str | None = None
) -> dict[str, object]:
    """The JSON document: machine, settings, one entry per network."""
    report: dict[str, object] = {
        "machine": machine(),
        "settings": {**asdict(settings), "size": list(settings.size)},
        "amp_in_effect": bool(results and results[0].amp),
        "results": [asdict(r) for r in results],
    }
    note = amp_note(settings, results)
    if note:
        report["note"] = note
    if command:
        report["command"] = command
    return report


def write_report(path: Path, report: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(report, indent=2) + "\n")
