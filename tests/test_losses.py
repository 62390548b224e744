import math

import pytest
import torch
import torch.nn.functional as F

from pixelwise.errors import PixelwiseError
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


# -- how a class-weighted loss is averaged (loss.normalize) --------------------------------------
def _two_pixels_and_an_ignored_one():
    """Logits of three pixels, two classes: pixel 0 is class 0 with p=0.5 (loss ln 2), pixel 1 is
    class 1 with logits (0, ln 3): p = 3/4, loss ln(4/3); pixel 2 is ignored."""
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)], [5.0, -5.0]]).T.reshape(1, 2, 1, 3)
    target = torch.tensor([[[0, 1, 255]]])
    return logits, target


def test_a_weighted_loss_is_divided_by_the_summed_weights_or_by_the_labelled_pixels():
    logits, target = _two_pixels_and_an_ignored_one()
    weights = torch.tensor([1.0, 3.0])
    weighted_sum = 1.0 * math.log(2.0) + 3.0 * math.log(4.0 / 3.0)
    pytorch = CrossEntropy(weights, normalize="weights")(logits, target)
    caffe = CrossEntropy(weights, normalize="valid")(logits, target)
    assert pytorch.item() == pytest.approx(weighted_sum / 4.0)  # weights 1 + 3
    assert caffe.item() == pytest.approx(weighted_sum / 2.0)  # two labelled pixels
    plain = (math.log(2.0) + math.log(4.0 / 3.0)) / 2.0
    for normalize in ("weights", "valid"):  # without weights the conventions agree
        assert CrossEntropy(None, normalize=normalize)(logits, target).item() == pytest.approx(
            plain
        )


def test_the_bootstrapped_loss_normalises_its_kept_pixels_the_same_way():
    logits, target = _two_pixels_and_an_ignored_one()
    weights = torch.tensor([1.0, 3.0])
    weighted_sum = 1.0 * math.log(2.0) + 3.0 * math.log(4.0 / 3.0)
    kept_all = {"top_k": 3, "class_weights": weights}
    by_weights = BootstrappedCrossEntropy(**kept_all, normalize="weights")(logits, target)
    by_pixels = BootstrappedCrossEntropy(**kept_all, normalize="valid")(logits, target)
    assert by_weights.item() == pytest.approx(weighted_sum / 4.0)
    assert by_pixels.item() == pytest.approx(weighted_sum / 2.0)
    # K=1 keeps the harder pixel: 3 ln(4/3) = 0.863 > ln 2 = 0.693, whose weight is 3.
    one = BootstrappedCrossEntropy(1, weights, normalize="weights")(logits, target)
    assert one.item() == pytest.approx(math.log(4.0 / 3.0))


def test_the_recipes_declare_their_releases_normalisation():
    from pathlib import Path

    from pixelwise.config import load_config

    configs = Path(__file__).parents[1] / "configs"
    expected = {"segnet_camvid": "valid", "segnet_camvid32": "valid", "gfrnet_camvid": "valid",
                "enet_camvid": "weights", "linknet_camvid": "weights"}  # fmt: skip
    for name, normalize in expected.items():
        assert load_config(configs / f"{name}.yaml").loss.normalize == normalize, name
    with pytest.raises(PixelwiseError, match="loss.normalize"):
        load_config(configs / "enet_camvid.yaml", ["loss.normalize=mean"])


def test_a_run_trains_with_the_normalisation_its_recipe_names(tmp_path):
    from pixelwise.config import config_from_dict
    from pixelwise.engine.run import build_run
    from tests.test_engine import tiny_config

    data = tiny_config(tmp_path)
    data["loss"] = {"class_weights": "median_frequency", "normalize": "valid"}
    criterion = build_run(config_from_dict(data)).task.criterion
    assert criterion.criterion.normalize == "valid"
    assert criterion.criterion.class_weights is not None
