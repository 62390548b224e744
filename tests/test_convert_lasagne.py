"""Lasagne ``.npz`` reader and the FC-DenseNet103 CamVid release.

The release file is built here as SimJeg/FC-DenseNet's ``FC-DenseNet.py`` + ``layers.py`` would
save it (random parameters in ``get_all_param_values`` order, ``np.savez``), read, mapped, and the
pixelwise network is compared with an independent forward pass that follows ``FC-DenseNet.py``
with Lasagne/Theano semantics written in torch.nn.functional: ``BatchNormLayer`` with ``inv_std``,
``Conv2DLayer(flip_filters=False)``, ``Deconv2DLayer`` as Theano's ``AbstractConv2d_gradInputs``
(the gradient of a true convolution, taken with autograd), floor pooling and ``ConcatLayer``'s
centre cropping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelwise.convert import lasagne
from pixelwise.convert.releases.fcdensenet103_camvid import RELEASE
from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model

GROWTH, FIRST, POOLS = 16, 48, 5
LAYERS = [4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4]  # config/FC-DenseNet103.py


def test_reader_keeps_numeric_order_past_arr_9(tmp_path: Path) -> None:
    path = tmp_path / "params.npz"
    np.savez(path, *[np.full((i + 1,), i, dtype=np.float32) for i in range(12)])
    arrays = lasagne.read(path).arrays
    assert [int(a[0]) for a in arrays] == list(range(12))
    assert arrays[11].shape == (12,)


def test_reader_refuses_named_truncated_and_foreign_files(tmp_path: Path) -> None:
    named = tmp_path / "named.npz"
    np.savez(named, weights=np.ones(3))
    with pytest.raises(PixelwiseError, match=r"named\.npz holds arrays named weights"):
        lasagne.read(named)
    cut = tmp_path / "FC-DenseNet103_weights.npz"
    np.savez(cut, np.ones(1000))
    cut.write_bytes(cut.read_bytes()[:300])
    with pytest.raises(PixelwiseError, match=r"FC-DenseNet103_weights\.npz is not a complete"):
        lasagne.read(cut)


def _cursor(*arrays: np.ndarray) -> lasagne.ParamCursor:
    return lasagne.ParamCursor(lasagne.LasagneParams(Path("x.npz"), list(arrays)), "test")


def test_conv_flip_filters_by_hand() -> None:
    # A 3x3 input with a 1 in its top-left corner, kernel 1..9, valid: a correlation reads
    # W[0, 0] = 1; Lasagne's default true convolution (flip_filters=True) reads W[2, 2] = 9.
    kernel = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 0] = 1
    conv = torch.nn.Conv2d(1, 1, 3)
    for flip, expected in ((False, 1.0), (True, 9.0)):
        state = _cursor(kernel, np.zeros(1, np.float32)).conv("c", conv, flip_filters=flip)
        assert F.conv2d(x, state["c.weight"], state["c.bias"]).item() == expected


def test_deconv_default_paints_the_rotated_kernel_by_hand() -> None:
    # Deconv2DLayer(flip_filters=False) is the transpose of a true convolution by W: one input
    # pixel of 1 paints W rotated by 180 degrees (PyTorch's transposed conv paints W itself).
    kernel = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    up = torch.nn.ConvTranspose2d(1, 1, 3, stride=2)
    state = _cursor(kernel, np.zeros(1, np.float32)).transposed_conv("u", up)
    out = F.conv_transpose2d(torch.ones(1, 1, 1, 1), state["u.weight"], stride=2)
    expected = torch.tensor([[9.0, 8.0, 7.0], [6.0, 5.0, 4.0], [3.0, 2.0, 1.0]])
    torch.testing.assert_close(out[0, 0], expected)
    theano = _deconv(torch.ones(1, 1, 1, 1).double(), torch.from_numpy(kernel).double())
    torch.testing.assert_close(theano[0, 0], expected.double())


def test_batch_norm_inv_std_by_hand() -> None:
    # beta 1, gamma 2, mean 3, inv_std 0.5: x = 5 -> (5 - 3) * 2 * 0.5 + 1 = 3.
    norm = torch.nn.BatchNorm2d(1, eps=1e-4).eval()
    arrays = [np.array([v], np.float32) for v in (1.0, 2.0, 3.0, 0.5)]
    norm.load_state_dict(
        {k.removeprefix("n."): v for k, v in _cursor(*arrays).batch_norm("n", norm).items()}
    )
    assert norm(torch.full((1, 1, 1, 1), 5.0)).item() == pytest.approx(3.0, abs=1e-6)


# -- FC-DenseNet.py with Lasagne semantics -----------------------------------------------------


def random_params(seed: int, classes: int = 11) -> list[np.ndarray]:
    """get_all_param_values of FC-DenseNet.py's Network for FC-DenseNet103, random values."""
    rng = np.random.default_rng(seed)
    params: list[np.ndarray] = []

    def conv(n_out: int, n_in: int, k: int) -> None:
        params.append(rng.standard_normal((n_out, n_in, k, k)) / np.sqrt(n_in * k * k))
        params.append(rng.uniform(-0.1, 0.1, n_out))

    def bn(n: int) -> None:
        params.extend(
            [
                rng.uniform(-0.2, 0.2, n),
                rng.uniform(0.5, 1.5, n),
                rng.uniform(-0.2, 0.2, n),
                rng.uniform(0.7, 1.4, n),
            ]
        )

    conv(FIRST, 3, 3)
    n = FIRST
    skips = []
    for i in range(POOLS):
        for _ in range(LAYERS[i]):
            bn(n)
            conv(GROWTH, n, 3)
            n += GROWTH
        skips.append(n)
        bn(n)
        conv(n, n, 1)
    for _ in range(LAYERS[POOLS]):
        bn(n)
        conv(GROWTH, n, 3)
        n += GROWTH
    upsampled = GROWTH * LAYERS[POOLS]
    for i in range(POOLS):
        keep = GROWTH * LAYERS[POOLS + i]
        params.append(rng.standard_normal((upsampled, keep, 3, 3)) / np.sqrt(upsampled * 9))
        params.append(rng.uniform(-0.1, 0.1, keep))
        n = keep + skips[-1 - i]
        for _ in range(LAYERS[POOLS + i + 1]):
            bn(n)
            conv(GROWTH, n, 3)
            n += GROWTH
        upsampled = GROWTH * LAYERS[POOLS + i + 1]
    conv(classes, n, 1)
    return [p.astype(np.float32) for p in params]


