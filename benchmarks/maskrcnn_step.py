"""Time Mask R-CNN's training step and inference on this machine; prints a table.

    python benchmarks/maskrcnn_step.py --size 480 640 --batch 2 --steps 3
    python benchmarks/maskrcnn_step.py --size 48 64 --batch 2 --tiny    # the tests' setting

A step is what the Trainer runs: the detector's loss dict summed, backward, an SGD update. Images
are random, targets two boxes with masks per image; the model's own resize is set to the image's
size (``min_size``/``max_size``) so the stated size is the one computed on. BN is trainable
(``frozen_bn=False``: random weights with frozen identity BN give non-finite losses) with
torchvision's 3 trainable ResNet stages, as when fine-tuning from ImageNet. ``--tiny`` uses the
tests' small head settings (100/50 proposals, 32 RoIs, 5 detections) instead of torchvision's
(2000/1000, 512, 100).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pixelwise.models import build_model

TINY = {
    "rpn_post_nms_top_n_train": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 32,
    "box_detections_per_img": 5,
}


def batch(size: tuple[int, int], n: int, device: torch.device) -> tuple[list, list]:
    h, w = size
    images = [torch.randn(3, h, w, device=device) for _ in range(n)]
    targets = []
    for _ in range(n):
        masks = torch.zeros(2, h, w, dtype=torch.uint8, device=device)
        masks[0, h // 8 : h // 2, w // 8 : w // 2] = 1
        masks[1, h // 2 : 7 * h // 8, w // 3 : 5 * w // 6] = 1
        boxes = torch.tensor(
            [[w // 8, h // 8, w // 2, h // 2], [w // 3, h // 2, 5 * w // 6, 7 * h // 8]],
            dtype=torch.float32, device=device,
        )  # fmt: skip
        targets.append(
            {"boxes": boxes, "labels": torch.tensor([1, 2], device=device), "masks": masks}
        )
    return images, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--tiny", action="store_true", help="the tests' small head settings")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    h, w = args.size
    torch.manual_seed(0)
    options = {"min_size": min(h, w), "max_size": max(h, w), "frozen_bn": False}
    options.update({"trainable_backbone_layers": 3, **(TINY if args.tiny else {})})
    model = build_model("maskrcnn_resnet50_fpn", 91, **options).to(device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images, targets = batch((h, w), args.batch, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    times = []
    for k in range(args.steps + 1):
        sync()
        started = time.perf_counter()
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sync()
        if k:  # the first step warms up (allocations, oneDNN/cuDNN kernels)
            times.append(time.perf_counter() - started)
    model.eval()
    infer = []
    with torch.no_grad():
        for k in range(args.steps + 1):
            sync()
            started = time.perf_counter()
            model(images[:1])
            sync()
            if k:
                infer.append(time.perf_counter() - started)
    heads = "tests' small heads" if args.tiny else "torchvision's heads"
    print(
        f"| device | size | batch | heads | train step (s, median of {args.steps}) | inference, 1 image (s) |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.device} ({torch.get_num_threads()} threads) | {h}x{w} | {args.batch} | {heads} | "
        f"{statistics.median(times):.2f} | {statistics.median(infer):.2f} |"
    )


if __name__ == "__main__":
    main()
