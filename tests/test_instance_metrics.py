"""Painting instances into a class map, COCO box/mask AP through COCOeval, and COCO results."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from pixelwise.instance_metrics import (
    COCO_METRICS,
    CocoEvaluator,
    detections_to_coco_results,
    paint_ground_truth,
    paint_instances,
)

# -- painting ------------------------------------------------------------------------------------


def square(
    size: tuple[int, int], top: int, left: int, side: int, value: float = 1.0
) -> torch.Tensor:
    mask = torch.zeros(size)
    mask[top : top + side, left : left + side] = value
    return mask


def test_overlaps_go_to_the_higher_score_whatever_the_order():
    a, b = square((8, 8), 0, 0, 5), square((8, 8), 3, 3, 5)  # overlap rows/cols 3..4
    for order in ([0, 1], [1, 0]):
        masks = torch.stack([a, b])[order][:, None]  # N x 1 x H x W, as the model returns
        labels = torch.tensor([1, 2])[order]
        scores = torch.tensor([0.6, 0.9])[order]
        painted = paint_instances(masks, labels, scores, (8, 8))
        assert painted.dtype == torch.int64 and painted.shape == (8, 8)
        assert painted[0, 0] == 1 and painted[7, 7] == 2
        assert (painted[3:5, 3:5] == 2).all()  # class 2 scored higher
        assert painted[0, 7] == 0 and painted[7, 0] == 0  # background


def test_score_and_mask_thresholds_are_honoured():
    a = square((6, 6), 0, 0, 3, value=0.7)
    b = square((6, 6), 3, 3, 3, value=0.4)  # a weak mask probability
    masks, labels = torch.stack([a, b]), torch.tensor([3, 4])
    painted = paint_instances(masks, labels, torch.tensor([0.3, 0.9]), (6, 6), score_threshold=0.5)
    assert painted.sum() == 0  # a scores below 0.5; b's mask is below 0.5 everywhere
    painted = paint_instances(
        masks, labels, torch.tensor([0.3, 0.9]), (6, 6), score_threshold=0.2, mask_threshold=0.3
    )
    assert (painted[:3, :3] == 3).all() and (painted[3:, 3:] == 4).all()


def test_no_detections_paint_background_at_the_given_size():
    empty = paint_instances(
        torch.zeros(0, 1, 4, 5), torch.zeros(0, dtype=torch.long), torch.zeros(0), (4, 5)
    )
    assert empty.shape == (4, 5) and empty.dtype == torch.int64 and empty.sum() == 0


def test_ground_truth_paints_crowds_and_class_conflicts_as_ignore():
    a, b, c = square((8, 8), 0, 0, 4), square((8, 8), 2, 2, 4), square((8, 8), 6, 6, 2)
    d = square((8, 8), 0, 0, 2)  # same class as a, inside it: no conflict
    masks = torch.stack([a, b, c, d]).to(torch.uint8)
    painted = paint_ground_truth(masks, torch.tensor([1, 2, 1, 1]), torch.tensor([0, 0, 1, 0]))
    assert painted.dtype == torch.int64
    assert painted[0, 0] == 1 and painted[1, 3] == 1 and painted[5, 5] == 2
    assert (painted[2:4, 2:4] == 255).all()  # classes 1 and 2 overlap
    assert (painted[6:, 6:] == 255).all()  # the crowd
    assert painted[0, 7] == 0


# -- COCO evaluation ----------------------------------------------------------------------------

SIZE = (64, 80)


def target(image_id: int, squares: list[tuple[int, int, int, int]], crowd=()) -> dict:
    """(label, top, left, side) squares as a torchvision detection target."""
    masks = (
        torch.stack([square(SIZE, t, x, s) for _, t, x, s in squares]).to(torch.uint8)
        if squares
        else torch.zeros(0, *SIZE, dtype=torch.uint8)
    )
    boxes = torch.tensor([[x, t, x + s, t + s] for _, t, x, s in squares], dtype=torch.float32)
    return {
        "boxes": boxes.reshape(-1, 4),
        "labels": torch.tensor([c for c, *_ in squares], dtype=torch.int64),
        "masks": masks,
        "iscrowd": torch.tensor([int(i in crowd) for i in range(len(squares))], dtype=torch.int64),
        "image_id": image_id,
    }


def as_detections(t: dict, scores=None, drop=()) -> dict:
    keep = [i for i in range(len(t["labels"])) if i not in drop and not t["iscrowd"][i]]
    n = len(keep)
    return {
        "boxes": t["boxes"][keep],
        "labels": t["labels"][keep],
        "scores": torch.ones(n) if scores is None else torch.tensor(scores, dtype=torch.float32),
        "masks": t["masks"][keep].float()[:, None],
    }


def dataset() -> list[dict]:
    return [
        target(7, [(1, 2, 2, 20), (2, 30, 40, 12), (1, 40, 5, 16)]),
        target(9, [(2, 10, 10, 30), (1, 5, 50, 20)], crowd=(1,)),  # a crowd of class 1
        target(11, []),  # an image without objects
    ]


def evaluate(pairs: list[tuple[dict, dict]], num_classes: int = 3) -> dict:
    evaluator = CocoEvaluator(num_classes)
    evaluator.update([d for d, _ in pairs], [t for _, t in pairs])
    return evaluator.compute()


def test_ground_truth_as_detections_scores_ap_one_for_boxes_and_masks(capsys):
    results = evaluate([(as_detections(t), t) for t in dataset()])
    assert set(results) == {"bbox", "segm"}
    for iou_type in ("bbox", "segm"):
        assert set(results[iou_type]) == set(COCO_METRICS)
        assert all(type(v) is float for v in results[iou_type].values())
        assert results[iou_type]["AP"] == pytest.approx(1.0)
        assert results[iou_type]["AP50"] == pytest.approx(1.0)
        assert results[iou_type]["APl"] == -1.0  # no object above 96^2 pixels
    assert capsys.readouterr().out == ""  # COCOeval's printing is captured


def test_a_missing_detection_lowers_ap():
    images = dataset()
    pairs = [(as_detections(images[0], drop=(2,)), images[0])]
    pairs += [(as_detections(t), t) for t in images[1:]]
    results = evaluate(pairs)
    assert 0.0 < results["bbox"]["AP"] < 0.99
    assert 0.0 < results["segm"]["AP"] < 0.99


def test_detections_on_a_crowd_region_are_ignored_but_elsewhere_count_as_false():
    images = dataset()
    crowd = images[1]
    # The true objects found with score 0.5, and two detections of class 1 exactly on the crowd
    # scored above them (COCOeval ranks a tie by image order): were the crowd an object, one of
    # the two would be a false positive ranked first.
    true = [as_detections(t, scores=[0.5] * n) for t, n in zip(images, (3, 1, 0), strict=True)]
    twice = crowd["masks"][1:2].float()[:, None].repeat(2, 1, 1, 1)
    on_crowd = {
        "boxes": crowd["boxes"][1:2].repeat(2, 1),
        "labels": torch.tensor([1, 1]),
        "scores": torch.ones(2),
        "masks": twice,
    }
    with_crowd = {k: torch.cat([true[1][k], on_crowd[k]]) for k in on_crowd}
    results = evaluate([(true[0], images[0]), (with_crowd, crowd), (true[2], images[2])])
    assert results["segm"]["AP"] == pytest.approx(1.0)
    assert results["bbox"]["AP"] == pytest.approx(1.0)
    # The same two detections on the image without objects are false positives.
    results = evaluate([(true[0], images[0]), (true[1], crowd), (on_crowd, images[2])])
    assert results["segm"]["AP"] < 0.99 and results["bbox"]["AP"] < 0.99


def test_no_detections_score_zero_and_no_images_minus_one():
    results = evaluate([(as_detections(t, drop=(0, 1, 2)), t) for t in dataset()])
    assert results["bbox"]["AP"] == 0.0 and results["segm"]["AP"] == 0.0
    assert CocoEvaluator(3).compute()["segm"]["AP"] == -1.0


def test_merge_counts_each_image_once():
    images = dataset()
    first, second = CocoEvaluator(3), CocoEvaluator(3)
    first.update([as_detections(images[0], drop=(2,))], [images[0]])
    second.update([as_detections(t) for t in images[1:]], images[1:])
    # A repeated image (a distributed sampler's padding) must not count twice.
    second.update([as_detections(images[0])], [images[0]])
    first.merge([second.state()])
    assert sorted(first.images) == [7, 9, 11]
    one = evaluate(
        [(as_detections(images[0], drop=(2,)), images[0])]
        + [(as_detections(t), t) for t in images[1:]]
    )
    assert first.compute() == one


# -- COCO results --------------------------------------------------------------------------------


def test_detections_become_coco_results_with_rle_masks_and_category_ids():
    t = target(5, [(1, 2, 2, 10), (2, 20, 30, 8)])
    found = as_detections(t, scores=[0.9, 0.3])
    found["masks"] = found["masks"] * 0.8  # probabilities
    results = detections_to_coco_results(found, 5, category_ids=[0, 17, 42], score_threshold=0.5)
    assert len(results) == 1
    (r,) = results
    assert r["image_id"] == 5 and r["category_id"] == 17 and r["score"] == pytest.approx(0.9)
    assert r["bbox"] == [2.0, 2.0, 10.0, 10.0]
    assert isinstance(r["segmentation"]["counts"], str) and r["segmentation"]["size"] == list(SIZE)
    json.dumps(results)
    decoded = mask_utils.decode(
        {**r["segmentation"], "counts": r["segmentation"]["counts"].encode()}
    )
    assert np.array_equal(decoded, t["masks"][0].numpy())
