"""Every semantic network's function is pinned: fixed weights, fixed inputs, stored logits.

The networks of the other tasks are pinned where their tests live: DecoupledNet's class and
figure-ground logits in ``tests/test_decouplednet.py`` (its forward depends on what its classifier
detects), GAN-SS's discriminator is one of the catalogue networks pinned here, and Mask R-CNN's
function is torchvision's (pinned by torchvision's own tests).

A parameter count cannot see a refactor that keeps every shape but changes what a network
computes (a moved crop, a lost dilation, a swapped concatenation). Here each network gets weights
that depend only on the order and shapes of its state dict and on its modules' types (so a renamed
module keeps its values), runs in eval mode on two fixed odd-sized inputs, and the logits of the
first are compared with the ones stored in ``tests/data/logits/<name>.pt``. The stored file holds
a strided sample of the logits (a few KB) plus the mean and mean absolute value of all of them,
and the shapes the weights were drawn for.

A pin only sees a change if the logits depend on the input through the whole depth. A plain
random fill does not give that: BN scaled down, ReLU's positive mean and residual sums make deep
random networks map every input to almost the same logits (PSPNet-50's differed by 5e-8 between
two inputs). So the fill is made variance-preserving layer by layer, on the two inputs themselves
(as LSUV initialisation does): each conv's output channels are centred and the layer scaled to
unit mean square over the batch, and each BN's running statistics are set from its input's batch
statistics (see :func:`fill_variance_preserving`). ``test_logits_depend_on_the_input`` checks that the two inputs' logits differ
clearly for every network.

Run ``python -m tests.test_stored_logits`` to write the file of a network that has none (a new
network); an existing file is never rewritten by the test. ``--rewrite NAME ...`` replaces the
files of the named networks; docs/mutations.md says when that is legitimate.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from pixelwise.models import build_model, list_models, model_info

DATA = Path(__file__).parent / "data" / "logits"
INPUT_SHAPE = (1, 3, 37, 53)
NUM_CLASSES = 3
STRIDE = 3  # every third row and column of the logits is stored
# Small variants where the paper's network is too heavy for a CPU test; the option is part of the
# pinned function.
OPTIONS: dict[str, dict] = {"unet": {"padding": "same", "base_channels": 8}}
#: Two different inputs must give logits at least this far apart (relative L2 distance) ...
MIN_RELATIVE_CHANGE = 0.1
#: ... and a different argmax class in at least this share of the pixels (3 classes).
MIN_ARGMAX_CHANGE = 0.05


def inputs() -> Tensor:
    """The pinned input (first) and a second one, as one batch of two."""
    pinned = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(99))
    other = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(7))
    return torch.cat([pinned, other])


def fill_variance_preserving(
    model: nn.Module, calibration: Tensor | tuple[Tensor, ...]
) -> tuple[list[tuple[int, ...]], Tensor]:
    """Give every parameter and float buffer values drawn in state-dict order.

    The draw is He-scaled (``sqrt(2 / fan-in)``; a transposed conv's fan-in is what one output
    pixel sees), BN starts at weight 1 +- 0.1, PReLU at 0.25 +- 0.1, other vectors at +-0.1.
    Then one forward pass on ``calibration`` makes every layer variance-preserving: a conv's
    output channels are shifted to mean 0 over the batch (where it has a bias) and the whole
    layer scaled by one factor to unit mean square; a BN's running mean becomes its input's
    batch mean per channel and its running variance the layer's mean batch variance. One factor
    per layer, not per channel: a channel that hardly varies between the two inputs would
    otherwise be blown up to unit variance, and its rounding with it (a chaotic net whose
    logits change with the thread count). Each module is calibrated on its first call only.
    Integer buffers are zeroed. ``calibration`` is the input, or the tuple of a forward's
    arguments (DecoupledNet's images and pairs).

    Returns:
        The shapes drawn for, and the calibrated net's logits on ``calibration`` (the pass that
        calibrated it: equal to an eval forward afterwards up to rounding, and half the cost).
    """
    generator = torch.Generator().manual_seed(1234)
    modules = dict(model.named_modules())
    shapes = []
    with torch.no_grad():
        for key, tensor in model.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                tensor.zero_()
                continue
            shapes.append(tuple(tensor.shape))
            values = torch.randn(tensor.shape, generator=generator)
            owner_name, _, leaf = key.rpartition(".")
            owner = modules[owner_name]
            if isinstance(owner, nn.modules.batchnorm._NormBase) and leaf == "weight":
                values = 1 + 0.1 * values
            elif isinstance(owner, nn.PReLU):
                values = 0.25 + 0.1 * values
            elif isinstance(owner, nn.ConvTranspose2d) and leaf == "weight":
                seen = tensor.shape[0] // owner.groups * math.prod(owner.kernel_size)
                values = values * math.sqrt(2 * math.prod(owner.stride) / seen)
            elif tensor.dim() > 1:
                values = values * math.sqrt(2 / math.prod(tensor.shape[1:]))
            else:
                values = values * 0.1  # biases; BN running statistics are set below
            tensor.copy_(values)
    return shapes, _calibrate(model, calibration)


def _calibrate(model: nn.Module, calibration: Tensor | tuple[Tensor, ...]) -> Tensor:
    """The calibration pass; returns its output, which is the calibrated net's output on
    ``calibration`` (each hook returns what its module now computes)."""
    calibrated: set[int] = set()

    def first_call(module: nn.Module) -> bool:
        if id(module) in calibrated:
            return False
        calibrated.add(id(module))
        return True

    def set_statistics(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        if first_call(module):
            dims = [0, *range(2, args[0].dim())]
            variance = args[0].var(dims, unbiased=False)
            module.running_mean.copy_(args[0].mean(dims))
            module.running_var.copy_(variance.mean().clamp_min(1e-12).expand_as(variance))

    def normalise(module: nn.Module, _args: tuple[Tensor, ...], out: Tensor) -> Tensor | None:
        if not first_call(module):
            return None
        dims = [0, *range(2, out.dim())]
        mean = out.mean(dims) if module.bias is not None else torch.zeros(out.shape[1])
        view = (1, -1) + (1,) * (out.dim() - 2)
        out = out - mean.view(view)
        scale = 1 / out.pow(2).mean().sqrt().clamp_min(1e-12)
        module.weight.mul_(scale)
        if module.bias is not None:
            module.bias.sub_(mean).mul_(scale)
        return out * scale

    hooks = [
        m.register_forward_hook(normalise)
        for m in model.modules()
        if isinstance(m, nn.modules.conv._ConvNd)
    ]
    hooks += [
        m.register_forward_pre_hook(set_statistics)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    try:
        with torch.no_grad():
            args = calibration if isinstance(calibration, tuple) else (calibration,)
            return model(*args)
    finally:
        for hook in hooks:
            hook.remove()


def _build(name: str) -> nn.Module:
    """``name`` in eval mode, its tensors allocated but not initialised (the fill sets them)."""
    options = OPTIONS.get(name, {})
    with torch.device("meta"):
        model = build_model(name, NUM_CLASSES, **options)
    model = model.to_empty(device="cpu")
    stored = {id(t) for t in model.state_dict(keep_vars=True).values()}
    if any(id(t) not in stored for t in [*model.parameters(), *model.buffers()]):
        # A tensor outside the state dict would stay uninitialised: build it for real.
        torch.manual_seed(0)
        model = build_model(name, NUM_CLASSES, **options)
    return model.eval()


def fill_deterministically(model: nn.Module) -> list[tuple[int, ...]]:
    """The earlier fill, kept for ``tests/test_decouplednet.py``'s pin (``decouplednet.pt``).

    Values drawn in state-dict order, weights scaled by 1/sqrt(fan-in), BN running variances
    positive, every other vector x 0.1; returns the shapes. Deep networks come out nearly
    input-blind under it (see the module docstring); the semantic pins use
    :func:`fill_variance_preserving`.
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
                values = values / math.sqrt(math.prod(tensor.shape[1:]))
            else:
                values = values * 0.1
            tensor.copy_(values)
    return shapes


