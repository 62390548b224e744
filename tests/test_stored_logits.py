"""Every semantic network's function is pinned: fixed weights, fixed input, stored logits.

The networks of the other tasks are pinned where their tests live: DecoupledNet's class and
figure-ground logits in ``tests/test_decouplednet.py`` (its forward depends on what its classifier
detects), GAN-SS's discriminator is one of the catalogue networks pinned here, and Mask R-CNN's
function is torchvision's (pinned by torchvision's own tests).

A parameter count cannot see a refactor that keeps every shape but changes what a network
computes (a moved crop, a lost dilation, a swapped concatenation). Here each network gets weights
that depend only on the order and shapes of its state dict (so a renamed module keeps its values),
runs in eval mode on one fixed odd-sized input, and its logits are compared with the ones stored in
``tests/data/logits/<name>.pt``. The stored file holds a strided sample of the logits (a few KB)
plus the mean and mean absolute value of all of them, and the shapes the weights were drawn for.

Run ``python -m tests.test_stored_logits`` to write the file of a network that has none (a new
network); an existing file is never rewritten by the test.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pixelwise.models import build_model, list_models, model_info

DATA = Path(__file__).parent / "data" / "logits"
INPUT_SHAPE = (1, 3, 37, 53)
NUM_CLASSES = 3
STRIDE = 3  # every third row and column of the logits is stored
# Small variants where the paper's network is too heavy for a CPU test; the option is part of the
# pinned function.
OPTIONS: dict[str, dict] = {"unet": {"padding": "same", "base_channels": 8}}


def fill_deterministically(model: nn.Module) -> list[tuple[int, ...]]:
    """Give every parameter and float buffer values drawn in state-dict order; return the shapes.

    Weights are scaled by 1/sqrt(fan-in) so activations stay finite through deep nets; BN running
    variances are positive. Integer buffers are left alone.
    """
    generator = torch.Generator().manual_seed(1234)
    shapes = []
    with torch.no_grad():
        for key, tensor in model.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            shapes.append(tuple(tensor.shape))
            values = torch.randn(tensor.shape, generator=generator)
            if key.endswith("running_var"):
                values = values.abs() + 0.5
            elif tensor.dim() > 1:
                fan_in = math.prod(tensor.shape[1:])
                values = values / math.sqrt(fan_in)
            else:
                values = values * 0.1
            tensor.copy_(values)
    return shapes


def pinned_output(name: str) -> dict:
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, **OPTIONS.get(name, {})).eval()
    shapes = fill_deterministically(model)
    x = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(99))
    with torch.no_grad():
        logits = model(x).double()
    return {
        "shapes": shapes,
        "sample": logits[..., ::STRIDE, ::STRIDE].float().clone(),
        "mean": float(logits.mean()),
        "abs_mean": float(logits.abs().mean()),
        "shape": tuple(logits.shape),
    }


# Logits are the semantic networks' output; Mask R-CNN's function is torchvision's (pinned by
# torchvision's own tests), and tests/test_maskrcnn.py checks how pixelwise builds it.
SEMANTIC = [n for n in list_models() if model_info(n).task == "semantic"]


@pytest.mark.parametrize("name", SEMANTIC)
def test_logits_are_the_stored_ones(name: str) -> None:
    path = DATA / f"{name}.pt"
    assert path.is_file(), f"no stored logits for {name}; run python -m tests.test_stored_logits"
    stored = torch.load(path, weights_only=True)
    got = pinned_output(name)
    assert got["shapes"] == [tuple(s) for s in stored["shapes"]], "parameter shapes/order changed"
    assert got["shape"] == tuple(stored["shape"])
    scale = max(stored["abs_mean"], 1e-6)
    torch.testing.assert_close(got["sample"], stored["sample"], rtol=1e-4, atol=1e-4 * scale)
    assert got["mean"] == pytest.approx(stored["mean"], rel=1e-4, abs=1e-5 * scale)
    assert got["abs_mean"] == pytest.approx(stored["abs_mean"], rel=1e-4)


def write_missing(names: list[str]) -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = DATA / f"{name}.pt"
        if path.exists():
            print(f"{name}: kept {path}")
            continue
        torch.save(pinned_output(name), path)
        print(f"{name}: wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    write_missing(sys.argv[1:] or SEMANTIC)
