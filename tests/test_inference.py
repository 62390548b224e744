"""Sliding window, flip and multi-scale inference, on models whose answer is known."""

import re

import pytest
import torch
from torch import nn

from pixelwise.engine.inference import predict_probs, sliding_window
from pixelwise.errors import PixelwiseError


def pointwise_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, 4, 1).eval()  # per-pixel: any window or flip gives the same pixels


def test_sliding_window_equals_the_whole_image_for_a_pointwise_model():
    model = pointwise_model()
    x = torch.randn(2, 3, 37, 53)
    whole = model(x).softmax(1)
    for crop, stride in (((16, 16), (8, 8)), ((20, 30), (20, 30)), ((64, 64), (32, 32))):
        with torch.no_grad():
            assert torch.allclose(sliding_window(model, x, crop, stride), whole, atol=1e-6)


def test_windows_cover_every_pixel_and_average_the_overlaps():
    calls = []

    class Counting(nn.Module):
        def forward(self, x):
            calls.append(tuple(x.shape[-2:]))
            return torch.zeros(x.shape[0], 2, *x.shape[-2:])

    probs = sliding_window(Counting(), torch.zeros(1, 3, 10, 25), crop=(10, 10), stride=(10, 10))
    assert calls == [(10, 10)] * 3  # columns 0, 10 and the last window flush with the edge (15)
    assert torch.allclose(probs, torch.full_like(probs, 0.5))


def test_flip_and_scales_keep_a_pointwise_answer_and_the_input_size():
    model = pointwise_model()
    x = torch.randn(1, 3, 24, 40)
    whole = model(x).softmax(1)
    assert torch.allclose(predict_probs(model, x, flip=True), whole, atol=1e-6)
    multi = predict_probs(model, x, scales=(0.5, 1.0, 1.5))
    assert multi.shape == whole.shape
    assert torch.allclose(multi.sum(1), torch.ones(1, 24, 40), atol=1e-5)


def test_flip_is_undone_before_averaging():
    class LeftHalfIsClassOne(nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
            out[:, 1] = (x[:, 0] > 0).float() * 10
            return out

    x = -torch.ones(1, 3, 4, 6)
    x[..., :3] = 1
    probs = predict_probs(LeftHalfIsClassOne(), x, flip=True)
    assert (probs.argmax(1)[0, :, :3] == 1).all() and (probs.argmax(1)[0, :, 3:] == 0).all()


BAD_TTA = [
    ({"scales": [0.0]}, "every scale must be a number above 0"),
    ({"scales": [-1.0]}, "every scale must be a number above 0"),
    ({"scales": [float("nan")]}, "every scale must be a number above 0"),
    ({"scales": [0.001]}, "below one pixel"),
    ({"crop": (0, 8)}, "at least 1x1"),
    ({"crop": (8, 8), "stride": (0, 0)}, "between 1 and the window"),
    ({"crop": (8, 8), "stride": (-4, 4)}, "between 1 and the window"),
    ({"crop": (8, 8), "stride": (16, 4)}, "between 1 and the window"),
    ({"stride": (4, 4)}, "no --crop H W"),
]


@pytest.mark.parametrize(("settings", "expected"), BAD_TTA, ids=[str(s) for s, _ in BAD_TTA])
def test_settings_that_cannot_work_are_refused_in_one_sentence(settings, expected):
    with pytest.raises(PixelwiseError, match=re.escape(expected)):
        predict_probs(pointwise_model(), torch.randn(1, 3, 37, 53), **settings)


def test_a_stride_equal_to_the_window_still_covers_every_pixel():
    model = pointwise_model()
    x = torch.randn(1, 3, 37, 53)
    probs = predict_probs(model, x, crop=(16, 16), stride=(16, 16))
    assert torch.isfinite(probs).all() and torch.allclose(probs, model(x).softmax(1), atol=1e-6)


def test_a_16_bit_image_is_scaled_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    from pixelwise.data.base import read_image

    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 1, 4)
    assert image[0, 0].tolist() == [0, 1, 128, 255] and torch.equal(image[0], image[2])


def spatial_model() -> nn.Module:
    """3x3 convolutions with zero padding: each pixel's answer depends on its neighbours and on
    where the borders are, so a window that is not the whole image would change it."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1)
    ).eval()


@pytest.mark.parametrize("stride", [(32, 48), (8, 12)])
def test_sliding_window_over_an_input_of_one_tile_is_the_whole_image_prediction_exactly(stride):
    model = spatial_model()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        whole = model(x).softmax(1)
    windowed = predict_probs(model, x, crop=(32, 48), stride=stride)
    assert torch.equal(windowed, whole)


def test_flip_tta_is_a_no_op_on_a_flip_equivariant_model():
    model = spatial_model()
    with torch.no_grad():  # mirror-symmetric kernels: model(flip(x)) == flip(model(x))
        for conv in (model[0], model[2]):
            conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    x = torch.randn(1, 3, 24, 40)
    plain = predict_probs(model, x)
    assert torch.allclose(predict_probs(model, x, flip=True), plain, atol=1e-6, rtol=0)
    # Not vacuous: the model is not flip-invariant, so a flip left undone would show.
    assert not torch.allclose(predict_probs(model, x.flip(-1)), plain, atol=1e-3)
