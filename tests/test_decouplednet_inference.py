"""DecoupledNet's inference as the release computes it (inference/DecoupledNet_inference.m).

Detection and the weights of the class-specific maps come from the sigmoid of the AVE-pooled
score (``cls_score``, the deploy net's first output), not the MAX-pooled one; the normalised
probabilities are resized to the image, then the argmax (and here the log) taken.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pixelwise.models import build_model
from pixelwise.models.decouplednet import UNDETECTED_LOGIT

SMALL = {"width_divisor": 16, "fc_kernel": 2, "input_size": 96}  # score map 2x2


def small(num_classes: int):
    torch.manual_seed(0)
    return build_model("decouplednet", num_classes, **SMALL).eval()


def _with_score_map(model, score_map: torch.Tensor):
    """Make the classifier's 2x2 score map ``score_map`` (K x 2 x 2) on every image."""
    features = model.features

    def patched(x):
        feats = features(x)
        feats.score_map = score_map.expand_as(feats.score_map).clone()
        return feats

    model.features = patched
    return model


def _figure_everywhere(model):
    """A decoder whose every pass says figure (softmax 0.047 background, 0.953 figure)."""
    with torch.no_grad():
        model.seg_score.weight.zero_()
        model.seg_score.bias.copy_(torch.tensor([-1.5, 1.5]))
    return model


# Five foreground classes on a 2x2 score map (rows: classes 1..5 of the model).
SCORES = torch.tensor(
    [
        [[-5.0, -5.0], [-5.0, -5.0]],  # 1: absent
        [[3.0, -2.0], [-2.0, -2.0]],  # 2: mean -0.75 -> 0.32, max 3 -> 0.95: absent by average
        [[2.0, 0.0], [0.0, 0.0]],  # 3: mean 0.5 -> 0.62, max 2 -> 0.88: present either way
        [[-5.0, -5.0], [-5.0, -5.0]],  # 4: absent
        [[-5.0, -5.0], [-5.0, -5.0]],  # 5: absent
    ]
)


def test_detection_thresholds_the_averaged_score():
    """The release detects class 3 alone (sigmoid of the means -0.75 and 0.5; the maximum would
    also pass class 2), so with every pass saying figure the background map is 0.047, class 3's
    0.953 and every pixel is 3."""
    model = _with_score_map(_figure_everywhere(small(6)), SCORES)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 40, 56))
    assert logits.shape == (1, 6, 40, 56)
    assert bool((logits.argmax(dim=1) == 3).all())
    assert bool((logits[:, 2] == UNDETECTED_LOGIT).all())
    figure = 1 / (1 + math.exp(-3.0))  # softmax of (-1.5, 1.5)
    torch.testing.assert_close(logits[0, 3].exp(), torch.full((40, 56), figure))
    torch.testing.assert_close(logits[0, 0].exp(), torch.full((40, 56), 1 - figure))


# Two detected classes whose averaged and maximum scores rank them oppositely.
RANKED = torch.full((5, 2, 2), -5.0)
RANKED[1] = torch.tensor([[4.0, 0.0], [0.0, 0.0]])  # class 2: mean 1 -> 0.731, max 4 -> 0.982
RANKED[3] = 1.2  # class 4: mean = max = 1.2 -> 0.769
RAMP = torch.linspace(-6.0, 0.0, 96)  # along the columns, the same in every pass


def _stand_in_segment(feats, image, weights):
    """A segmentation network computed by hand: figure logit 4 x (sum of the weights) - 3 + RAMP,
    background logit 0, at every row."""
    figure = 4 * weights.sum(dim=1) - 3
    logits = torch.zeros(len(image), 2, 96, 96)
    logits[:, 1] = figure[:, None, None] + RAMP
    return logits


def _label_map(probability: dict[int, float]) -> torch.Tensor:
    """The argmax of the combined map by hand, from the weight of each detected class."""
    total = sum(probability.values())
    maps = {0: torch.sigmoid(-(4 * total - 3 + RAMP))}  # the background pass's channel 0
    for cls, weight in probability.items():
        maps[cls] = torch.sigmoid(4 * weight - 3 + RAMP)
    order = sorted(maps)
    stacked = torch.stack([maps[c] for c in order])
    return torch.tensor(order)[stacked.argmax(dim=0)].expand(96, 96)


