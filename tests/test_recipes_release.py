"""The recipes train as their releases do: per-layer multipliers and RefineNet's frozen BatchNorm.

Each recipe with ``optim.param_groups`` is built (on the meta device: names and shapes, no memory)
and grouped by :func:`pixelwise.engine.schedule.param_groups`; a parameter named in the table below
must land in the group with the multipliers the release's prototxt (or training script) gives its
layer, which the recipe's comment cites. A rule that matches nothing fails the grouping itself.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pixelwise.config import Config, load_config
from pixelwise.engine.schedule import build_optimizer, param_groups
from pixelwise.models import build_model

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "configs").glob("*.yaml"))

# recipe -> {parameter: (lr_mult, decay_mult)}; None: fixed in the network, in no group.
EXPECTED: dict[str, dict[str, tuple[float, float] | None]] = {
    # voc-fcn8s-atonce/net.py: weights 1/1, biases 2/0, deconvolutions lr_mult 0.
    "fcn8s_voc": {
        "score_fr.bias": (2, 0),
        "score_fr.weight": (1, 1),
        "score_pool3.bias": (2, 0),
        "backbone.vgg.features.0.bias": (2, 0),
        "backbone.fc6.weight": (1, 1),
        "upscore2.weight": None,
        "upscore8.weight": None,
    },
    "fcn8s_cityscapes": {"score_fr.bias": (2, 0), "backbone.fc7.weight": (1, 1)},
    "fcn8s_nyudv2": {"score_fr.bias": (2, 0), "score_pool4.weight": (1, 1)},
    # SegNet-Tutorial segnet_train.prototxt: conv 1/1 + 2/0; BN scale 1/1, shift 1/0.
    "segnet_camvid": {
        "encoder.features.0.weight": (1, 1),
        "encoder.features.0.bias": (2, 0),  # conv1_1
        "encoder.features.1.weight": (1, 1),  # conv1_1_bn scale
        "encoder.features.1.bias": (1, 0),  # conv1_1_bn shift
        "decoder.0.0.0.bias": (2, 0),  # conv5_3_D
        "decoder.0.0.1.bias": (1, 0),  # conv5_3_D_bn shift
        "classifier.bias": (2, 0),  # conv1_1_D
    },
    "segnet_camvid32": {"encoder.features.1.bias": (1, 0), "classifier.bias": (2, 0)},
    "segnet_ade20k": {"encoder.features.1.bias": (1, 0), "classifier.bias": (2, 0)},
    "segnet_coco_stuff": {"encoder.features.1.bias": (1, 0), "classifier.bias": (2, 0)},
    # gfrnet train_camvid_gate.prototxt: every conv 1/1 + 2/0; encoder BN shift decay 0; decoder
    # BN without a param block (1/1).
    "gfrnet_camvid": {
        "encoder.features.0.bias": (2, 0),
        "encoder.features.1.weight": (1, 1),
        "encoder.features.1.bias": (1, 0),
        "conv6.0.bias": (2, 0),
        "conv7.1.bias": (1, 0),  # conv7_bn shift
        "coarse.bias": (2, 0),  # pred_1
        "gates.0.project.bias": (2, 0),
        "gates.0.project_bn.bias": (1, 1),  # conv5_3_feature_s2_bn: no param block
        "gates.0.bn.weight": (1, 1),  # gate_s2_bn
        "refinements.4.conv.bias": (2, 0),
    },
    # PSPNet's released test nets (evaluation/prototxt/*.prototxt) keep the training multipliers.
    "pspnet50_ade20k": {
        "backbone.conv1.weight": (1, 1),
        "backbone.bn1.weight": (1, 0),  # conv1_1_3x3_s2/bn
        "backbone.layer4.2.bn3.bias": (1, 0),
        "ppm.branches.0.conv.0.weight": (10, 1),  # conv5_3_pool1_conv
        "ppm.branches.3.conv.1.bias": (10, 0),  # conv5_3_pool6_conv/bn
        "head.0.0.weight": (10, 1),  # conv5_4
        "head.0.1.weight": (10, 0),  # conv5_4/bn
        "head.2.weight": (10, 1),  # conv6
        "head.2.bias": (20, 1),
        "aux_head.2.bias": (20, 1),  # UNCONFIRMED: copies the main head
    },
    "pspnet101_voc": {"head.2.bias": (20, 1), "backbone.layer3.22.bn2.weight": (1, 0)},
    "pspnet101_cityscapes": {"head.2.bias": (20, 1), "ppm.branches.1.conv.0.weight": (10, 1)},
    # DecoupledNet 00*_train_seg_*.prototxt: segmentation layers 1/1 + 2/0, their BN defaults.
    "decouplednet_voc": {
        "bridge.fc6_seg.0.bias": (2, 0),
        "bridge.fc6_seg.0.weight": (1, 1),
        "bridge.fc6_seg.1.bias": (1, 1),
        "bridge.fc6_deconv.0.bias": (2, 0),
        "decoder.0.0.0.bias": (2, 0),
        "decoder.4.1.1.bias": (1, 1),
        "seg_score.bias": (2, 0),
        "cls_score.bias": (1, 1),  # the classifier stage: our own recipe, one rate
        "backbone.fc6.bias": (1, 1),
    },
    # RefineNet gen_net_opts_model_type1.m: input_featnet_lr_multiplier 0.1 on the ResNet.
    "refinenet101_voc": {
        "backbone.conv1.weight": (0.1, 1),
        "backbone.bn1.weight": (0.1, 1),
        "backbone.layer4.2.conv3.weight": (0.1, 1),
        "refine.0.reduce.weight": (1, 1),
        "classifier.bias": (1, 1),
    },
}


def _recipe(name: str) -> Config:
    return load_config(ROOT / "configs" / f"{name}.yaml")


def _network(config: Config) -> nn.Module:
    """The recipe's network and options, on the meta device, without pretrained weights."""
    with torch.device("meta"):
        return build_model(config.model.name, 21, **config.model.options)


