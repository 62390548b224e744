"""U-Net against the paper (REFERENCE.md part A): 31,030,658 parameters, 572 -> 388, 150.4 GMACs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model, model_info
from pixelwise.models.complexity import count_flops, count_parameters
from pixelwise.models.unet import UNet, unet


def meta_unet(**kwargs) -> UNet:
    with torch.device("meta"):
        return unet(**kwargs).eval()


def test_paper_parameter_count() -> None:
    assert count_parameters(meta_unet(in_channels=1, num_classes=2)) == 31_030_658


def test_paper_layer_count() -> None:
    # "In total the network has 23 convolutional layers" (3x3 convs, up-convs and the final 1x1).
    model = meta_unet(in_channels=1)
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 23


def test_flops_at_572_match_reference_macs() -> None:
    # torch.device("meta") makes count_flops' input a meta tensor too: exact counts, no arithmetic.
    with torch.device("meta"):
        flops = count_flops(unet(in_channels=1), (572, 572), in_channels=1)
    assert flops / 2e9 == pytest.approx(150.4, rel=0.01)


def test_registered_with_paper_setting() -> None:
    info = model_info("unet")
    assert (info.num_classes, info.in_channels, info.input_size, info.year) == (
        2,
        1,
        (572, 572),
        2015,
    )
    assert "1505.04597" in info.paper
    with torch.device("meta"):
        model = build_model("unet", num_classes=7, in_channels=1, padding="same")
    assert model.classifier.out_channels == 7
    assert model.encoders[0][0][0].in_channels == 1


def test_valid_paper_tile_gives_388() -> None:
    model = unet(in_channels=1, num_classes=2).eval()
    assert model.crops_output is True
    assert model.output_size((572, 572)) == (388, 388)
    with torch.no_grad():
        out = model(torch.randn(1, 1, 572, 572))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 2, 388, 388)


def test_valid_output_size_agrees_with_forward() -> None:
    model = meta_unet(base_channels=4)
    for h, w in [(188, 188), (204, 572), (252, 332), (716, 444)]:
        out = model(torch.empty(1, 3, h, w, device="meta"))
        assert tuple(out.shape[-2:]) == model.output_size((h, w)) == (h - 184, w - 184)


def test_bad_valid_size_names_the_nearest_sizes() -> None:
    model = meta_unet(base_channels=4)
    with pytest.raises(
        PixelwiseError, match=r"height 250 to 236 or 252 and width 333 to 332 or 348"
    ):
        model.output_size((250, 333))
    with pytest.raises(PixelwiseError, match=r"width 100 to 188\b"):
        model(torch.empty(1, 3, 572, 100, device="meta"))
    with pytest.raises(PixelwiseError, match="padding='same'"):
        model.output_size((573, 572))


def test_unknown_padding_lists_the_valid_ones() -> None:
    with pytest.raises(PixelwiseError, match="valid, same"):
        unet(padding="reflect")


def test_same_keeps_any_size_and_trains() -> None:
    model = unet(num_classes=5, base_channels=8, padding="same").train()
    assert model.crops_output is False
    x = torch.randn(2, 3, 250, 333)
    out = model(x)
    assert out.shape == (2, 5, 250, 333)
    assert model.output_size((250, 333)) == (250, 333)
    out.logsumexp(dim=1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_same_keeps_odd_and_tiny_sizes() -> None:
    model = meta_unet(base_channels=4, padding="same", num_classes=3)
    for h in [1, 2, 3, 15, 16, 17, 31, 33, 97]:
        for w in [1, 5, 64, 131]:
            assert model(torch.empty(1, 3, h, w, device="meta")).shape == (1, 3, h, w)


def test_batch_norm_follows_every_3x3_conv() -> None:
    model = unet(base_channels=4, padding="same", batch_norm=True)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(convs) == len(norms) == 18
    assert all(conv.bias is None for conv in convs)
    assert model(torch.randn(2, 3, 37, 41)).shape == (2, 2, 37, 41)


def test_init_is_he_normal_from_fan_in() -> None:
    # The paper: std sqrt(2/N), N = incoming nodes; checked on the widest 3x3 conv (N = 9 * 1024).
    torch.manual_seed(0)
    decoder = unet(base_channels=64).decoders[0]
    weight = decoder.conv[0][0].weight
    assert weight.std().item() == pytest.approx((2 / (9 * 1024)) ** 0.5, rel=0.02)
    # A 2x2 stride-2 up-conv: each output pixel sees one tap per input channel, N = 1024.
    assert decoder.up.weight.std().item() == pytest.approx((2 / 1024) ** 0.5, rel=0.02)
