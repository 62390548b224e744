"""Images per second of CamVid decode + augment through a ``torch.utils.data.DataLoader``.

What is timed: iterating a DataLoader (batch 8, shuffled) over the CamVid train split for a fixed
number of images, with ``num_workers`` 0, 1 and 2. Each sample is decoded from PNG (image and
label, :mod:`pixelwise.data.camvid`) and, unless ``--decode-only``, passed through
``build_train_transforms`` with a typical recipe (random scale 0.5-2.0, 360x480 crop padded with
ignore, horizontal flip, colour jitter 0.2, ImageNet normalisation). The first batch of each
setting is not timed (it includes worker start-up and the lazy index); each setting is timed
``--repeats`` times and the median reported. Nothing is moved to a GPU: this measures the input
pipeline alone, the budget a training step must stay above for loading not to be the bottleneck.

``torch`` intra-op threads are pinned to 1 inside workers by the DataLoader; the main process
keeps ``torch.get_num_threads()``, which the JSON records along with the machine.

Usage::

    python benchmarks/data_speed.py                          # the data home's camvid/, 256 images
    python benchmarks/data_speed.py --images 400 --workers 0 2 4 --out /tmp/speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import machine_info
from torch.utils.data import DataLoader

from pixelwise.data import build_dataset
from pixelwise.data.home import data_home

DEFAULT_ROOT = data_home() / "camvid"  # PIXELWISE_DATA, see pixelwise.data.home
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "data_speed.json"


def _train_transforms(decode_only: bool):
    """The joint augmentation, or None (with the reason) when it is off or unavailable."""
    if decode_only:
        return None, "decode only (--decode-only)"
    try:
        from pixelwise.data.transforms import build_train_transforms
    except ImportError as error:  # the transforms module is still being written
        print(f"note: pixelwise.data.transforms unavailable ({error}); timing decode only")
        return None, "decode only (transforms unavailable)"
    transforms = build_train_transforms(
        crop_size=(360, 480), scale_range=(0.5, 2.0), hflip=True, color_jitter=0.2
    )
    return transforms, "decode + scale 0.5-2 + crop 360x480 + flip + jitter 0.2 + normalise"


def time_loader(
    dataset, *, workers: int, batch_size: int, images: int, repeats: int, seed: int
) -> dict:
    """Median images/s over ``repeats`` passes of ``images`` images (first batch untimed)."""
    rates = []
    batches = max(1, images // batch_size)
    for repeat in range(repeats):
        generator = torch.Generator().manual_seed(seed + repeat)
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            generator=generator,
            drop_last=True,
            persistent_workers=False,
        )
        iterator = iter(loader)
        next(iterator)  # worker start-up and first decode are not what we measure
        start = time.perf_counter()
        done = 0
        for _ in range(batches):
            try:
                images_batch, _ = next(iterator)
            except StopIteration:  # the split is smaller than asked: start another epoch
                iterator = iter(loader)
                images_batch, _ = next(iterator)
            done += images_batch.shape[0]
        rates.append(done / (time.perf_counter() - start))
        del iterator
    return {
        "num_workers": workers,
        "images": batches * batch_size,
        "images_per_s": round(statistics.median(rates), 2),
        "all_images_per_s": [round(r, 2) for r in rates],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="CamVid root")
    parser.add_argument("--split", default="train")
    parser.add_argument("--images", type=int, default=256, help="images timed per setting")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-only", action="store_true", help="skip the augmentation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads of the main process"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results file")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transforms, pipeline = _train_transforms(args.decode_only)
    dataset = build_dataset("camvid", args.root, split=args.split, transforms=transforms)
    print(f"camvid {args.split}: {len(dataset)} images; {pipeline}; batch {args.batch_size}")
    rows = [
        time_loader(
            dataset,
            workers=w,
            batch_size=args.batch_size,
            images=args.images,
            repeats=args.repeats,
            seed=args.seed,
        )
        for w in args.workers
    ]

    print(f"{'workers':>7}  {'images':>6}  {'images/s':>9}  {'vs 0':>6}")
    base = rows[0]["images_per_s"] or 1.0
    for row in rows:
        print(
            f"{row['num_workers']:>7}  {row['images']:>6}  {row['images_per_s']:>9.1f}  "
            f"{row['images_per_s'] / base:>5.2f}x"
        )
    result = {
        "benchmark": "data_speed",
        "dataset": "camvid",
        "split": args.split,
        "pipeline": pipeline,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "machine": machine_info(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
