"""optim.param_groups: Caffe's lr_mult / decay_mult through one mechanism."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pixelwise.config import config_from_dict
from pixelwise.engine.schedule import build_optimizer, build_scheduler, param_groups
from pixelwise.errors import PixelwiseError
from tests.test_engine import tiny_config


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _optim(rules, lr=0.1, weight_decay=1e-4):
    data = {"optim": {"lr": lr, "weight_decay": weight_decay, "param_groups": rules}}
    return config_from_dict({**data, "train": {"iters": 1}}).optim


def _group_of(groups, parameter):
    (group,) = [g for g in groups if any(p is parameter for p in g["params"])]
    return group["lr"], group["weight_decay"]


def test_caffes_bias_and_norm_multipliers():
    net = _net()
    rules = [{"params": "bias", "lr_mult": 2, "decay_mult": 0}, {"params": "norm", "decay_mult": 0}]
    groups = param_groups(net, _optim(rules))
    assert _group_of(groups, net[0].weight) == (0.1, 1e-4)  # no rule: the config's own
    assert _group_of(groups, net[3].weight) == (0.1, 1e-4)
    assert _group_of(groups, net[0].bias) == (0.2, 0.0)  # a convolution's bias
    assert _group_of(groups, net[3].bias) == (0.2, 0.0)
    assert _group_of(groups, net[1].weight) == (0.1, 0.0)  # BN's scale and shift: norm
    assert _group_of(groups, net[1].bias) == (0.1, 0.0)
    assert groups[0]["lr"] == 0.1 and groups[0]["weight_decay"] == 1e-4  # the logged lr
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))


def test_a_name_pattern_and_the_first_matching_rule():
    net = _net()
    rules = [{"params": "3.*", "lr_mult": 10}, {"params": "bias", "lr_mult": 2}]
    groups = param_groups(net, _optim(rules))
    assert _group_of(groups, net[3].weight)[0] == pytest.approx(1.0)
    assert _group_of(groups, net[3].bias)[0] == pytest.approx(1.0)  # the first rule wins
    assert _group_of(groups, net[0].bias)[0] == pytest.approx(0.2)


def test_frozen_parameters_stay_out_and_no_rule_means_one_group():
    net = _net()
    net[0].weight.requires_grad_(False)
    groups = param_groups(net, _optim([]))
    assert len(groups) == 1 and all(p is not net[0].weight for p in groups[0]["params"])


def test_a_rule_matching_nothing_names_the_parameters():
    with pytest.raises(PixelwiseError, match=r"param_groups\[0\]: params 'backbone.\*' matches no"):
        param_groups(_net(), _optim([{"params": "backbone.*", "lr_mult": 0.1}]))


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ({"params": "bias", "lr": 2}, "has lr; a rule takes params, lr_mult, decay_mult"),
        ({"lr_mult": 2}, "params is null; name the parameters"),
        (
            {"params": "bias", "decay_mult": -1},
            "decay_mult is -1; it must be a number of at least 0",
        ),
        ({"params": "bias", "lr_mult": True}, "lr_mult is true"),
    ],
)
def test_a_bad_rule_is_refused_when_the_config_loads(rule, fragment):
    with pytest.raises(PixelwiseError, match="optim.param_groups") as error:
        _optim([rule])
    assert fragment in str(error.value)


def test_the_schedule_keeps_each_groups_ratio():
    net = _net()
    optimizer = build_optimizer(net, _optim([{"params": "bias", "lr_mult": 2}]))
    schedule = config_from_dict({"train": {"iters": 10}}).schedule
    scheduler = build_scheduler(optimizer, schedule, total_iters=10, iters_per_epoch=10)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    base, bias = (g["lr"] for g in optimizer.param_groups)
    assert 0 < base < 0.1 and bias == pytest.approx(2 * base)


def test_a_run_trains_and_resumes_with_its_groups(tmp_path):
    from pixelwise.engine.train import Trainer

    data = tiny_config(tmp_path, iters=2, eval_every=2)
    data["optim"]["param_groups"] = [
        {"params": "norm", "decay_mult": 0},
        {"params": "bias", "lr_mult": 2},
    ]
    data["optim"]["weight_decay"] = 1e-4
    trainer = Trainer.from_config(config_from_dict(data), progress=False)
    trainer.fit()
    assert [g["weight_decay"] for g in trainer.optimizer.param_groups] == [1e-4, 0.0, 1e-4]
    data["train"]["iters"] = 4  # the schedule of the longer run, from step 2 on, in each group
    again = Trainer.from_config(config_from_dict(data), resume=trainer.run_dir / "last.pt")
    base, norm, bias = (g["lr"] for g in again.optimizer.param_groups)
    assert base > 0 and norm == pytest.approx(base) and bias == pytest.approx(2 * base)
    assert [g["weight_decay"] for g in again.optimizer.param_groups] == [1e-4, 0.0, 1e-4]
    assert torch.equal(
        again.optimizer.state_dict()["state"][0]["momentum_buffer"],
        trainer.optimizer.state_dict()["state"][0]["momentum_buffer"],
    )
