"""Does a CamVid recipe learn the scene or the training sequences? Val against a held-out sequence.

CamVid's val split (SegNet release: 101 frames) is cut from sequence 0016E5, whose other 204
frames are in train, so a network that memorises that drive scores well on val. The papers report
the test split, which holds other drives; this machine has train and val only. So this script
holds one whole training sequence out (0006R0 by default, 101 frames, never seen in training) and
trains on the rest (0001TP + 0016E5, 266 frames), then scores every stage on both:

* ``val``  — the official val frames, same drive as most training frames;
* ``held`` — the held-out drive, the stand-in for the papers' test split.

The variants are fixed here, from the papers, before any run; none is chosen by its val score:

* ``paper``   — the recipe as written (ENet's: whole frames, no augmentation);
* ``augment`` — the augmentation the CamVid papers that used one describe (FC-DenseNet Sec. 4.1:
  random crops and flips; here crops of the same share of the frame and a horizontal flip);
* ``finish``  — ``paper`` for the first part of the budget at the reduced size, then the rest at
  the labels' full 360x480 (``model.init`` from the reduced run's last.pt), the "full-size finish".

Scores are at the labels' 360x480 (``data.score_at: label``), as the papers score. Prints a table
per stage and writes JSON (mIoU and per-class IoU of both splits, the gap, iterations, wall time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from machine import machine_info, machine_line

from pixelwise.config import load_config
from pixelwise.data.home import data_home
from pixelwise.engine.evaluate import evaluate_checkpoint
from pixelwise.engine.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("paper", "augment", "finish")


def heldout_root(source: Path, held: str, out: Path) -> Path:
    """A CamVid root whose train list drops sequence ``held`` and whose test list is that sequence.

    The frames are not copied: the split folders are links to ``source``'s.
    """
    root = out / f"camvid_without_{held}"
    root.mkdir(parents=True, exist_ok=True)
    for folder in ("train", "trainannot", "val", "valannot"):
        link = root / folder
        if not link.exists():
            link.symlink_to((source / folder).resolve(), target_is_directory=True)
    for folder, target in (("test", "train"), ("testannot", "trainannot")):
        link = root / folder
        if not link.exists():
            link.symlink_to((source / target).resolve(), target_is_directory=True)
    frames = sorted(p.name for p in (source / "train").glob("*.png"))
    kept = [f for f in frames if not f.startswith(held + "_")]
    left = [f for f in frames if f.startswith(held + "_")]
    if not left:
        raise SystemExit(f"no training frame of sequence {held!r} in {source / 'train'}")
    (root / "train.txt").write_text("".join(f"train/{f} trainannot/{f}\n" for f in kept))
    (root / "test.txt").write_text("".join(f"train/{f} trainannot/{f}\n" for f in left))
    (root / "val.txt").write_text(
        "".join(f"val/{p.name} valannot/{p.name}\n" for p in sorted((source / "val").glob("*.png")))
    )
    return root


def stage_overrides(args, root: Path, variant: str, stage: str, iters: int) -> list[str]:
    size = args.size if stage == "reduced" else [360, 480]
    overrides = [
        f"data.root={root}",
        f"data.resize=[{size[0]},{size[1]}]",
        f"data.num_workers={args.workers}",
        "data.val_batch_size=4",
        "data.score_at=label",
        f"train.iters={iters}",
        "train.epochs=null",
        f"train.eval_every={iters}",
        f"train.out_dir={args.out}",
        "train.device=cpu" if not torch.cuda.is_available() else "train.device=cuda",
        f"name={variant}_{stage}",
    ]
    if variant == "augment":
        # FC-DenseNet crops 224x224 out of 360x480 frames: the same share of a reduced frame.
        crop = [round(size[0] * 224 / 360), round(size[1] * 224 / 480)]
        overrides += [f"data.crop_size=[{crop[0]},{crop[1]}]", "data.hflip=true"]
    return overrides


def scores_of(checkpoint: Path, split: str) -> dict:
    report = evaluate_checkpoint(checkpoint, split=split, device="auto").report
    return {"mIoU": report.mean_iou, "iou": [float(v) for v in report.iou]}


def train_to(args, root: Path, variant: str, stage: str, iters: int, resume, init) -> Trainer:
    overrides = stage_overrides(args, root, variant, stage, iters)
    if init is not None:
        overrides.append(f"model.init={init}")
    config = load_config(args.config, overrides)
    trainer = Trainer.from_config(config, resume=resume, progress="quiet")
    trainer.fit()
    trainer.close()
    return trainer


def run_variant(args, root: Path, variant: str) -> list[dict]:
    rows = []
    resume, init, started = None, None, time.perf_counter()
    epoch_iters = None
    for done, iters in enumerate(args.stages):
        finishing = variant == "finish" and done == len(args.stages) - 1
        stage = "full" if finishing else "reduced"
        if finishing:
            # The last stage restarts at 360x480 from the reduced run's weights (a new run).
            init, resume = resume, None
            iters = iters - args.stages[done - 1]
        trainer = train_to(args, root, variant, stage, iters, resume, init)
        epoch_iters = epoch_iters or trainer.iters_per_epoch
        last = trainer.run_dir / "last.pt"
        val, held = scores_of(last, "val"), scores_of(last, "test")
        classes = list(trainer.classes)
        total = args.stages[done]
        rows.append({
            "variant": variant, "stage": stage, "iters": total,
            "epochs": round(total / epoch_iters, 1), "val": val, "held": held,
            "gap": val["mIoU"] - held["mIoU"], "classes": classes,
            "wall_seconds": time.perf_counter() - started, "run_dir": str(trainer.run_dir),
        })  # fmt: skip
        print(
            f"{variant:8s} {stage:8s} {total:5d} it ({rows[-1]['epochs']:5.1f} ep): val "
            f"{100 * val['mIoU']:.2f}  held-out {100 * held['mIoU']:.2f}  gap "
            f"{100 * rows[-1]['gap']:.2f}  ({rows[-1]['wall_seconds']:.0f} s)", flush=True,
        )  # fmt: skip
        resume = last
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "enet_camvid.yaml"))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--held", default="0006R0", help="the training sequence held out")
    parser.add_argument("--data", default=str(data_home() / "camvid"))
    parser.add_argument("--size", type=int, nargs=2, default=[180, 240], metavar=("H", "W"))
    parser.add_argument(
        "--stages",
        type=int,
        nargs="+",
        default=[270, 540, 1080],
        help="cumulative iterations after which both splits are scored",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", default="runs/generalisation")
    parser.add_argument(
        "--json", default=str(ROOT / "benchmarks" / "results" / "camvid_generalisation.json")
    )
    args = parser.parse_args()
    root = heldout_root(Path(args.data), args.held, Path(args.out))
    results = []
    json_path = Path(args.json)
    for variant in args.variants:
        results += run_variant(args, root, variant)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({
            "config": args.config, "held_out_sequence": args.held, "size": args.size,
            "machine": machine_info(), "rows": results,
        }, indent=2))  # fmt: skip
    print(machine_line())


if __name__ == "__main__":
    main()
