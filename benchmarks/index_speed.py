"""Opening a 100k-image dataset: the first open scans the folders, later opens read the cache.

Writes an ADE20K-layout tree of N image/label pairs (empty files: only the index is measured,
nothing is decoded), then times ``len(build_dataset(...))`` twice in fresh processes, so the second
open measures what a new training run pays. The cache lives in a temporary PIXELWISE_CACHE.

    python benchmarks/index_speed.py --count 100000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info

OPEN = (
    "import time, sys; t = time.perf_counter(); from pixelwise.data import build_dataset; "
    "t_import = time.perf_counter(); n = len(build_dataset('ade20k', sys.argv[1], split='train')); "
    "print(n, time.perf_counter() - t_import)"
)


def write_tree(root: Path, count: int) -> None:
    images = root / "images" / "training"
    labels = root / "annotations" / "training"
    for folder in (
        images,
        labels,
        root / "images" / "validation",
        root / "annotations" / "validation",
    ):
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, count + 1):
        name = f"ADE_train_{i:08d}"
        (images / f"{name}.jpg").touch()
        (labels / f"{name}.png").touch()


def open_once(root: Path, env: dict[str, str]) -> tuple[int, float]:
    out = subprocess.run(
        [sys.executable, "-c", OPEN, str(root)], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    return int(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "index_speed.json")
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ADEChallengeData2016"
        started = time.perf_counter()
        write_tree(root, args.count)
        print(f"wrote {args.count} pairs in {time.perf_counter() - started:.1f} s")
        env = {**os.environ, "PIXELWISE_CACHE": str(Path(tmp) / "cache")}
        n1, first = open_once(root, env)
        n2, second = open_once(root, env)
    print(f"{'open':<8} {'samples':>8} {'seconds':>8}")
    print(f"{'first':<8} {n1:>8} {first:>8.3f}")
    print(f"{'cached':<8} {n2:>8} {second:>8.3f}")
    result = {"machine": machine_info(), "count": args.count, "first_open_s": first,
              "cached_open_s": second}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
