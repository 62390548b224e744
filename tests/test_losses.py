import pytest
import torch
import torch.nn.functional as F

from pixelwise.losses import (
    BootstrappedCrossEntropy,
    CrossEntropy,
    WithAuxiliary,
    build_loss,
    match_target,
)


def test_ce_ignores_255_and_applies_weights():
    logits = torch.randn(2, 3, 4, 5)
    target = torch.randint(0, 3, (2, 4, 5))
    target[0, 0] = 255
    keep = target != 255
    manual = -F.log_softmax(logits, 1).gather(1, target.clamp(max=2)[:, None])[:, 0][keep].mean()
    assert CrossEntropy()(logits, target) == pytest.approx(manual.item(), rel=1e-5)
    w = torch.tensor([1.0, 2.0, 3.0])
    nll = -F.log_softmax(logits, 1).gather(1, target.clamp(max=2)[:, None])[:, 0]
    pw = w[target.clamp(max=2)]
    expected = (nll * pw)[keep].sum() / pw[keep].sum()
    assert CrossEntropy(w)(logits, target) == pytest.approx(expected.item(), rel=1e-5)


def test_all_ignored_batch_gives_zero_not_nan():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = CrossEntropy()(logits, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()


def test_bootstrap_takes_hardest_k_per_image():
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0] = torch.tensor([4.0, 2.0, 0.0, -2.0])  # class 0 score; target class 0
    target = torch.zeros(1, 1, 4, dtype=torch.long)
    target[0, 0, 0] = 255
    per_pixel = F.cross_entropy(logits, target.clamp(max=1), reduction="none").flatten()
    expected = per_pixel[[3, 2]].mean()  # the two largest among valid pixels 1..3
    assert BootstrappedCrossEntropy(top_k=2)(logits, target) == pytest.approx(expected.item())


def test_auxiliary_outputs_are_weighted_and_upsampled():
    main = torch.randn(1, 3, 8, 8)
    aux = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 8, 8))
    loss = WithAuxiliary(CrossEntropy(), [0.4])((main, [aux]), target)
    up = F.interpolate(aux, size=(8, 8), mode="bilinear", align_corners=False)
    expected = F.cross_entropy(main, target) + 0.4 * F.cross_entropy(up, target)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="aux_weights"):
        WithAuxiliary(CrossEntropy(), [])((main, [aux]), target)


def test_valid_model_target_is_centre_cropped():
    target = torch.arange(36).view(1, 6, 6)
    logits = torch.zeros(1, 2, 2, 2)
    assert match_target(logits, target).tolist() == [[[14, 15], [20, 21]]]
    with pytest.raises(ValueError):
        build_loss("dice")