def _deconv(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Theano's AbstractConv2d_gradInputs(filter_flip=True), stride 2, border 'valid': the
    gradient, with respect to its input, of a true convolution (kernel rotated) by W."""
    height, width = x.shape[-2:]
    z = torch.zeros(x.shape[0], w.shape[1], 2 * height + 1, 2 * width + 1, dtype=x.dtype)
    z.requires_grad_(True)
    with torch.enable_grad():
        forward = F.conv2d(z, w.flip(-2, -1), stride=2)
        (out,) = torch.autograd.grad((forward * x).sum(), z)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def _centre_concat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    h, w = min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1])

    def crop(t: torch.Tensor) -> torch.Tensor:
        top, left = (t.shape[-2] - h) // 2, (t.shape[-1] - w) // 2
        return t[..., top : top + h, left : left + w]

    return torch.cat([crop(a), crop(b)], dim=1)


def lasagne_forward(x: torch.Tensor, arrays: list[np.ndarray]) -> torch.Tensor:
    params = iter(torch.from_numpy(np.array(a, np.float64)) for a in arrays)

    def conv(t: torch.Tensor, pad: int) -> torch.Tensor:
        return F.conv2d(t, next(params), next(params), padding=pad)  # flip_filters=False

    def bn_relu(t: torch.Tensor) -> torch.Tensor:
        beta, gamma, mean, inv_std = (next(params).view(1, -1, 1, 1) for _ in range(4))
        return F.relu((t - mean) * (gamma * inv_std) + beta)

    stack = conv(x, 1)
    skips = []
    for i in range(POOLS):
        for _ in range(LAYERS[i]):
            stack = torch.cat([stack, conv(bn_relu(stack), 1)], dim=1)
        skips.append(stack)
        stack = F.max_pool2d(conv(bn_relu(stack), 0), 2)  # Pool2DLayer, ignore_border=True
    block = []
    for _ in range(LAYERS[POOLS]):
        block.append(conv(bn_relu(stack), 1))
        stack = torch.cat([stack, block[-1]], dim=1)
    for i in range(POOLS):
        weight, bias = next(params), next(params)
        stack = _centre_concat(_deconv(torch.cat(block, dim=1), weight, bias), skips[-1 - i])
        block = []
        for _ in range(LAYERS[POOLS + i + 1]):
            block.append(conv(bn_relu(stack), 1))
            stack = torch.cat([stack, block[-1]], dim=1)
    return conv(stack, 0)


def test_release_round_trip_matches_the_lasagne_forward(tmp_path: Path) -> None:
    arrays = random_params(seed=0)
    path = tmp_path / RELEASE.file_name
    np.savez(path, *arrays)
    model = build_model(RELEASE.model, RELEASE.num_classes, **RELEASE.model_options)
    model.load_state_dict(RELEASE.to_state_dict(lasagne.read(path), model), strict=True)
    model = model.double().eval()
    # 35x50 pools to 17x25, 8x12, 4x6, 2x3, 1x1: the deconvs overshoot by 0 or 1 (centre crops).
    x = torch.rand(1, 3, 35, 50, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), lasagne_forward(x, arrays), atol=1e-5, rtol=1e-5)


def test_input_convention_is_rgb_divided_by_255() -> None:
    assert RELEASE.input.rgb_unit_mean_std() == ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])


def test_file_of_another_model_is_one_sentence(tmp_path: Path) -> None:
    model = build_model("fcdensenet103", 11)
    path = tmp_path / "FC-DenseNet103_weights.npz"
    np.savez(path, *random_params(seed=1, classes=12))  # another class count
    with pytest.raises(PixelwiseError, match=r"arr_\d+ has the shape .* class count"):
        RELEASE.to_state_dict(lasagne.read(path), model)
    np.savez(path, *random_params(seed=1)[:-2])  # a network without the classifier
    with pytest.raises(PixelwiseError, match=r"ends after \d+ arrays where FC-DenseNet103"):
        RELEASE.to_state_dict(lasagne.read(path), model)
