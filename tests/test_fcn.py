"""FCN-32s/16s/8s/8s-at-once against the released Caffe nets (REFERENCE.md part A).

The full VGG16 is heavy on CPU, so counts and shapes are checked on the meta device (shapes and
FLOPs without arithmetic) and only a few small real forwards run; the 500x500 forward is slow.
"""

from __future__ import annotations

import pytest
import torch
import torchvision

from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model, model_info
from pixelwise.models.complexity import count_flops, count_parameters
from pixelwise.models.fcn import (
    FCN,
    fcn8s,
    fcn8s_atonce,
    fcn16s,
    fcn32s,
    legacy_fcn_keys,
    vgg16_to_fcn_state_dict,
)
from pixelwise.models.layers import bilinear_kernel

BUILDERS = {"fcn32s": fcn32s, "fcn16s": fcn16s, "fcn8s": fcn8s, "fcn8s_atonce": fcn8s_atonce}

# name: (learnable parameters we count, REFERENCE's learnable M, fixed deconv weights, REFERENCE's
# fixed M, REFERENCE's GMACs at 500x500)
EXPECTED = {
    "fcn32s": (134_346_581, 134.35, 1_806_336, 1.81, 181.4),
    "fcn16s": (134_357_354, 134.36, 458_640, 0.46, 181.4),
    "fcn8s": (134_362_751, 134.36, 127_008, 0.13, 181.5),
    "fcn8s_atonce": (134_362_751, 134.36, 127_008, 0.13, 181.5),
}

CONV_NAMES = [
    f"conv{stage}_{i}"
    for stage, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
    for i in range(1, n + 1)
]
TORCHVISION_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]


def meta_model(name: str, **kwargs) -> FCN:
    with torch.device("meta"):
        return BUILDERS[name](**kwargs).eval()


def torchvision_vgg16_shapes() -> dict[str, torch.Size]:
    """Keys and shapes of torchvision's VGG16 state dict, without allocating its 138M values."""
    with torch.device("meta"):
        return {k: v.shape for k, v in torchvision.models.vgg16(weights=None).state_dict().items()}


@pytest.fixture(scope="module")
def real_fcn8s() -> FCN:
    return fcn8s().eval()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_parameter_counts_match_the_released_nets(name: str) -> None:
    learnable, ref_learnable_m, fixed, ref_fixed_m, _ = EXPECTED[name]
    model = meta_model(name)
    got = count_parameters(model)
    got_fixed = count_parameters(model, trainable_only=False) - got
    assert (got, got_fixed) == (learnable, fixed)
    assert abs(got / 1e6 - ref_learnable_m) / ref_learnable_m < 0.01
    assert got_fixed / 1e6 == pytest.approx(ref_fixed_m, abs=0.005)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_flops_at_500_match_reference_macs(name: str) -> None:
    # torch.device("meta") makes count_flops' input a meta tensor too: exact counts, no arithmetic.
    with torch.device("meta"):
        flops = count_flops(BUILDERS[name](), (500, 500))
    assert flops / 2e9 == pytest.approx(EXPECTED[name][4], rel=0.01)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_registered_with_paper_setting(name: str) -> None:
    info = model_info(name)
    assert (info.num_classes, info.input_size, info.year, info.in_channels) == (
        21,
        (500, 500),
        2015,
        3,
    )
    assert "1411.4038" in info.paper
    with torch.device("meta"):
        model = build_model(name, num_classes=5)
    assert model.score_fr.out_channels == 5


def test_builders_take_no_stray_options() -> None:
    with pytest.raises(PixelwiseError, match="weights_backbone"):
        build_model("fcn8s", num_classes=21, pretrained=True)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_output_has_input_size_for_every_size(name: str) -> None:
    # The padding-100 + crop design must cover any size, including tiny and odd ones.
    model = meta_model(name, num_classes=3)
    for h in [1, 2, 7, 31, 32, 33, 97, 224, 255, 500]:
        for w in [1, 17, 64, 131, 333]:
            out = model(torch.empty(2, 3, h, w, device="meta"))
            assert tuple(out.shape) == (2, 3, h, w)


def test_real_forward_odd_size(real_fcn8s: FCN) -> None:
    with torch.no_grad():
        out = real_fcn8s(torch.randn(1, 3, 97, 131))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 21, 97, 131)
    assert torch.isfinite(out).all()


@pytest.mark.slow
def test_fcn32s_small_forward_and_backward() -> None:
    # About 15 s on one CPU core: a backward through VGG16 at the padded size (262x278).
    model = fcn32s(num_classes=4).train()
    with torch.no_grad():
        model.score_fr.weight.normal_(0, 0.01)  # zero init gives no gradient to the backbone yet
    out = model(torch.randn(1, 3, 64, 80))
    assert out.shape == (1, 4, 64, 80)
    out.square().mean().backward()
    assert model.backbone.conv("conv1_1").weight.grad is not None
    assert model.upscore.weight.grad is None


def test_score_layers_start_at_zero(real_fcn8s: FCN) -> None:
    for layer in (real_fcn8s.score_fr, real_fcn8s.score_pool4, real_fcn8s.score_pool3):
        assert not layer.weight.any() and not layer.bias.any()


