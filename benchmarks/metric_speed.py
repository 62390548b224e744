"""ConfusionMatrix.update against a NumPy bincount confusion matrix, on the same labels, in one run.

The labels are what evaluation feeds the metric: a batch of predicted class ids (int64, as argmax
returns them) and targets with ``--ignore`` of the pixels set to 255. Three ways of filling the
C×C matrix are timed round-robin (so a load change on a shared machine hits all of them alike):

- ``pixelwise``: ``ConfusionMatrix.update`` on the device (on a GPU: the labels already there, one
  synchronisation after the update so that its work is inside the time);
- ``numpy``: the classic ``np.bincount(C * t[k] + p[k], minlength=C * C)`` with
  ``k = (t >= 0) & (t < C)``, on the CPU;
- ``masked``: what ``update`` did before (boolean masks over int64, then ``torch.bincount``), for
  the record.

``ratio`` is numpy's median time over pixelwise's: 1.0 or more means the metric is as fast as NumPy
or faster. Every method's matrix is checked equal to NumPy's. On a GPU the script also runs one
update under ``torch.cuda.set_sync_debug_mode("error")``, which raises on any host synchronisation,
and reports whether it passed.

Usage::

    python benchmarks/metric_speed.py                          # 8x1024x2048, 19 classes, 5% ignore
    python benchmarks/metric_speed.py --dtypes int64 uint8 --runs 7 --threads 1
    python benchmarks/metric_speed.py --shape 4 512 1024 --out /tmp/metric.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from machine import machine_info

from pixelwise.metrics import ConfusionMatrix

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "metric_speed.json"
IGNORE = 255


def make_labels(
    shape: tuple[int, ...], num_classes: int, ignore_share: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prediction, target) int64 CPU tensors; ``ignore_share`` of the targets are 255."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=g)
    target[torch.rand(shape, generator=g) < ignore_share] = IGNORE
    prediction = torch.randint(0, num_classes, shape, generator=g)
    return prediction, target


def numpy_matrix(prediction: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    c = num_classes
    keep = (target >= 0) & (target < c)
    codes = c * target[keep].astype(np.int64) + prediction[keep]
    return np.bincount(codes, minlength=c * c).reshape(c, c)


def masked_matrix(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """ConfusionMatrix.update as it was before the small-integer codes (boolean masks of int64)."""
    c = num_classes
    valid = (target >= 0) & (target < c) & (target != IGNORE)
    index = target[valid].long() * c + prediction[valid].long().clamp_(0, c - 1)
    return torch.bincount(index, minlength=c * c).view(c, c)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_robin(
    methods: dict[str, Callable[[], object]], device: torch.device, warmup: int, runs: int
) -> dict[str, list[float]]:
    """Seconds of each call, the methods interleaved run by run."""
    for _ in range(warmup):
        for call in methods.values():
            call()
            synchronize(device)
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(runs):
        for name, call in methods.items():
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def update_without_host_sync(
    prediction: torch.Tensor, target: torch.Tensor, num_classes: int
) -> bool | None:
    """Whether one CUDA update ran with no host synchronisation (None off CUDA)."""
    if prediction.device.type != "cuda":
        return None
    metric = ConfusionMatrix(num_classes, device=prediction.device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        metric.update(prediction, target)
        return True
    except RuntimeError:
        return False
    finally:
        torch.cuda.set_sync_debug_mode("default")


def measure(
    device: torch.device,
    dtype: torch.dtype,
    prediction: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    warmup: int,
    runs: int,
) -> dict[str, object]:
    """One table row: the three methods on the labels cast to ``dtype``."""
    prediction_cpu, target_cpu = prediction.to(dtype), target.to(dtype)
    prediction_np, target_np = prediction_cpu.numpy(), target_cpu.numpy()
    prediction_dev, target_dev = prediction_cpu.to(device), target_cpu.to(device)
    metric = ConfusionMatrix(num_classes, device=device)
    expected = numpy_matrix(prediction_np, target_np, num_classes)
    metric.update(prediction_dev, target_dev)
    agree = np.array_equal(metric.matrix.cpu().numpy(), expected)
    agree &= np.array_equal(masked_matrix(prediction_cpu, target_cpu, num_classes), expected)

    methods: dict[str, Callable[[], object]] = {
        "pixelwise": lambda: metric.update(prediction_dev, target_dev),
        "numpy": lambda: numpy_matrix(prediction_np, target_np, num_classes),
        "masked": lambda: masked_matrix(prediction_cpu, target_cpu, num_classes),
    }
    seconds = round_robin(methods, device, warmup, runs)
    median_ms = {name: 1e3 * statistics.median(times) for name, times in seconds.items()}
    return {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "median_ms": median_ms,
        "all_ms": {name: [1e3 * s for s in times] for name, times in seconds.items()},
        "ratio": median_ms["numpy"] / median_ms["pixelwise"],
        "matrices_agree": bool(agree),
        "no_host_sync": update_without_host_sync(prediction_dev, target_dev, num_classes),
    }


HEADER = (
    f"{'device':<6} {'dtype':<6} {'pixelwise ms':>12} {'numpy ms':>9} {'masked ms':>10} "
    f"{'ratio':>6}  checks"
)


def format_row(row: dict[str, object]) -> str:
    ms = row["median_ms"]
    checks = "matrix == numpy" if row["matrices_agree"] else "MATRIX DIFFERS FROM NUMPY"
    if row["no_host_sync"] is not None:
        checks += ", no host sync" if row["no_host_sync"] else ", HOST SYNC IN UPDATE"
    return (
        f"{row['device']:<6} {row['dtype']:<6} {ms['pixelwise']:>12.1f} {ms['numpy']:>9.1f} "
        f"{ms['masked']:>10.1f} {row['ratio']:>6.2f}  {checks}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shape", nargs="+", type=int, default=[8, 1024, 2048], help="label batch shape"
    )
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--ignore", type=float, default=0.05, help="share of 255 targets")
    parser.add_argument(
        "--dtypes", nargs="+", choices=["int64", "int32", "int16", "uint8"], default=["int64"]
    )
    parser.add_argument("--runs", type=int, default=5, help="timed calls per method (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--devices", nargs="+", choices=["cpu", "cuda"], default=None,
        help="default: cpu, and cuda when available",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    shape = tuple(args.shape)
    prediction, target = make_labels(shape, args.classes, args.ignore, args.seed)
    print(
        f"labels {'x'.join(map(str, shape))}, {args.classes} classes, {args.ignore:.0%} ignore; "
        f"median of {args.runs} after {args.warmup} warm-up; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, numpy {np.__version__}"
    )
    print("ratio = numpy ms / pixelwise ms (>= 1.0: pixelwise as fast or faster)")
    print(HEADER)
    rows = []
    for device_name in devices:
        for dtype_name in args.dtypes:
            row = measure(
                torch.device(device_name),
                getattr(torch, dtype_name),
                prediction,
                target,
                args.classes,
                args.warmup,
                args.runs,
            )
            rows.append(row)
            print(format_row(row), flush=True)
    report = {
        "machine": machine_info(),
        "numpy": np.__version__,
        "shape": list(shape),
        "classes": args.classes,
        "ignore_share": args.ignore,
        "runs": args.runs,
        "warmup": args.warmup,
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
