"""PSPNet: counts, shapes at odd sizes, the auxiliary head, its gradient and its loss weight,
batch 1, dilation, the pyramid computed by hand as the release's prototxt does it (average pools,
bins, concatenation order, corner-aligned upsampling), and the two weight layouts its backbone
takes.

Shapes run on the meta device and the real computations on small inputs: a dilated ResNet-50 at
output stride 8 is slow on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from pixelwise.config import load_config
from pixelwise.engine.train import train_step
from pixelwise.errors import PixelwiseError
from pixelwise.losses import build_loss
from pixelwise.models import build_model
from pixelwise.models.complexity import count_flops, count_parameters
from pixelwise.models.pspnet import PSPNet, PyramidPooling
from tests.weights import random_torchvision_state

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def meta_model(name: str, num_classes: int, **options) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, num_classes, **options)


# docs/models.md: the released inference prototxts (no auxiliary head).
@pytest.mark.parametrize(
    ("name", "classes", "params"), [("pspnet50", 150, 46.78e6), ("pspnet101", 21, 65.71e6)]
)
def test_parameters_match_the_released_nets(name, classes, params) -> None:
    model = meta_model(name, classes)
    assert count_parameters(model) == pytest.approx(params, rel=0.01)
    # "Aux head adds 2.36M + 257 C": 3x3 1024->256 + BN, then 1x1 256->C with bias.
    with_aux = count_parameters(meta_model(name, classes, aux=True))
    assert with_aux - count_parameters(model) == 1024 * 256 * 9 + 2 * 256 + 257 * classes


@pytest.mark.parametrize(
    ("name", "classes", "size", "gmacs"),
    [
        ("pspnet50", 150, (473, 473), 161.5),
        ("pspnet101", 21, (473, 473), 229.8),
        ("pspnet101", 19, (713, 713), 517.2),
    ],
)
def test_multiply_adds_match_the_released_nets(name, classes, size, gmacs) -> None:
    macs = count_flops(meta_model(name, classes), size) / 2e9
    assert macs == pytest.approx(gmacs, rel=0.01)


@pytest.mark.parametrize("name", ["pspnet50", "pspnet101"])
def test_odd_size_gives_logits_and_aux_of_the_input_size(name) -> None:
    model = meta_model(name, 5, aux=True)
    x = torch.empty(2, 3, 97, 131, device="meta")
    logits, aux = model(x, return_aux=True)
    assert logits.shape == (2, 5, 97, 131)
    assert [a.shape for a in aux] == [(2, 5, 97, 131)]
    assert model.eval()(x).shape == (2, 5, 97, 131)


def test_a_real_forward_at_an_odd_size_and_batch_1_in_eval() -> None:
    torch.manual_seed(0)
    model = build_model("pspnet50", 4).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 33, 41))
    assert logits.shape == (1, 4, 33, 41) and bool(logits.isfinite().all())


def test_return_aux_without_the_head_says_how_to_build_it() -> None:
    model = meta_model("pspnet50", 3)
    assert model.aux_head is None
    with pytest.raises(PixelwiseError, match=r"aux=True"):
        model(torch.empty(2, 3, 33, 33, device="meta"), return_aux=True)


def test_batch_1_in_training_is_one_sentence_and_eval_is_fine() -> None:
    model = meta_model("pspnet50", 3).train()
    x = torch.empty(1, 3, 65, 65, device="meta")
    with pytest.raises(
        PixelwiseError, match=r"batch of 1.*1x1 pyramid bin.*batch_size to 2"
    ) as info:
        model(x)
    assert "\n" not in str(info.value)
    assert model(torch.empty(2, 3, 65, 65, device="meta")).shape == (2, 3, 65, 65)
    assert model.eval()(x).shape == (1, 3, 65, 65)


def test_synchronised_batch_norm_is_left_to_pool_its_ranks() -> None:
    # Across ranks SyncBatchNorm sees one value per rank, so the refusal is only for plain BN;
    # alone on a CPU torch itself then refuses (a ValueError, not the PixelwiseError above).
    ppm = nn.SyncBatchNorm.convert_sync_batchnorm(PyramidPooling(8)).train()
    with pytest.raises(ValueError):
        ppm(torch.randn(1, 8, 6, 6))


def test_layer4_is_at_one_eighth_and_its_blocks_see_through_dilation() -> None:
    model = meta_model("pspnet50", 3)
    seen = {}
    for name in ("layer2", "layer3", "layer4"):
        getattr(model.backbone, name).register_forward_hook(
            lambda m, i, out, name=name: seen.__setitem__(name, tuple(out.shape[-2:]))
        )
    model.eval()(torch.empty(1, 3, 97, 131, device="meta"))
    assert seen == {"layer2": (13, 17), "layer3": (13, 17), "layer4": (13, 17)}

    # One output pixel of a block's 3x3 conv at dilation d sees 1 + 2d rows of the block's input:
    # 5 in layer3 (d = 2) and 9 in layer4 (d = 4), where an undilated block sees 3.
    def rows_seen(block: nn.Module, channels: int) -> int:
        x = torch.randn(1, channels, 13, 13, generator=torch.Generator().manual_seed(0))
        x.requires_grad_()
        block(x)[0, :, 6, 6].sum().backward()
        rows = x.grad.abs().sum((0, 1)).sum(1).nonzero()
        return int(rows.max() - rows.min()) + 1

    assert rows_seen(materialise(model.backbone.layer3[1]), 1024) == 5
    assert rows_seen(materialise(model.backbone.layer4[1]), 2048) == 9


def materialise(module: nn.Module) -> nn.Module:
    """A meta-device module made real with seeded values (BN variances positive), in eval mode."""
    module = module.to_empty(device="cpu").eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, tensor in module.state_dict(keep_vars=True).items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=generator) * 0.1
                tensor.copy_(values.abs() + 0.5 if key.endswith("running_var") else values)
    return module


def test_the_pyramid_pools_to_1_2_3_and_6_bins_at_any_size() -> None:
    model = meta_model("pspnet101", 3)
    pooled = {}
    for k, branch in enumerate(model.ppm.branches):
        branch.pool.register_forward_hook(
            lambda m, i, out, k=k: pooled.__setitem__(k, tuple(out.shape))
        )
    model.eval()(torch.empty(1, 3, 97, 131, device="meta"))  # res5 is 13 x 17
    assert pooled == {k: (1, 2048, b, b) for k, b in enumerate((1, 2, 3, 6))}
    assert model.ppm.out_channels == 4096


# The release: hszhao/PSPNet evaluation/prototxt/pspnet50_ADE20K_473.prototxt (the 101 nets alike).
# conv5_3_pool{1,2,3,6} average-pool res5 with kernel = stride 60/30/20/10 at 473 (90/45/30/15 at
# 713), each then conv 1x1 512 + BN + ReLU and Interp back with the corners aligned; conv5_3_concat
# takes [conv5_3, pool6, pool3, pool2, pool1].
RELEASE_BINS = (1, 2, 3, 6)
RELEASE_CONCAT = (6, 3, 2, 1)


def alive(module: nn.Module) -> nn.Module:
    """A meta-device module made real, in eval mode, with activations that stay alive: Kaiming
    convs and BN with unit statistics (a seeded fill that shrinks them would hide the topology)."""
    module = module.to_empty(device="cpu").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()  # mean 0, variance 1, weight 1, bias 0
    return module


def release_pyramid(ppm: PyramidPooling, x: Tensor) -> Tensor:
    """The release's pyramid by hand: fixed-kernel average pools of res5 (a side divisible by 6),
    each bin's 1x1 conv + BN + ReLU (``ppm.branches.0..3`` hold pool1..pool6's), corner-aligned
    upsampling, concatenated after res5 finest first."""
    side = x.shape[-1]
    upsampled = {}
    for index, b in enumerate(RELEASE_BINS):
        pooled = F.avg_pool2d(x, kernel_size=side // b, stride=side // b)
        conv = ppm.branches[index].conv(pooled)
        upsampled[b] = F.interpolate(conv, size=x.shape[-2:], mode="bilinear", align_corners=True)
    return torch.cat([x, *(upsampled[b] for b in RELEASE_CONCAT)], dim=1)


@pytest.mark.parametrize(("name", "size", "side"), [("pspnet50", 473, 60), ("pspnet101", 713, 90)])
def test_the_adaptive_bins_are_the_release_kernels_at_its_sizes(name, size, side) -> None:
    model = meta_model(name, 3).eval()
    seen = []
    model.ppm.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    model(torch.empty(1, 3, size, size, device="meta"))
    assert seen == [(side, side)]
    x = torch.rand(1, 4, side, side, generator=torch.Generator().manual_seed(0))
    for branch, b in zip(model.ppm.branches, RELEASE_BINS, strict=True):
        kernel = side // b  # 60/30/20/10 or 90/45/30/15
        torch.testing.assert_close(
            F.adaptive_avg_pool2d(x, branch.pool.output_size), F.avg_pool2d(x, kernel, kernel)
        )
    # Elsewhere (a 505 input: res5 64 x 64) the release's kernel 10 gives 7 bins, not 6, and the
    # adaptive pool's windows differ from it (docstring of pixelwise/models/pspnet.py).
    x = torch.rand(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    assert F.avg_pool2d(x, 10, 10, ceil_mode=True).shape[-1] == 7
    assert F.adaptive_avg_pool2d(x, 6).shape[-1] == 6


def test_the_pyramid_is_the_releases_average_pools_concatenated_finest_first() -> None:
    # The paper's own pyramid, on the 60 x 60 res5 of a 473 input, against the hand-made one.
    ppm = alive(meta_model("pspnet50", 150).ppm)
    assert ppm.out_channels == 4096
    generator = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(2, 2048, 60, 60, generator=generator))  # res5 is after a ReLU
    x[1] = x[1] * torch.linspace(0, 2, 60)  # a second, different input: a ramp left to right
    with torch.no_grad():
        out = ppm(x)
        expected = release_pyramid(ppm, x)
    pyramid = out[:, 2048:]
    # The pyramid is alive: the two inputs give clearly different pooled maps.
    assert float((pyramid[0] - pyramid[1]).abs().mean()) > 0.1 * float(pyramid.abs().mean())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_the_head_drops_single_activations_after_its_relu_and_the_aux_head_channels() -> None:
    # conv5_4/dropout (ratio 0.1, after conv5_4/relu, before conv6) is Caffe's Dropout layer,
    # one draw per activation; the aux head is hszhao/semseg's, with Dropout2d (whole channels).
    model = meta_model("pspnet50", 3, aux=True)
    for head, whole_channels in ((model.head, False), (model.aux_head, True)):
        assert isinstance(head[0][-1], nn.ReLU) and head[1].p == 0.1
        assert isinstance(head[2], nn.Conv2d) and head[2].kernel_size == (1, 1)
        torch.manual_seed(0)
        dropped = head[1].train()(torch.ones(2, 64, 5, 5)) == 0
        assert 0.05 < float(dropped.float().mean()) < 0.15
        partly = dropped.any(dim=(-2, -1)) & ~dropped.all(dim=(-2, -1))
        assert bool(partly.any()) is not whole_channels


def test_the_aux_loss_reaches_the_aux_classifier_and_layer3() -> None:
    # A ResNet-18 trunk keeps the backward quick; the heads are the paper's.
    torch.manual_seed(0)
    model = PSPNet(depth=18, num_classes=3, aux=True, deep_stem=False).train()
    x = torch.randn(2, 3, 33, 33)
    target = torch.randint(0, 3, (2, 33, 33))
    watched = {
        "aux classifier": model.aux_head[-1].weight,
        "layer3": model.backbone.layer3[0].conv1.weight,
        "layer4": model.backbone.layer4[0].conv1.weight,
        "head": model.head[-1].weight,
    }
    torch.manual_seed(1)  # the same dropout masks in both forwards
    _, (aux,) = model(x, return_aux=True)
    grads = torch.autograd.grad(
        F.cross_entropy(aux, target), list(watched.values()), allow_unused=True
    )
    grad = dict(zip(watched, grads, strict=True))
    assert grad["aux classifier"] is not None and float(grad["aux classifier"].abs().sum()) > 0
    assert grad["layer3"] is not None and float(grad["layer3"].abs().sum()) > 0
    assert grad["layer4"] is None and grad["head"] is None  # res4 comes before layer4

    # Through the trainer's loss the aux classifier gets 0.4 of that (the main loss never sees it).
    torch.manual_seed(1)
    total = build_loss("ce", aux_weights=[0.4])(model(x, return_aux=True), target)
    (from_total,) = torch.autograd.grad(total, [watched["aux classifier"]])
    torch.testing.assert_close(from_total, 0.4 * grad["aux classifier"])


class _LightBackbone(nn.Module):
    """Stands in for the dilated ResNet (res4, res5 at 1/8) so that a train step is cheap."""

    def __init__(self) -> None:
        super().__init__()
        self.res4, self.res5 = nn.Conv2d(3, 1024, 1), nn.Conv2d(3, 2048, 1)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.avg_pool2d(x, 8, ceil_mode=True)
        return [self.res4(x), self.res5(x)]


def test_the_trainer_weights_the_aux_loss_by_the_config() -> None:
    torch.manual_seed(0)
    model = build_model("pspnet50", 3, aux=True)
    model.backbone = _LightBackbone()
    x = torch.randn(2, 3, 33, 45)
    target = torch.randint(0, 3, (2, 33, 45))
    target[:, :4] = 255

    def losses(seed: int) -> tuple[Tensor, Tensor]:
        torch.manual_seed(seed)  # the same dropout masks as the step below
        with torch.no_grad():
            logits, (aux,) = model(x, return_aux=True)
        return F.cross_entropy(logits, target, ignore_index=255), F.cross_entropy(
            aux, target, ignore_index=255
        )

    main, aux = losses(7)
    assert abs(float(aux - main)) > 1e-3  # so that the weight shows
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    for weight in (0.4, 1.0):
        criterion = build_loss("ce", aux_weights=[weight])
        torch.manual_seed(7)
        value, _ = train_step(model, criterion, optimizer, x, target, aux=True)
        assert value == pytest.approx(float(main + weight * aux), rel=1e-5)


@pytest.mark.parametrize(
    ("config", "crop", "iters_from"),
    [
        ("pspnet50_ade20k.yaml", 473, "epochs"),
        ("pspnet101_voc.yaml", 473, "epochs"),
        ("pspnet101_cityscapes.yaml", 713, "epochs"),
    ],
)
def test_the_recipes_train_the_aux_head_at_0_4(config, crop, iters_from) -> None:
    cfg = load_config(CONFIGS / config)
    assert cfg.model.options.get("aux") is True and cfg.loss.aux_weights == [0.4]
    assert cfg.data.crop_size == [crop, crop] and cfg.data.scale_range == [0.5, 2.0]
    assert cfg.data.batch_size == 16 and cfg.optim.lr == 0.01 and cfg.optim.momentum == 0.9
    assert cfg.optim.weight_decay == 1e-4 and cfg.schedule.name == "poly"
    assert cfg.schedule.power == 0.9 and getattr(cfg.train, iters_from) is not None


# -- weights -----------------------------------------------------------------------------------


def _semseg_resnet50_state() -> dict[str, Tensor]:
    """hszhao/semseg's ``resnet50_v2.pth`` layout: torchvision's keys, but a three-conv stem
    (conv1 3->64 /2, conv2 64->64, conv3 64->128, BN each) and layer1 taking 128 channels."""
    state = random_torchvision_state(
        torchvision.models.resnet50, lambda k: not k.startswith(("conv1", "bn1"))
    )
    generator = torch.Generator().manual_seed(1)
    for i, (cin, cout) in enumerate(((3, 64), (64, 64), (64, 128)), start=1):
        state[f"conv{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=generator)
        for name in ("weight", "bias", "running_mean", "running_var"):
            state[f"bn{i}.{name}"] = torch.randn(cout, generator=generator)
    state["layer1.0.conv1.weight"] = torch.randn(64, 128, 1, 1, generator=generator)
    state["layer1.0.downsample.0.weight"] = torch.randn(256, 128, 1, 1, generator=generator)
    return state


@pytest.mark.parametrize(
    ("deep_stem", "make_state"),
    [
        (False, lambda: random_torchvision_state(torchvision.models.resnet50)),
        (True, _semseg_resnet50_state),
    ],
    ids=["torchvision-7x7-stem", "semseg-deep-stem"],
)
def test_imagenet_resnet50_weights_land_in_place(deep_stem, make_state) -> None:
    state = make_state()
    model = build_model("pspnet50", 3, deep_stem=deep_stem, weights_backbone=state)
    own = model.backbone.state_dict()
    for key, tensor in own.items():
        if key in state:
            assert torch.equal(tensor, state[key]), key
        else:  # semseg's file predates BN's counter
            assert key.endswith("num_batches_tracked"), key
    assert set(state) - set(own) == {"fc.weight", "fc.bias"}
    assert model.backbone.layer4[0].conv2.dilation == (4, 4)


def test_torchvision_weights_do_not_fit_the_deep_stem_and_the_error_names_the_keys() -> None:
    state = random_torchvision_state(torchvision.models.resnet50)
    with pytest.raises(PixelwiseError, match=r"missing \['bn2.*shape mismatch conv1.weight"):
        meta_model("pspnet50", 3, weights_backbone=state)


def test_checkpoints_that_name_the_backbone_encoder_still_load() -> None:
    # Written before the rename: the ResNet under ``encoder.``. A ResNet-18 keeps the test quick.
    torch.manual_seed(0)
    state = PSPNet(depth=18, num_classes=3, aux=True, deep_stem=False).state_dict()
    old = {("encoder." + k.removeprefix("backbone.") if k.startswith("backbone.") else k): v
           for k, v in state.items()}  # fmt: skip
    assert "encoder.conv1.weight" in old and "backbone.conv1.weight" not in old
    torch.manual_seed(1)
    model = PSPNet(depth=18, num_classes=3, aux=True, deep_stem=False)
    model.load_state_dict(old)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[key]), key
