"""Score a trained DecoupledNet's two stages apart: its classifier, and its segmentation given the
true image-level labels instead of the classifier's detections.

The combined map needs both; when it scores low this says which stage is short.

    python benchmarks/decouplednet_parts.py runs/decouplednet_shapes/best.pt

Prints the classifier's accuracy (each class present/absent at the model's threshold) and mean
BCE, and the val mIoU of the combined map with the detected classes and with the true ones.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from pixelwise.data.subset import image_labels_of
from pixelwise.engine.evaluate import split_dataset
from pixelwise.engine.model_io import load_model
from pixelwise.metrics import ConfusionMatrix
from pixelwise.models.decouplednet import DecoupledNet
from pixelwise.tasks import build_task as task_for


@contextmanager
def true_labels_as_detections(model: DecoupledNet, present: torch.Tensor) -> Iterator[None]:
    """Within the block the model segments the classes ``present`` (N x K booleans) names instead
    of the ones its classifier detects: the segmentation stage scored on its own."""
    detect = model.detect
    model.detect = lambda _feats: present
    try:
        yield
    finally:
        model.detect = detect


@torch.no_grad()
def score(checkpoint: str) -> dict[str, float]:
    loaded = load_model(checkpoint, device="cpu")
    model, classes = loaded.model, len(loaded.classes)
    task = task_for(loaded.config, classes, loaded.classes, loaded.palette)
    dataset, _ = split_dataset(loaded.config, None, None)
    transforms = task.eval_transforms()
    detected_cm = ConfusionMatrix(classes, device="cpu")
    oracle_cm = ConfusionMatrix(classes, device="cpu")
    correct = total = 0
    bce = 0.0
    for i in range(len(dataset)):
        image, mask = transforms(*dataset[i])
        x = image[None]
        truth = image_labels_of(mask, classes)[None, 1:]
        feats = model.features(model.to_network(x))
        logits = feats.class_logits
        bce += float(F.binary_cross_entropy_with_logits(logits, truth)) / len(dataset)
        correct += int(((torch.sigmoid(logits) > model.threshold) == (truth > 0)).sum())
        total += truth.numel()
        detected_cm.update(model(x).argmax(1), mask[None])
        with true_labels_as_detections(model, truth > 0):
            oracle_cm.update(model(x).argmax(1), mask[None])
    return {
        "classifier_accuracy": correct / total,
        "classifier_bce": bce,
        "miou_detected": detected_cm.compute().mean_iou,
        "miou_true_labels": oracle_cm.compute().mean_iou,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    args = parser.parse_args()
    for key, value in score(args.checkpoint).items():
        print(f"{key:<22} {value:.4f}")


if __name__ == "__main__":
    main()