def test_upscore_layers_are_fixed_bilinear(real_fcn8s: FCN) -> None:
    upscores = {"upscore2": 4, "upscore_pool4": 4, "upscore8": 16}
    for name, kernel in upscores.items():
        layer = getattr(real_fcn8s, name)
        assert layer.bias is None and not layer.weight.requires_grad
        assert layer.stride == (kernel // 2,) * 2
        assert torch.equal(layer.weight, bilinear_kernel(21, kernel))
    # Independent check of one kernel: 4 taps of a stride-2 bilinear upsampler, class diagonal only.
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    weight = real_fcn8s.upscore2.weight
    assert torch.allclose(weight[3, 3], taps[:, None] * taps[None, :])
    assert not weight[3, 4].any()
    assert not any(p.requires_grad for n, p in real_fcn8s.named_parameters() if "upscore" in n)


def test_at_once_scales_the_skips() -> None:
    staged, at_once = meta_model("fcn8s"), meta_model("fcn8s_atonce")
    assert (staged.pool4_scale, staged.pool3_scale) == (1.0, 1.0)
    assert (at_once.pool4_scale, at_once.pool3_scale) == (0.01, 0.0001)


def test_vgg16_weights_from_a_file_load_exactly(tmp_path) -> None:
    generator = torch.Generator().manual_seed(0)
    state = {
        k: torch.randn(shape, generator=generator)
        for k, shape in torchvision_vgg16_shapes().items()
    }
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)

    model = fcn32s(weights_backbone=path)

    backbone = model.backbone
    for name, index in zip(CONV_NAMES, TORCHVISION_CONV_INDICES, strict=True):
        assert torch.equal(backbone.conv(name).weight, state[f"features.{index}.weight"])
        assert torch.equal(backbone.conv(name).bias, state[f"features.{index}.bias"])
    assert torch.equal(backbone.fc6.weight, state["classifier.0.weight"].view(4096, 512, 7, 7))
    assert torch.equal(backbone.fc6.bias, state["classifier.0.bias"])
    assert torch.equal(backbone.fc7.weight, state["classifier.3.weight"].view(4096, 4096, 1, 1))
    assert torch.equal(backbone.fc7.bias, state["classifier.3.bias"])
    assert not model.score_fr.weight.any()  # the classifier (classifier.6) is not used
    assert torch.equal(model.upscore.weight, bilinear_kernel(21, 64))


def test_fc6_conversion_keeps_torchvision_flatten_order() -> None:
    # torchvision flattens pool5 as (C, H, W): input feature c*49 + y*7 + x feeds fc6[:, c, y, x].
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in torchvision_vgg16_shapes().items()}
    state["classifier.0.weight"] = torch.zeros(4096, 512 * 7 * 7)
    state["classifier.0.weight"][7, 2 * 49 + 3 * 7 + 5] = 1.0
    fc6 = vgg16_to_fcn_state_dict(state)["fc6.weight"]
    assert fc6.shape == (4096, 512, 7, 7)
    assert fc6[7, 2, 3, 5] == 1.0 and fc6.sum() == 1.0


def test_conversion_is_pure_and_complete() -> None:
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in torchvision_vgg16_shapes().items()}
    before = dict(state)
    converted = vgg16_to_fcn_state_dict(state)
    assert state == before
    assert set(converted) == set(meta_model("fcn32s").backbone.state_dict())


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("drop", "features.28.weight"),
        ("drop", "classifier.3.bias"),
        ("reshape", "classifier.0.weight"),
        ("reshape", "features.0.weight"),
        ("add", "features.1.running_mean"),
    ],
)
def test_wrong_vgg16_weights_name_the_key(change: str, key: str) -> None:
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in torchvision_vgg16_shapes().items()}
        if change == "drop":
            del state[key]
        elif change == "reshape":
            state[key] = (
                torch.empty(4096, 9216) if "classifier" in key else torch.empty(64, 1, 3, 3)
            )
        else:
            state[key] = torch.empty(64)
        with pytest.raises(PixelwiseError, match=key.replace(".", r"\.")):
            vgg16_to_fcn_state_dict(state)
        # The builder converts before it allocates the network, so this fails fast.
        with pytest.raises(PixelwiseError, match=key.replace(".", r"\.")):
            fcn8s(weights_backbone=state)


def test_nan_classifier_is_refused() -> None:
    # torchvision's IMAGENET1K_FEATURES VGG16 has NaN classifiers: useless for fc6/fc7.
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in torchvision_vgg16_shapes().items()}
    state["classifier.3.weight"] = torch.full((4096, 4096), float("nan"))
    with pytest.raises(PixelwiseError, match="non-finite.*IMAGENET1K_V1"):
        vgg16_to_fcn_state_dict(state)


def test_missing_weights_file_raises(tmp_path) -> None:
    with pytest.raises(PixelwiseError, match="does not exist"):
        fcn16s(weights_backbone=tmp_path / "nope.pth")


def test_checkpoints_with_caffe_conv_names_still_load() -> None:
    # Before the shared backbone, FCN's convs were named backbone.conv1_1 ... backbone.conv5_3.
    with torch.device("meta"):
        model = fcn32s(num_classes=3)
    state = model.state_dict()
    renames = dict(zip(TORCHVISION_CONV_INDICES, CONV_NAMES, strict=True))
    old = {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("backbone.vgg.features."):
            key = f"backbone.{renames[int(parts[3])]}.{parts[4]}"
        old[key] = value
    assert "backbone.conv5_3.weight" in old
    assert set(legacy_fcn_keys(old)) == set(state)
    model.load_state_dict(old, assign=True)


@pytest.mark.slow
def test_paper_size_forward(real_fcn8s: FCN) -> None:
    with torch.no_grad():
        out = real_fcn8s(torch.randn(1, 3, 500, 500))
    assert out.shape == (1, 21, 500, 500)
