"""Train a network on the real CamVid train split for a fixed budget; report val mIoU and speed.

Reduced resolution and a fixed iteration budget make this a CPU-sized check that the whole path
(real loader, augmentation, loss with class weights, schedule, evaluation) learns on real data. It
is not the paper's result: the papers train for hundreds of epochs at full size on a GPU.

    python benchmarks/train_camvid.py --model unet --iters 300 --size 180 240
    python benchmarks/train_camvid.py --config configs/enet_camvid.yaml --iters 600 --size 180 240

Prints the per-class IoU table and writes JSON with the machine, torch version, threads, input
size, budget, val mIoU, per-class IoU and training images/s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine import machine_info, machine_line

from pixelwise.config import config_from_dict, load_config
from pixelwise.data.home import data_home
from pixelwise.engine.train import Trainer
from pixelwise.metrics import format_scores

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = data_home() / "camvid"  # PIXELWISE_DATA, see pixelwise.data.home


def unet_config(args) -> dict:
    """A small same-padding U-Net with batch norm: the quickest U-Net to train on a CPU."""
    return {
        "name": "unet_camvid_bench",
        "model": {"name": "unet", "options": {"padding": "same", "base_channels": args.width, "batch_norm": True}},
        "data": {"dataset": "camvid", "batch_size": args.batch},
        "optim": {"name": "adam", "lr": 2e-3, "weight_decay": 1e-4},
        "schedule": {"name": "poly", "warmup_iters": 20},
        "loss": {"class_weights": "median_frequency"},
        "train": {"iters": args.iters},
    }  # fmt: skip


def build_config(args):
    overrides = [
        f"data.root={args.data}",
        f"data.resize=[{args.size[0]},{args.size[1]}]",
        "data.crop_size=null",
        f"data.num_workers={args.workers}",
        "data.val_batch_size=8",
        f"train.iters={args.iters}",
        "train.epochs=null",
        f"train.eval_every={args.iters}",
        "train.device=cpu" if not torch.cuda.is_available() else "train.device=cuda",
        f"train.out_dir={args.out_dir}",
    ]
    if args.config:
        cfg = load_config(args.config, overrides + [f"data.batch_size={args.batch}"])
    else:
        data = unet_config(args)
        from pixelwise.config import apply_overrides

        apply_overrides(data, overrides, "benchmark")
        cfg = config_from_dict(data, "benchmark")
    return cfg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="a recipe from configs/ (default: a small U-Net)")
    parser.add_argument("--model", default="unet", choices=["unet"], help="used when no --config")
    parser.add_argument("--width", type=int, default=16, help="U-Net base channels")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--size", type=int, nargs=2, default=[180, 240], metavar=("H", "W"))
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out-dir", default="runs/benchmarks")
    parser.add_argument(
        "--json", default=str(ROOT / "benchmarks" / "results" / "train_camvid.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = build_config(args)
    started = time.perf_counter()
    trainer = Trainer.from_config(cfg, progress=False)
    scores = trainer.fit()
    seconds = time.perf_counter() - started
    classes = list(trainer.classes)
    print(format_scores(scores, classes))
    result = {
        "model": cfg.model.name,
        "config": args.config or "benchmarks/train_camvid.py:unet_config",
        "model_options": cfg.model.options,
        "machine": machine_info(),
        "device": str(trainer.device),
        "input_size": list(args.size),
        "batch_size": args.batch,
        "iters": args.iters,
        "epochs": round(args.iters * args.batch / len(trainer.train_set), 2),
        "val_mIoU": scores.mean_iou,
        "val_pixel_accuracy": scores.pixel_accuracy,
        "val_iou": dict(zip(classes, scores.iou, strict=True)),
        "train_images_per_s": trainer.train_images_per_s,
        "wall_seconds": seconds,
    }
    print(
        f"{cfg.model.name}: val mIoU {100 * scores.mean_iou:.2f} after {args.iters} iterations "
        f"(batch {args.batch}, {args.size[0]}x{args.size[1]}), {trainer.train_images_per_s:.1f} "
        f"train images/s, {seconds:.0f} s on {result['device']}; {machine_line()}"
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