@functools.cache
def pinned_output(name: str) -> dict:
    model = _build(name)
    shapes, both = fill_variance_preserving(model, inputs())
    both = both.double()
    logits = both[:1]
    return {
        "shapes": shapes,
        "sample": logits[..., ::STRIDE, ::STRIDE].float().clone(),
        "mean": float(logits.mean()),
        "abs_mean": float(logits.abs().mean()),
        "shape": tuple(logits.shape),
        "both": both,  # not stored
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
    # A deep net at unit gain carries rounding forward too: another thread count or CPU moves
    # ResNet-101's logits by up to 1e-3 of their mean size. A changed topology moves them by
    # tenths (test_logits_depend_on_the_input), so 1e-2 keeps the margin on both sides.
    scale = max(stored["abs_mean"], 1e-6)
    torch.testing.assert_close(got["sample"], stored["sample"], rtol=1e-2, atol=1e-2 * scale)
    assert got["mean"] == pytest.approx(stored["mean"], abs=1e-2 * scale)
    assert got["abs_mean"] == pytest.approx(stored["abs_mean"], rel=1e-2)


@pytest.mark.parametrize("name", SEMANTIC)
def test_logits_depend_on_the_input(name: str) -> None:
    """The pin is only as sharp as the logits' dependence on the input: two inputs, two answers."""
    first, second = pinned_output(name)["both"]
    assert torch.isfinite(first).all() and torch.isfinite(second).all()
    change = ((first - second).norm() / torch.max(first.norm(), second.norm())).item()
    assert change > MIN_RELATIVE_CHANGE, f"{name}: logits moved by {change:.2g} between inputs"
    flipped = (first.argmax(0) != second.argmax(0)).double().mean().item()
    assert flipped > MIN_ARGMAX_CHANGE, f"{name}: only {flipped:.0%} of the argmax changed"


def _stored(name: str) -> dict:
    return {k: v for k, v in pinned_output(name).items() if k != "both"}


def write(names: list[str], *, rewrite: bool) -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = DATA / f"{name}.pt"
        if path.exists() and not rewrite:
            print(f"{name}: kept {path}")
            continue
        torch.save(_stored(name), path)
        print(f"{name}: wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    rewrite = "--rewrite" in arguments
    names = [a for a in arguments if a != "--rewrite"]
    if rewrite and not names:
        sys.exit("--rewrite needs the names of the networks whose logits are to be replaced")
    unknown = sorted(set(names) - set(SEMANTIC))
    if unknown:
        sys.exit(f"not a semantic network: {unknown}; choose from {SEMANTIC}")
    write(names or SEMANTIC, rewrite=rewrite)
