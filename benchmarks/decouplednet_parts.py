"""Score a trained DecoupledNet's two stages apart: its classifier, and its segmentation given the
true image-level labels instead of the classifier's detections.

The combined map needs both; when it scores low this says which stage is short.

    python benchmarks/decouplednet_parts.py runs/decouplednet_shapes/best.pt

Prints the classifier's accuracy (each class present/absent at the model's threshold) and mean
BCE, and the val mIoU of the combined map with the detected classes and with the true ones.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from pixelwise.data.subset import image_labels_of
from pixelwise.engine.evaluate import split_dataset
from pixelwise.engine.model_io import load_model
from pixelwise.engine.task import task_for
from pixelwise.metrics import ConfusionMatrix


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
    detect = model.detect
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
        model.detect = lambda _feats, truth=truth: truth > 0  # the true labels as detections
        try:
            oracle_cm.update(model(x).argmax(1), mask[None])
        finally:
            model.detect = detect
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
