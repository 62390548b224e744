"""Peak memory and time of one FC-DenseNet training step, plain vs ``memory_efficient=True``.

A training step here is forward + cross-entropy + backward of a freshly built model in train mode
(dropout 0.2 on, BN on batch statistics) at batch ``B`` and ``H x W`` (default 2 at 224x224, the
paper's training crop); no optimizer step, whose state is the same for both variants.

How memory is measured:
    * Each (model, variant) runs in a fresh Python subprocess, so that no allocator cache, thread
      pool or earlier peak carries over from one configuration to the next.
    * CUDA: ``torch.cuda.max_memory_allocated()`` over the steps minus ``memory_allocated()``
      just before them (weights and input already on the device): the tensors the step itself
      allocates (activations kept for backward, gradients, workspace), without allocator slack.
    * CPU: torch's CPU allocations go through ``malloc`` and are invisible to ``tracemalloc``, so
      we read the process's peak resident set size (``resource.getrusage(...).ru_maxrss``, the
      kernel's high-water mark) just before the first step and after the last one; the growth is
      the step's peak. It counts real pages touched, including the allocator's free-but-kept
      memory and oneDNN scratch, so it is an upper bound on the tensors themselves, but the
      same bound for both variants.
    * Time: the median wall time of the measured steps after ``--warmup`` unmeasured-for-time
      steps (the memory peak covers every step, warm-up included). On a shared machine timings
      are noisy; memory is not.

Usage::

    python benchmarks/fcdensenet_memory.py                      # 56 and 103, B=2, 224x224
    python benchmarks/fcdensenet_memory.py --models fcdensenet67 --batch 3 --size 360 480
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from machine import machine_info
from torch import nn

from pixelwise.models import build_model

MODELS = ("fcdensenet56", "fcdensenet67", "fcdensenet103")
NUM_CLASSES = 11  # CamVid, the paper's setting
MIB = 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_rss_bytes() -> int:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure(
    *,
    name: str,
    memory_efficient: bool,
    batch: int,
    size: tuple[int, int],
    steps: int,
    warmup: int,
    device: torch.device,
) -> dict:
    """Run ``warmup + steps`` training steps in this process; return peak bytes and seconds/step."""
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, memory_efficient=memory_efficient).to(device).train()
    x = torch.randn(batch, 3, *size, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch, *size), device=device)
    loss_fn = nn.CrossEntropyLoss()

    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _peak_rss_bytes()

    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        loss_fn(model(x), y).backward()
        model.zero_grad(set_to_none=True)
        _sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)

    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _peak_rss_bytes()
    return {
        "model": name,
        "memory_efficient": memory_efficient,
        "peak_mib": (peak - before) / MIB,
        "seconds_per_step": statistics.median(times),
    }


def _run_in_subprocess(args: argparse.Namespace, name: str, memory_efficient: bool) -> dict:
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--batch",
        str(args.batch),
        "--size",
        *map(str, args.size),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
    ]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if memory_efficient:
        command.append("--memory-efficient")
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _machine(device: torch.device) -> dict:
    return {**machine_info(), "device": str(device)}


def _table(rows: list[dict]) -> str:
    lines = [
        f"{'model':<15} {'variant':<17} {'peak MiB':>10} {'s/step':>8} {'memory':>8} {'time':>7}",
    ]
    plain = {r["model"]: r for r in rows if not r["memory_efficient"]}
    for r in rows:
        base = plain[r["model"]]
        variant = "memory_efficient" if r["memory_efficient"] else "plain"
        lines.append(
            f"{r['model']:<15} {variant:<17} {r['peak_mib']:>10.0f} "
            f"{r['seconds_per_step']:>8.2f} {r['peak_mib'] / base['peak_mib']:>7.2f}x "
            f"{r['seconds_per_step'] / base['seconds_per_step']:>6.2f}x"
        )
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", choices=MODELS, default=["fcdensenet56", "fcdensenet103"]
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=[224, 224], metavar=("H", "W"))
    parser.add_argument("--steps", type=int, default=2, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "fcdensenet_memory.json"
    )
    parser.add_argument("--worker", choices=MODELS, help=argparse.SUPPRESS)
    parser.add_argument("--memory-efficient", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)

    if args.worker:  # one configuration, in its own process; the parent reads the JSON line
        result = measure(
            name=args.worker,
            memory_efficient=args.memory_efficient,
            batch=args.batch,
            size=tuple(args.size),
            steps=args.steps,
            warmup=args.warmup,
            device=device,
        )
        print(json.dumps(result))
        return

    rows = [
        _run_in_subprocess(args, name, efficient)
        for name in args.models
        for efficient in (False, True)
    ]
    report = {
        "machine": _machine(device),
        "batch": args.batch,
        "input_size": args.size,
        "steps": args.steps,
        "warmup": args.warmup,
        "memory_method": "cuda max_memory_allocated"
        if device.type == "cuda"
        else "peak RSS growth",
        "results": rows,
    }
    print(f"batch {args.batch}, {args.size[0]}x{args.size[1]}, {report['machine']}")
    print(_table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