def test_maps_weighted_by_the_averaged_score_give_the_releases_label_map():
    """By hand: weighted by sigmoid(mean), class 4 (0.769) outweighs class 2 (0.731) and takes
    the right-hand columns the background leaves; weighted by sigmoid(max), class 2 (0.982)
    would take them."""
    model = _with_score_map(small(6), RANKED)
    model.segment = _stand_in_segment
    with torch.no_grad():
        labels = model(torch.randn(1, 3, 96, 96)).argmax(dim=1)[0]
    sigmoid = torch.sigmoid
    release = _label_map(
        {2: float(sigmoid(torch.tensor(1.0))), 4: float(sigmoid(torch.tensor(1.2)))}
    )
    by_max = _label_map(
        {2: float(sigmoid(torch.tensor(4.0))), 4: float(sigmoid(torch.tensor(1.2)))}
    )
    assert set(release.unique().tolist()) == {0, 4} and set(by_max.unique().tolist()) == {0, 2}
    assert torch.equal(labels, release)


def test_each_map_is_weighted_by_the_sigmoid_of_the_averaged_score_at_inference():
    """The background pass weighs every detected class by its probability (line 59), each
    class pass its one-hot by it (line 75): sigmoid(mean) = sigmoid(0.5) for class 3, never
    sigmoid(max) = sigmoid(2)."""
    model = _with_score_map(small(6), SCORES)
    seen = []
    segment = model.segment

    def spy(feats, image, weights):
        seen.append(weights.clone())
        return segment(feats, image, weights)

    model.segment = spy
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 96))
    expected = torch.zeros(1, 5)
    expected[0, 2] = torch.sigmoid(torch.tensor(0.5))
    assert len(seen) == 2  # the background pass, then class 3's
    torch.testing.assert_close(seen[0], expected)
    torch.testing.assert_close(seen[1], expected)


def test_training_still_weighs_the_selected_class_by_the_sigmoid_of_the_maximum():
    """The training nets build ``cls-score-masked`` from the MAX-pooled sigmoid."""
    model = _with_score_map(small(6), SCORES)
    feats = model.features(torch.randn(1, 3, 96, 96))
    torch.testing.assert_close(model.label_weights(feats)[0, 2], torch.sigmoid(torch.tensor(2.0)))
    torch.testing.assert_close(
        model.class_probabilities(feats)[0, 2], torch.sigmoid(torch.tensor(0.5))
    )


# Two network pixels' (background, A, B) probabilities: A wins u, B wins v. Half way between them
# the arithmetic mean (the release resizes probabilities) has A = 0.4505 > B = 0.275, the geometric
# mean (what resizing log-probabilities gives) A = 0.030 < B = 0.158.
U = torch.tensor([0.05, 0.9, 0.05])
V = torch.tensor([0.499, 0.001, 0.5])


def _halves(size: int) -> torch.Tensor:
    """1 x 3 x size x size: U on the left half of the columns, V on the right."""
    probabilities = torch.empty(1, 3, size, size)
    probabilities[..., : size // 2] = U[:, None, None]
    probabilities[..., size // 2 :] = V[:, None, None]
    return probabilities


def test_probabilities_are_resized_not_log_probabilities():
    model = small(3)
    probabilities = _halves(96)
    present = torch.ones(1, 3, dtype=torch.bool)
    model.combine = lambda feats: (probabilities, present)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 97, 97))  # back from 96 to 97: column 48 is half-half
    resized = F.interpolate(probabilities, size=(97, 97), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, resized.log())
    assert resized[0, :, 0, 48].tolist() == pytest.approx([0.2745, 0.4505, 0.275], abs=1e-3)
    assert bool((logits.argmax(dim=1)[:, :, 48] == 1).all())
    # The case tells them apart: resizing the log-probabilities would give B there.
    resized_log = F.interpolate(probabilities.log(), size=(97, 97), mode="bilinear")
    assert bool((resized_log.argmax(dim=1)[:, :, 48] == 2).all())


def test_where_every_map_is_zero_the_present_classes_tie_instead_of_nan():
    """Line 91: a pixel whose maps sum to 0 gets 1 on background and the detected classes."""
    model = small(6)
    with torch.no_grad():
        model.cls_score.weight.zero_()
        model.cls_score.bias.fill_(-5.0)  # nothing detected
        model.seg_score.weight.zero_()
        model.seg_score.bias.copy_(torch.tensor([-1e4, 1e4]))  # background softmax is 0.0
        logits = model(torch.randn(1, 3, 50, 50))
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[:, 0], torch.zeros(1, 50, 50))  # log 1
    assert bool((logits.argmax(dim=1) == 0).all())