def _multipliers(model: nn.Module, config: Config) -> dict[str, tuple[float, float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    found = {}
    for group in param_groups(model, config.optim):
        assert group["lr"] == pytest.approx(config.optim.lr * group["lr_mult"])
        assert group["weight_decay"] == pytest.approx(
            config.optim.weight_decay * group["decay_mult"]
        )
        for p in group["params"]:
            assert names[id(p)] not in found, f"{names[id(p)]} in two groups"
            found[names[id(p)]] = (group["lr_mult"], group["decay_mult"])
    return found


def test_every_recipe_with_param_groups_is_checked_here() -> None:
    with_rules = {p.stem for p in RECIPES if _recipe(p.stem).optim.param_groups}
    assert with_rules == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameters_take_the_release_multipliers(name: str) -> None:
    config = _recipe(name)
    model = _network(config)
    found = _multipliers(model, config)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(found) == trainable  # every trainable parameter in exactly one group
    for parameter, expected in EXPECTED[name].items():
        assert parameter in dict(model.named_parameters()), parameter
        if expected is None:
            assert parameter not in found, f"{parameter} should be fixed"
        else:
            assert found[parameter] == pytest.approx(expected), parameter


def test_pspnet_recipes_synchronise_batchnorm() -> None:
    for path in RECIPES:
        if path.stem.startswith("pspnet"):
            assert _recipe(path.stem).train.sync_bn, path.name


# -- RefineNet: BatchNorm frozen as the released MatConvNet code trains it -----------------------


def _batch(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))


def _bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("freeze_bn", ["stats", "all", True])
def test_refinenet_frozen_bn_keeps_running_statistics(freeze_bn: str | bool) -> None:
    config = _recipe("refinenet101_voc")
    torch.manual_seed(0)
    model = build_model("refinenet50", 3, freeze_bn=freeze_bn)
    before = [(m.running_mean.clone(), m.running_var.clone()) for m in _bns(model)]
    weights = [m.weight.detach().clone() for m in _bns(model)]
    optimizer = build_optimizer(model, config.optim)
    model.train()
    assert model.training and all(not m.training for m in _bns(model))
    assert model.refine.training  # the rest does train
    images, labels = _batch(model)
    loss = nn.functional.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for m, (mean, var) in zip(_bns(model), before, strict=True):
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert int(m.num_batches_tracked) == 0
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    frozen_affine = freeze_bn in ("all", True)
    for m, weight in zip(_bns(model), weights, strict=True):
        assert (id(m.weight) in in_optimizer) is not frozen_affine
        assert m.weight.requires_grad is not frozen_affine
        if frozen_affine:
            assert torch.equal(m.weight, weight)
    model.eval()
    model.train()  # the mode sticks through every call
    assert all(not m.training for m in _bns(model))


def test_refinenet_without_freeze_bn_updates_running_statistics() -> None:
    model = build_model("refinenet50", 3)
    mean = model.backbone.bn1.running_mean.clone()
    model.train()
    images, _ = _batch(model)
    model(images)
    assert model.backbone.bn1.training
    assert not torch.equal(model.backbone.bn1.running_mean, mean)


def test_refinenet_recipe_freezes_statistics_and_slows_the_backbone() -> None:
    config = _recipe("refinenet101_voc")
    assert config.model.options["freeze_bn"] == "stats"
    with torch.device("meta"):
        model = build_model(config.model.name, 21, **config.model.options)
    assert model.freeze_bn == "stats"
    assert all(p.requires_grad for p in model.parameters())
