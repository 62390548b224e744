"""pixelwise against a peer implementation of the same network, in the same run.

The peer is segmentation_models_pytorch's ``Linknet`` with a ResNet-18 encoder — the same
architecture as our ``linknet`` (11.66M vs 11.54M parameters: smp's decoder blocks differ slightly
in their bias and BN placement). Both are timed interleaved, cell by cell, so machine load hits
both alike, and the table reports our time over the peer's (below 1 = we are faster).

    pip install segmentation-models-pytorch     # the peer; not a pixelwise dependency
    python benchmarks/peer_speed.py --runs 5

Measures inference latency (batch 1, eval, inference_mode) and training step time (batch 4,
forward + cross entropy + backward + SGD), fp32 and bf16/fp16 autocast with channels_last, on the
CPU and on CUDA when available. Writes JSON with the machine, torch version, threads and sizes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import machine_info, machine_line
from torch import nn

from pixelwise.models import build_model
from pixelwise.models.complexity import count_parameters


def peer_linknet(num_classes: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Linknet("resnet18", encoder_weights=None, classes=num_classes)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor, amp: bool) -> float:
    device = x.device
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    _sync(device)
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=amp):
        if mode == "inference":
            with torch.inference_mode():
                model(x)
        else:
            loss = F.cross_entropy(model(x), y)
    if mode == "training":
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(1e-4 * p.grad)
                    p.grad = None
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # smp needs sides divisible by 32 (ours takes any size), so the default is 384x480.
    parser.add_argument("--size", type=int, nargs=2, default=[384, 480], metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "peer_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        ours = build_model("linknet", args.classes).to(device)
        peer = peer_linknet(args.classes).to(device)
        for mode, batch in (("inference", 1), ("training", 4)):
            for fast in (False, True):
                x = torch.randn(batch, 3, *args.size, device=device)
                y = torch.randint(0, args.classes, (batch, *args.size), device=device)
                fmt = torch.channels_last if fast else torch.contiguous_format
                models = {"pixelwise": ours.to(memory_format=fmt), "smp": peer.to(memory_format=fmt)}
                xi = x.contiguous(memory_format=fmt)
                for m in models.values():
                    m.train(mode == "training")
                    time_step(m, mode, xi, y, fast)  # warm-up
                times = {name: [] for name in models}
                for _ in range(args.runs):
                    for name, m in models.items():  # interleaved: load hits both alike
                        times[name].append(time_step(m, mode, xi, y, fast))
                med = {name: statistics.median(t) for name, t in times.items()}
                rows.append({
                    "device": str(device), "mode": mode, "batch": batch,
                    "amp_channels_last": fast,
                    "pixelwise_ms": 1000 * med["pixelwise"], "smp_ms": 1000 * med["smp"],
                    "ratio": med["pixelwise"] / med["smp"],
                })  # fmt: skip
    print(f"linknet vs smp.Linknet(resnet18) at {args.size[0]}x{args.size[1]}; {machine_line()}")
    print(f"params: pixelwise {count_parameters(ours):,}  smp {count_parameters(peer):,}")
    print(f"{'device':<6} {'mode':<9} {'batch':>5} {'amp+cl':>6} {'pixelwise ms':>13} {'smp ms':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['device']:<6} {r['mode']:<9} {r['batch']:>5} {str(r['amp_channels_last']):>6} "
              f"{r['pixelwise_ms']:>13.1f} {r['smp_ms']:>9.1f} {r['ratio']:>6.2f}")
    result = {"machine": machine_info(), "input_size": args.size, "runs": args.runs, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
