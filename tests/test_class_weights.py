"""Class-balancing weights on hand-computed histograms."""

from __future__ import annotations

import math

import pytest
import torch

from pixelwise.class_weights import enet_class_weights, median_frequency_weights_from_counts
from pixelwise.errors import PixelwiseError


def test_enet_weights_by_hand():
    # p = [0.98, 0.02]: 1/ln(2.00) = 1.442695, 1/ln(1.04) = 25.496732
    weights = enet_class_weights(torch.tensor([98, 2]))
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx([1.442695, 25.496732], rel=1e-6)


def test_enet_weights_are_bounded_and_absent_classes_get_zero():
    # p = [0, 0.5, 0.5]: 1/ln(1.52) = 2.388286; the absent class gets 0 as in decoder.lua.
    weights = enet_class_weights(torch.tensor([0.0, 50.0, 50.0]))
    assert weights.tolist() == pytest.approx([0.0, 2.388286, 2.388286], rel=1e-6)
    # A very rare class approaches, and never exceeds, 1/ln(1.02) = 50.50
    rare = enet_class_weights(torch.tensor([1, 10**9]))
    assert rare[0].item() == pytest.approx(1 / math.log(1.02), rel=1e-6)


def test_enet_weights_take_c():
    weights = enet_class_weights(torch.tensor([1, 1]), c=1.2)  # encoder.lua's constant
    assert weights.tolist() == pytest.approx([1 / math.log(1.7)] * 2, rel=1e-6)


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_enet_weights_reject_c_at_most_one(c):
    with pytest.raises(PixelwiseError, match="c > 1"):
        enet_class_weights(torch.tensor([1, 2]), c=c)


def test_enet_weights_reject_an_empty_histogram():
    with pytest.raises(PixelwiseError, match="no labelled pixel"):
        enet_class_weights(torch.zeros(3))
    with pytest.raises(ValueError, match="1-D"):
        enet_class_weights(torch.ones(2, 2))
    with pytest.raises(ValueError, match="non-negative"):
        enet_class_weights(torch.tensor([1.0, -1.0]))


def test_median_frequency_with_equal_image_pixels():
    # freq = [0.1, 0.3, 0.6], median 0.3 -> [3, 1, 0.5]
    weights = median_frequency_weights_from_counts(
        torch.tensor([10, 30, 60]), torch.tensor([100, 100, 100])
    )
    assert weights.dtype == torch.float32
    assert weights.tolist() == pytest.approx([3.0, 1.0, 0.5])


def test_median_frequency_uses_the_images_containing_each_class_and_skips_absent_ones():
    # freq = [10/50, 20/200, -, 40/100] = [0.2, 0.1, -, 0.4]; median over present 0.2
    weights = median_frequency_weights_from_counts(
        torch.tensor([10, 20, 0, 40]), torch.tensor([50, 200, 0, 100])
    )
    assert weights.tolist() == pytest.approx([1.0, 2.0, 0.0, 0.5])


def test_median_frequency_even_class_count_averages_the_middle_two():
    # freq = [0.1, 0.2, 0.3, 0.4], median (0.2 + 0.3) / 2 = 0.25
    weights = median_frequency_weights_from_counts(
        torch.tensor([1, 2, 3, 4]), torch.tensor([10, 10, 10, 10])
    )
    assert weights.tolist() == pytest.approx([2.5, 1.25, 0.25 / 0.3, 0.625])


def test_median_frequency_rejects_inconsistent_inputs():
    with pytest.raises(ValueError, match="differ"):
        median_frequency_weights_from_counts(torch.tensor([1, 2]), torch.tensor([10, 10, 10]))
    with pytest.raises(ValueError, match="at least counts"):
        median_frequency_weights_from_counts(torch.tensor([5, 2]), torch.tensor([4, 10]))
    with pytest.raises(PixelwiseError, match="no labelled pixel"):
        median_frequency_weights_from_counts(torch.zeros(2), torch.zeros(2))
