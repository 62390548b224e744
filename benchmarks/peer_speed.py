"""pixelwise against a peer implementation of the same network, in the same run.

Two comparisons (``--networks``):

- ``linknet`` against segmentation_models_pytorch's ``Linknet`` with a ResNet-18 encoder — the
  same architecture (11.66M vs 11.54M parameters: smp's decoder blocks differ slightly in their
  bias and BN placement). Inference at batch 1, a training step at batch 4, at ``--size``.
- ``pspnet50`` against pytorch-semseg's PSPNet-50 (``ptsemseg.models.pspnet.pspnet(n_classes=150,
  version="ade20k")``, built from the class, never downloaded; a checkout named by PIXELWISE_PEERS): the
  same network, 46,782,550 parameters each plus the same 2,398,358 of the auxiliary head. Inference
  at batch 1 and 473x473 (the peer's fixed pooling kernels assume a res5 side divisible by 6),
  a training step at batch 2 and 233x233 (res5 30x30), both with the auxiliary head on: ours
  returns it at the input size, the peer at 1/8, which the loss upsamples (as the peer's own loss
  does); the main and auxiliary cross entropies are summed with weight 0.4.

Each pair is timed interleaved, call by call, so machine load hits both alike (which is why this
script times single calls itself, with pixelwise.bench's autocast and synchronisation, instead of
pixelwise.bench's per-network medians); the table reports
our time over the peer's (below 1 = we are faster), the median of ``--runs`` after a warm-up. Rows
are fp32, and bf16 autocast (fp16 on CUDA) with channels_last — pixelwise's fast path — for both.

    pip install segmentation-models-pytorch     # the linknet peer; not a pixelwise dependency
    pip install protobuf scipy                  # what pytorch-semseg imports
    python benchmarks/peer_speed.py --networks pspnet50 --runs 3

Writes JSON with the machine, torch version, threads and sizes; a run of some networks keeps the
other networks' entries of an existing file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import machine_info, machine_line
from torch import Tensor, nn

from pixelwise.bench import synchronize
from pixelwise.engine.precision import decide_precision
from pixelwise.models import build_model
from pixelwise.models.complexity import count_parameters

# The folder holding a checkout of pytorch-semseg (its last commit, MIT), e.g. PEERS/pytorch-semseg.
PEERS_VARIABLE = "PIXELWISE_PEERS"
AUX_WEIGHT = 0.4  # PSPNet's auxiliary loss weight


def peer_linknet(num_classes: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Linknet("resnet18", encoder_weights=None, classes=num_classes)


def peer_pspnet50(num_classes: int) -> nn.Module:
    # Its bundled Caffe protobuf module needs the pure-Python protobuf backend.
    os.environ.setdefault("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
    if not os.environ.get(PEERS_VARIABLE):
        raise SystemExit(
            f"pspnet50 runs against pytorch-semseg: set {PEERS_VARIABLE} to the folder holding its "
            "checkout (git clone https://github.com/meetshah1995/pytorch-semseg)."
        )
    root = str((Path(os.environ[PEERS_VARIABLE]).expanduser() / "pytorch-semseg").resolve())
    if root not in sys.path:
        sys.path.insert(0, root)
    from ptsemseg.models.pspnet import pspnet

    return pspnet(n_classes=num_classes, version="ade20k")


# A training forward returns the main logits and the auxiliary ones (empty without a head).
TrainForward = Callable[[nn.Module, Tensor], tuple[Tensor, list[Tensor]]]


def plain(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    return model(x), []


def pixelwise_aux(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    logits, aux = model(x, return_aux=True)
    return logits, aux


def ptsemseg_aux(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    logits, aux = model(x)  # in train mode the peer returns (logits, aux at 1/8)
    return logits, [aux]


def loss_of(logits: Tensor, aux: list[Tensor], y: Tensor) -> Tensor:
    loss = F.cross_entropy(logits, y)
    for a in aux:
        if a.shape[-2:] != y.shape[-2:]:
            a = F.interpolate(a, size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = loss + AUX_WEIGHT * F.cross_entropy(a, y)
    return loss


def time_step(
    model: nn.Module, forward: TrainForward, mode: str, x: Tensor, y: Tensor, amp: bool
) -> float:
    device = x.device
    synchronize(device)
    start = time.perf_counter()
    with decide_precision(amp, device).autocast():
        if mode == "inference":
            with torch.inference_mode():
                model(x)
        else:
            loss = loss_of(*forward(model, x), y)
    if mode == "training":
        loss.backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(1e-4 * p.grad)
                    p.grad = None
    synchronize(device)
    return time.perf_counter() - start


# network: (peer name, peer builder, our build options, our / the peer's training forward,
#           classes, (batch, size) per mode or None for --size)
COMPARISONS = {
    "linknet": ("smp", peer_linknet, {}, plain, plain, 11, {"inference": 1, "training": 4}),
    "pspnet50": (
        "ptsemseg",
        peer_pspnet50,
        {"aux": True},
        pixelwise_aux,
        ptsemseg_aux,
        150,
        {"inference": (1, (473, 473)), "training": (2, (233, 233))},
    ),
}


CELLS = ["inference:fp32", "inference:amp", "training:fp32", "training:amp"]


def compare(network: str, args: argparse.Namespace, device: torch.device) -> dict:
    peer_name, build_peer, options, our_forward, peer_forward, classes, cells = COMPARISONS[network]
    torch.manual_seed(0)
    ours = build_model(network, classes, **options).to(device)
    peer = build_peer(classes).to(device)
    rows = []
    for mode, cell in cells.items():
        batch, size = cell if isinstance(cell, tuple) else (cell, tuple(args.size))
        for fast in (False, True):
            if f"{mode}:{'amp' if fast else 'fp32'}" not in args.cells:
                continue
            x = torch.randn(batch, 3, *size, device=device)
            y = torch.randint(0, classes, (batch, *size), device=device)
            fmt = torch.channels_last if fast else torch.contiguous_format
            models = {
                "pixelwise": (ours.to(memory_format=fmt), our_forward),
                peer_name: (peer.to(memory_format=fmt), peer_forward),
            }
            xi = x.contiguous(memory_format=fmt)
            for m, forward in models.values():
                m.train(mode == "training")
                time_step(m, forward, mode, xi, y, fast)  # warm-up
            times = {name: [] for name in models}
            for _ in range(args.runs):
                for name, (m, forward) in models.items():  # interleaved: load hits both alike
                    times[name].append(time_step(m, forward, mode, xi, y, fast))
            med = {name: statistics.median(t) for name, t in times.items()}
            rows.append({
                "device": str(device), "mode": mode, "batch": batch, "size": list(size),
                "amp_channels_last": fast,
                "pixelwise_ms": 1000 * med["pixelwise"], f"{peer_name}_ms": 1000 * med[peer_name],
                "ratio": med["pixelwise"] / med[peer_name],
            })  # fmt: skip
            print(
                f"{network} {mode} amp+cl={fast}: pixelwise {times['pixelwise']} "
                f"{peer_name} {times[peer_name]} ratio {rows[-1]['ratio']:.2f}",
                flush=True,
            )
    return {
        "peer": peer_name,
        "params": {"pixelwise": count_parameters(ours), peer_name: count_parameters(peer)},
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # smp needs sides divisible by 32 (ours takes any size), so linknet's default is 384x480.
    parser.add_argument("--size", type=int, nargs=2, default=[384, 480], metavar=("H", "W"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--networks", nargs="+", choices=sorted(COMPARISONS), default=sorted(COMPARISONS)
    )
    parser.add_argument(
        "--cells",
        nargs="+",
        choices=CELLS,
        default=CELLS,
        help="which mode:setting cells to time (amp = bf16/fp16 autocast + channels_last)",
    )
    parser.add_argument("--cpu-only", action="store_true", help="skip CUDA even when present")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "peer_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available() and not args.cpu_only
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if cuda else [])
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    for network in args.networks:
        entries = [compare(network, args, device) for device in devices]
        rows = [row for entry in entries for row in entry["rows"]]
        peer = entries[0]["peer"]
        print(f"{network} vs {peer}; {machine_line()}")
        print(f"params: {entries[0]['params']}")
        print(f"{'device':<6} {'mode':<9} {'batch':>5} {'size':>9} {'amp+cl':>6} "
              f"{'pixelwise ms':>13} {peer + ' ms':>12} {'ratio':>6}")  # fmt: skip
        for r in rows:
            size = "x".join(map(str, r["size"]))
            print(f"{r['device']:<6} {r['mode']:<9} {r['batch']:>5} {size:>9} "
                  f"{str(r['amp_channels_last']):>6} {r['pixelwise_ms']:>13.1f} "
                  f"{r[peer + '_ms']:>12.1f} {r['ratio']:>6.2f}")  # fmt: skip
        if network == "linknet":  # the file's original top-level layout
            result.update(machine=machine_info(), input_size=args.size, runs=args.runs, rows=rows)
        else:
            result[network] = {
                "machine": machine_info(),
                "runs": args.runs,
                "peer": peer,
                "params": entries[0]["params"],
                "rows": rows,
            }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
