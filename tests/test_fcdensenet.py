"""FC-DenseNet 56/67/103: reference parameter counts, any input size, the transition-up wiring,
training on one batch, and the memory-efficient path matching the plain one exactly."""

from __future__ import annotations

import pytest
import torch

from pixelwise.errors import PixelwiseError
from pixelwise.models import build_model, model_info
from pixelwise.models.complexity import count_flops, count_parameters
from pixelwise.models.fcdensenet import FCDenseNet, TransitionUp

# SimJeg/FC-DenseNet at 11 classes, learnable parameters only (REFERENCE.md, FC-DenseNet entry).
REFERENCE_PARAMS = {
    "fcdensenet56": 1_376_795,
    "fcdensenet67": 3_463_243,
    "fcdensenet103": 9_322_091,
}
# MACs at 360x480 (REFERENCE.md); torch's counter reports 2 FLOPs per multiply-add.
REFERENCE_GMACS = {"fcdensenet56": 30.7, "fcdensenet67": 72.0, "fcdensenet103": 69.1}
LAYERS = {
    "fcdensenet56": (12, [4] * 11),
    "fcdensenet67": (16, [5] * 11),
    "fcdensenet103": (16, [4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4]),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_PARAMS))
def test_parameter_count_matches_reference(name: str) -> None:
    info = model_info(name)
    model = build_model(name, num_classes=info.num_classes)
    params = count_parameters(model)
    print(f"{name}: {params:,} learnable parameters")
    assert abs(params - REFERENCE_PARAMS[name]) <= 0.01 * REFERENCE_PARAMS[name]
    assert info.input_size == (360, 480) and info.year == 2017


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCE_GMACS))
def test_flops_at_paper_size(name: str) -> None:
    info = model_info(name)
    flops = count_flops(build_model(name, num_classes=info.num_classes), info.input_size)
    print(f"{name}: {flops / 1e9:.1f} GFLOPs = {flops / 2e9:.1f} GMACs at {info.input_size}")
    assert abs(flops / 2e9 - REFERENCE_GMACS[name]) <= 0.02 * REFERENCE_GMACS[name]


def test_odd_input_size_forward_and_backward() -> None:
    # 250x333 is divisible by neither 2 nor 32: every level exercises the transposed-conv crop.
    torch.manual_seed(0)
    model = build_model("fcdensenet56", num_classes=11)
    x = torch.randn(2, 3, 250, 333)
    logits = model(x)
    assert logits.shape == (2, 11, 250, 333)
    logits.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["fcdensenet67", "fcdensenet103"])
@pytest.mark.parametrize("size", [(40, 56), (33, 47)])
def test_logits_have_the_input_size(name: str, size: tuple[int, int]) -> None:
    model = build_model(name, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 5, *size)


def test_too_small_input_names_the_minimum() -> None:
    model = build_model("fcdensenet56", num_classes=3)
    with pytest.raises(PixelwiseError, match="32x32"):
        model(torch.randn(1, 3, 31, 64))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_transition_up_sees_only_the_new_maps(name: str) -> None:
    """Each transposed conv must get growth x n_layers of the block before it, not its stack."""
    growth, layers = LAYERS[name]
    model = build_model(name, num_classes=11).eval()
    seen: list[int] = []
    hooks = [
        up.upsample.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[1]))
        for up in model.transitions_up
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    expected = [growth * n for n in layers[5:10]]  # the bottleneck, then up blocks 1..4
    assert seen == expected
    assert [up.upsample.in_channels for up in model.transitions_up] == expected
    # The last block keeps its whole stack for the classifier: e.g. 256 maps for FC-DenseNet103.
    last = model.up_blocks[-1]
    assert model.classifier.in_channels == last.out_channels > last.new_channels


def test_transition_up_concatenates_upsampled_then_skip() -> None:
    up = TransitionUp(4)
    out = up(torch.randn(1, 4, 3, 5), torch.randn(1, 7, 7, 10))
    assert out.shape == (1, 11, 7, 10)


def _loss_and_grads(model: FCDenseNet, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    logits = model(x)
    (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_memory_efficient_matches_plain(dropout: float) -> None:
    """Same weights, same seed: same logits, same gradients, same BN running statistics."""
    torch.manual_seed(0)
    plain = build_model("fcdensenet56", num_classes=5, dropout=dropout)
    efficient = build_model("fcdensenet56", num_classes=5, dropout=dropout, memory_efficient=True)
    efficient.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 40, 48)

    # Train mode: BN uses batch statistics; dropout masks come from the same seed.
    torch.manual_seed(1)
    logits_plain, grads_plain = _loss_and_grads(plain, x)
    torch.manual_seed(1)
    logits_eff, grads_eff = _loss_and_grads(efficient, x)
    torch.testing.assert_close(logits_eff, logits_plain, rtol=0, atol=0)
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_eff[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # The recomputation in backward must not move the running statistics a second time.
    for (name, a), (_, b) in zip(
        plain.state_dict().items(), efficient.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)

    plain.eval()
    efficient.eval()
    with torch.no_grad():
        torch.testing.assert_close(efficient(x), plain(x), rtol=0, atol=0)


def test_builders_are_keyword_only_and_reject_unknown_options() -> None:
    with pytest.raises(PixelwiseError, match="memory_efficient"):
        build_model("fcdensenet56", num_classes=11, growth_rate=8)
    with pytest.raises(TypeError):
        model_info("fcdensenet56").builder(11)
