"""Every registered network against its paper: parameters within 1 % and FLOPs within 3 %.

The reference figures are those of ../shared/REFERENCE.md part A (the papers or the authors'
released models, at the paper's class count). A name registered without a reference fails here,
so a new network cannot land unchecked. Everything runs on the meta device: shapes only.
"""

from __future__ import annotations

import pytest
import torch

from pixelwise.models import build_model, list_models, model_info
from pixelwise.models.complexity import count_flops, count_parameters

# name: (learnable parameters, multiply-adds in G at the registered input size or None)
REFERENCE = {
    "fcn32s": (134.35e6, 181.4),
    "fcn16s": (134.36e6, 181.4),
    "fcn8s": (134.36e6, 181.5),
    "fcn8s_atonce": (134.36e6, 181.5),
    "unet": (31_030_658, 150.4),
    "segnet": (29_449_355, 106.7),
    "segnet_basic": (1.425e6, None),  # the SegNet paper's table; no MACs published
    "fcdensenet56": (1_376_795, 30.7),
    "fcdensenet67": (3_463_243, 72.0),
    "fcdensenet103": (9_322_091, 69.1),
    "enet": (363_791, 1.69),
    "linknet": (11_535_659, 9.67),
}


def paper_model(name: str) -> torch.nn.Module:
    info = model_info(name)
    kwargs = {"in_channels": info.in_channels} if info.in_channels != 3 else {}
    with torch.device("meta"):
        return build_model(name, info.num_classes, **kwargs)


def test_every_registered_model_has_a_reference():
    assert sorted(REFERENCE) == list_models()


@pytest.mark.parametrize("name", list_models())
def test_parameters_match_the_paper(name):
    expected, _ = REFERENCE[name]
    assert count_parameters(paper_model(name)) == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("name", [n for n in list_models() if REFERENCE[n][1] is not None])
def test_flops_match_the_paper(name):
    info = model_info(name)
    macs = count_flops(paper_model(name), info.input_size, info.in_channels) / 2e9
    assert macs == pytest.approx(REFERENCE[name][1], rel=0.03)


@pytest.mark.parametrize("name", list_models())
def test_metadata_is_complete(name):
    info = model_info(name)
    assert info.paper and 2014 <= info.year <= 2017
    assert len(info.input_size) == 2 and info.num_classes > 1
