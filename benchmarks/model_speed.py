"""Inference latency and training throughput of registered models, with AMP and channels_last.

For each model and device (CPU, and CUDA when available) and each combination of AMP on/off
(``torch.autocast``: bfloat16 on CPU, float16 on CUDA) and channels_last on/off, measures

- inference latency: batch 1, eval mode, ``torch.inference_mode``; median of ``--runs`` timed
  forwards after ``--warmup`` untimed ones, in milliseconds;
- training throughput: batch 4, train mode, forward + cross-entropy + backward + SGD step; the
  batch size divided by the median step time, in images per second.

The timing is pixelwise.bench's (``time_inference``, ``time_training``: what ``pixelwise bench``
reports); this script adds the grid of devices x AMP x channels_last, with AMP used as asked even
where the engine would not use it (bf16 on an AVX2-only CPU), to show what it costs.

Prints a table and writes JSON with the machine (platform, CPU model, cores), torch version, thread
count, input size, batches and device. Timings on a shared machine are noisy; compare runs taken on
the same machine under the same load only.

Usage::

    python benchmarks/model_speed.py                       # every registered model, 360x480
    python benchmarks/model_speed.py --models segnet linknet --runs 5 --threads 2
    python benchmarks/model_speed.py --modes inference --size 512 1024 --out /tmp/speed.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from machine import machine_info
from torch import nn

from pixelwise.bench import BenchSettings, prepare_model, time_inference, time_training
from pixelwise.models import build_model, list_models, model_info

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "model_speed.json"
INFERENCE_BATCH = 1
TRAINING_BATCH = 4


@dataclass
class Measurement:
    """One (model, device, mode, AMP, channels_last) cell of the table."""

    model: str
    device: str
    mode: str  # "inference" | "training"
    amp: bool
    channels_last: bool
    batch: int
    median_ms: float | None = None  # per forward (inference) or per step (training)
    images_per_s: float | None = None
    error: str | None = None


def cell_seconds(
    name: str,
    num_classes: int,
    device: torch.device,
    mode: str,
    size: tuple[int, int],
    *,
    amp: bool,
    cl: bool,
    warmup: int,
    runs: int,
) -> float:
    """Median seconds of one batch-1 forward (inference) or batch-4 SGD step (training), timed by
    pixelwise.bench (what `pixelwise bench` reports); AMP is used as asked here, also where the
    engine would not use it, to show what it costs."""
    batch = INFERENCE_BATCH if mode == "inference" else TRAINING_BATCH
    settings = BenchSettings(size=size, batch=batch, channels_last=cl, warmup=warmup, runs=runs)

    def fresh() -> nn.Module:
        return build_model(name, num_classes)

    if mode == "training":
        seconds, _peak = time_training(fresh, device, amp, settings)
        return seconds
    model = prepare_model(fresh(), device, settings).eval()
    return time_inference(model, batch, device, amp, settings)


def combinations(amp: str, channels_last: str) -> Iterator[tuple[bool, bool]]:
    """(amp, channels_last) pairs in table order; each of "off", "on", "both"."""
    choices = {"off": (False,), "on": (True,), "both": (False, True)}
    for use_amp in choices[amp]:
        for use_cl in choices[channels_last]:
            yield use_amp, use_cl


def measure_model(
    name: str,
    device: torch.device,
    size: tuple[int, int],
    modes: list[str],
    warmup: int,
    runs: int,
    pairs: list[tuple[bool, bool]],
) -> list[Measurement]:
    """Every (AMP, channels_last) pair x mode for one model on one device, printed as it goes."""
    num_classes = model_info(name).num_classes
    results = []
    for amp, cl in pairs:
        for mode in modes:
            batch = INFERENCE_BATCH if mode == "inference" else TRAINING_BATCH
            row = Measurement(name, str(device), mode, amp, cl, batch)
            torch.manual_seed(0)
            try:
                # A fresh model per cell: training steps and memory format must not carry over.
                seconds = cell_seconds(
                    name, num_classes, device, mode, size, amp=amp, cl=cl, warmup=warmup, runs=runs
                )
                row.median_ms = seconds * 1e3
                row.images_per_s = batch / seconds
            except (RuntimeError, NotImplementedError) as error:  # e.g. an op without a bf16 kernel
                row.error = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            results.append(row)
            print(format_row(row), flush=True)
    return results


HEADER = f"{'model':<16} {'device':<6} {'mode':<9} {'amp':<4} {'ch_last':<7} {'batch':>5} {'median ms':>10} {'img/s':>8}"


def format_row(row: Measurement) -> str:
    flags = f"{'on' if row.amp else 'off':<4} {'on' if row.channels_last else 'off':<7}"
    head = f"{row.model:<16} {row.device:<6} {row.mode:<9} {flags} {row.batch:>5}"
    if row.error is not None:
        return f"{head} {'n/a':>10} {'n/a':>8}  ({row.error})"
    return f"{head} {row.median_ms:>10.1f} {row.images_per_s:>8.2f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    parser.add_argument("--size", nargs=2, type=int, default=[360, 480], metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=3, help="timed repetitions per cell (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--modes", nargs="+", choices=["inference", "training"], default=["inference", "training"]
    )
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=["cpu", "cuda"],
        default=None,
        help="default: cpu, and cuda when available",
    )
    parser.add_argument("--amp", choices=["off", "on", "both"], default="both")
    parser.add_argument("--channels-last", choices=["off", "on", "both"], default="both")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = args.models or list_models()
    for name in names:
        model_info(name)  # an unknown name fails now, listing the valid ones, not mid-run
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    size = (args.size[0], args.size[1])
    pairs = list(combinations(args.amp, args.channels_last))

    report = {
        "machine": machine_info(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "input_size": list(size),
        "batch": {"inference": INFERENCE_BATCH, "training": TRAINING_BATCH},
        "runs": args.runs,
        "warmup": args.warmup,
        "amp_dtype": {"cpu": "bfloat16", "cuda": "float16"},
        "devices": devices,
        "results": [],
    }
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {report['machine']['cpu']}, "
        f"input 3x{size[0]}x{size[1]}, median of {args.runs} after {args.warmup} warm-up"
    )
    print(HEADER)
    for device_name in devices:
        device = torch.device(device_name)
        for name in names:
            rows = measure_model(name, device, size, args.modes, args.warmup, args.runs, pairs)
            report["results"].extend(asdict(row) for row in rows)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
