"""Sliding window, flip and multi-scale inference, on models whose answer is known."""

import torch
from torch import nn

from pixelwise.engine.inference import predict_probs, sliding_window


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
