import math

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from pixelwise import metrics
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
    expected = confusion_matrix(
        target[keep].numpy(), prediction[keep].numpy(), labels=list(range(c))
    )
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


# The counting paths: the CPU one sizes a histogram from the labels' value range; the device one
# sends invalid pixels to one extra bin so that it never reads a value back to the host.
def _reference_matrix(
    prediction: torch.Tensor, target: torch.Tensor, c: int, ignore: int
) -> torch.Tensor:
    """The plain definition: drop ignore/out-of-range targets, clamp predictions into 0..C-1."""
    t = target.long().reshape(-1)
    p = prediction.long().reshape(-1).clamp(0, c - 1)
    keep = (t >= 0) & (t < c) & (t != ignore)
    return torch.bincount(t[keep] * c + p[keep], minlength=c * c).view(c, c)


PATHS = [metrics._counts_by_value_range, metrics._counts_with_spill_bin]


@pytest.mark.parametrize("count", PATHS, ids=["value_range", "spill_bin"])
def test_hand_computed_matrix_with_ignore_and_out_of_range_values(count):
    # C = 3. Targets 255 (ignore), 3 and -1 (out of range) are never counted; predictions outside
    # 0..2 count as the nearest class (-4 -> 0, 9 -> 2), as ConfusionMatrix always did.
    target = torch.tensor([0, 0, 1, 255, 2, 3, -1, 1, 2, 0])
    prediction = torch.tensor([0, 9, 1, 0, -4, 1, 2, 2, 2, -4])
    expected = [[2, 0, 1], [0, 1, 1], [1, 0, 1]]
    assert count(prediction, target, 3, 255).tolist() == expected


@pytest.mark.parametrize("count", PATHS, ids=["value_range", "spill_bin"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_small_integer_label_types_agree_with_the_definition(count, dtype):
    g = torch.Generator().manual_seed(1)
    c = 5
    low = 0 if dtype == torch.uint8 else -3
    target = torch.randint(low, 8, (2, 17, 23), generator=g).to(dtype)
    prediction = torch.randint(low, 8, (2, 17, 23), generator=g).to(dtype)
    if dtype != torch.int8:  # 255 does not fit int8
        target[torch.rand(target.shape, generator=g) < 0.2] = 255
        prediction[torch.rand(target.shape, generator=g) < 0.1] = 200
    got = count(prediction, target, c, 255)
    assert got.dtype == torch.int64
    assert torch.equal(got, _reference_matrix(prediction, target, c, 255))
    assert prediction.dtype == dtype and target.dtype == dtype  # inputs untouched


@pytest.mark.parametrize("count", PATHS, ids=["value_range", "spill_bin"])
def test_values_far_outside_the_classes_and_the_index_type(count):
    # Far values force the CPU path to clamp before narrowing; 40000 would wrap in int16.
    target = torch.tensor([[1, 40000, -70000, 2**40, 0, 255, 1]])
    prediction = torch.tensor([[1, 0, 1, 1, 2**40, 1, -(2**40)]])
    assert count(prediction, target, 3, 255).tolist() == [[0, 0, 1], [1, 1, 0], [0, 0, 0]]
    expected = _reference_matrix(prediction, target, 3, 255)
    assert torch.equal(count(prediction, target, 3, 255), expected)


@pytest.mark.parametrize("count", PATHS, ids=["value_range", "spill_bin"])
def test_ignore_index_inside_the_classes_is_dropped(count):
    target = torch.tensor([0, 1, 1, 2], dtype=torch.int16)
    prediction = torch.tensor([0, 1, 2, 2], dtype=torch.int16)
    assert count(prediction, target, 3, 1).tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]


@pytest.mark.parametrize("count", PATHS, ids=["value_range", "spill_bin"])
def test_many_classes_and_wide_values_use_a_wider_index(count):
    # 200 classes: 200 * 202 bins no longer fit int16 indices.
    g = torch.Generator().manual_seed(2)
    c = 200
    target = torch.randint(-5, 260, (3, 40, 40), generator=g)
    prediction = torch.randint(-5, 260, (3, 40, 40), generator=g)
    expected = _reference_matrix(prediction, target, c, 255)
    assert torch.equal(count(prediction, target, c, 255), expected)


@pytest.mark.parametrize("count", PATHS, ids=["value_range", "spill_bin"])
def test_empty_and_all_ignored_batches_count_nothing(count):
    empty = torch.zeros(0, 4, dtype=torch.int64)
    assert count(empty, empty, 3, 255).sum() == 0
    ignored = torch.full((2, 3), 255, dtype=torch.uint8)
    assert count(ignored, ignored, 3, 255).tolist() == [[0] * 3] * 3


def test_update_accumulates_uint8_labels_and_non_contiguous_views():
    cm = ConfusionMatrix(3)
    target = torch.tensor([[0, 1, 255], [2, 2, 0]], dtype=torch.uint8)
    prediction = torch.tensor([[0, 2, 1], [2, 1, 0]], dtype=torch.uint8)
    cm.update(prediction.t(), target.t())  # transposed views, not contiguous
    cm.update(prediction, target)
    assert cm.matrix.tolist() == [[4, 0, 0], [0, 0, 2], [0, 2, 2]]
