import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from pixelwise.metrics import ConfusionMatrix, format_scores, scores_from_matrix


def test_hand_made_three_class_example():
    # target / prediction, 255 ignored:   matrix rows = truth, cols = prediction
    target = torch.tensor([[0, 0, 1, 255], [2, 2, 1, 0]])
    prediction = torch.tensor([[0, 1, 1, 2], [2, 0, 1, 0]])
    cm = ConfusionMatrix(3)
    cm.update(prediction, target)
    assert cm.matrix.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
    s = cm.compute()
    assert s.pixel_accuracy == pytest.approx(5 / 7)
    assert s.class_accuracy == pytest.approx([2 / 3, 1.0, 1 / 2])
    assert s.mean_accuracy == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    # IoU: class 0: 2 / (3 + 3 - 2); class 1: 2 / (2 + 3 - 2); class 2: 1 / (2 + 1 - 1)
    assert s.iou == pytest.approx([0.5, 2 / 3, 0.5])
    assert s.mean_iou == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert s.fw_iou == pytest.approx((3 * 0.5 + 2 * 2 / 3 + 2 * 0.5) / 7)


def test_agrees_with_sklearn_on_random_inputs_with_ignore():
    g = torch.Generator().manual_seed(0)
    c = 7
    target = torch.randint(0, c, (4, 33, 41), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.2] = 255
    prediction = torch.randint(0, c, (4, 33, 41), generator=g)
    cm = ConfusionMatrix(c)
    for i in range(4):  # accumulate batch by batch
        cm.update(prediction[i : i + 1], target[i : i + 1])
    keep = target != 255
    expected = confusion_matrix(target[keep].numpy(), prediction[keep].numpy(), labels=list(range(c)))
    assert np.array_equal(cm.matrix.numpy(), expected)
    s = cm.compute()
    inter = np.diag(expected)
    union = expected.sum(0) + expected.sum(1) - inter
    assert s.mean_iou == pytest.approx(np.mean(inter / union))
    assert s.pixel_accuracy == pytest.approx(inter.sum() / expected.sum())


def test_ignore_and_out_of_range_targets_never_counted():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([0, 1, 2, 1]), torch.tensor([255, 3, -1, 1]))
    assert cm.matrix.sum() == 1 and cm.matrix[1, 1] == 1


def test_logits_are_argmaxed():
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 2, 0, 0] = 5
    logits[0, 1, 0, 1] = 5
    cm = ConfusionMatrix(3)
    cm.update(logits, torch.tensor([[[2, 0]]]))
    assert cm.matrix[2, 2] == 1 and cm.matrix[0, 1] == 1


def test_class_absent_from_both_is_left_out_not_zero():
    m = torch.tensor([[5, 0, 0], [0, 0, 0], [1, 0, 4]])  # class 1 never seen nor predicted
    s = scores_from_matrix(m)
    assert math.isnan(s.iou[1])
    assert s.mean_iou == pytest.approx((5 / 6 + 4 / 5) / 2)
    assert "-" in format_scores(s, ["a", "b", "c"]).splitlines()[2]


def test_dataset_wide_not_per_image_mean():
    # Image 1: all class 0 correct. Image 2: class 1 half wrong. Per-image averaging differs.
    cm = ConfusionMatrix(2)
    cm.update(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))
    cm.update(torch.tensor([[1, 0]]), torch.tensor([[1, 1]]))
    s = cm.compute()
    assert s.iou == pytest.approx([4 / 5, 1 / 2])
