"""Topology that parameter and MAC counts cannot see: crop offsets, dilations, concatenation order.

Each check measures the network through its own forward pass and compares with what the paper's
geometry implies, and each shows, on a deliberately broken copy (monkeypatched here, nothing is
edited on disk), that it would fail.

- FCN: an impulse moved through the real forward pass lands, averaged over every sub-stride
  phase, exactly on the pixel it came from, on every score path (``score_fr``, ``score_pool4``,
  ``score_pool3``). Moving any of the Caffe crop offsets (19; 5, 27; 5, 9, 31) moves it.
- ENet: the receptive field of one encoder output pixel, read from the gradient, is as tall as
  the paper's Table 1 with its dilations implies, and shrinks to the undilated size without them.
- FC-DenseNet: every transition up hands its dense block ``[upsampled, skip]`` in that order
  (SimJeg/FC-DenseNet ``layers.py`` ``TransitionUp``: ``ConcatLayer([l, skip_connection])``).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import pixelwise.models.fcn as fcn_module
from pixelwise.models import build_model
from pixelwise.models.layers import BilinearConvTranspose2d

# -- FCN: crop offsets ---------------------------------------------------------------------------

#: Each FCN's score paths, in the order they become output channels, with their strides.
FCN_PATHS = {
    "fcn32s": (("score_fr", 32),),
    "fcn16s": (("score_fr", 32), ("score_pool4", 16)),
    "fcn8s": (("score_fr", 32), ("score_pool4", 16), ("score_pool3", 8)),
}
_SIZE = 160
#: One impulse per sample on the diagonal: 32 consecutive positions cover every phase of the
#: coarsest stride, far enough from the borders that no response is cut off.
_POSITIONS = range(64, 96)


def _geometric_skeleton(name: str) -> nn.Module:
    """``name``'s FCN with its geometry kept and everything else made transparent.

    Every conv keeps its kernel size, stride, padding and dilation but has one channel and a
    single 1 at its kernel's centre (no blur, only the shift its padding implies); max pools
    become average pools of the same geometry, so the network is linear; each score layer
    writes its path into its own output channel; the fixed bilinear upsamplers stay bilinear.
    Built on the meta device first, so VGG16's 134M weights are never allocated.
    """
    paths = [path for path, _ in FCN_PATHS[name]]
    with torch.device("meta"):
        model = build_model(name, num_classes=len(paths))
    for _, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BilinearConvTranspose2d):
                new: nn.Module = BilinearConvTranspose2d(
                    len(paths), child.kernel_size[0], child.stride[0], learnable=False
                )
            elif isinstance(child, nn.Conv2d) and child_name in paths:
                new = nn.Conv2d(1, len(paths), 1)
                with torch.no_grad():
                    new.weight.zero_()
                    new.bias.zero_()
                    new.weight[paths.index(child_name), 0] = 1.0
            elif isinstance(child, nn.Conv2d):
                new = nn.Conv2d(
                    1, 1, child.kernel_size, child.stride, child.padding, child.dilation
                )
                kh, kw = child.kernel_size
                with torch.no_grad():
                    new.weight.zero_()
                    new.bias.zero_()
                    new.weight[0, 0, kh // 2, kw // 2] = 1.0
            elif isinstance(child, nn.MaxPool2d):
                new = nn.AvgPool2d(
                    child.kernel_size, child.stride, child.padding, ceil_mode=child.ceil_mode
                )
            else:
                continue
            setattr(parent, child_name, new)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not left, f"the skeleton does not know these FCN tensors yet: {left}"
    return model.eval()


def _impulse_errors(model: nn.Module) -> Tensor:
    """``(paths, samples, 2)``: response centroid minus impulse position, in rows and columns."""
    x = torch.zeros(len(_POSITIONS), 1, _SIZE, _SIZE)
    for i, p in enumerate(_POSITIONS):
        x[i, 0, p, p] = 1.0
    with torch.no_grad():
        response = model(x).abs().double()  # N x paths x H x W
    assert response.shape[-2:] == (_SIZE, _SIZE)
    grid = torch.arange(_SIZE, dtype=torch.float64)
    total = response.sum((-2, -1))
    assert bool((total > 0).all()), "an impulse vanished on some path"
    rows = (response.sum(-1) * grid).sum(-1) / total
    cols = (response.sum(-2) * grid).sum(-1) / total
    position = torch.tensor(list(_POSITIONS), dtype=torch.float64)[:, None]
    return torch.stack([rows - position, cols - position], dim=-1).transpose(0, 1)


@pytest.mark.parametrize("name", sorted(FCN_PATHS))
def test_fcn_crops_put_every_score_path_back_on_the_input_pixel(name: str) -> None:
    errors = _impulse_errors(_geometric_skeleton(name))
    for (path, stride), error in zip(FCN_PATHS[name], errors, strict=True):
        # Averaged over a full period of phases the centroid is exact; a one-pixel slip of the
        # final crop moves it by 1, a slip of a skip crop by that path's stride.
        mean = error.mean(0)
        assert mean.abs().max().item() < 0.25, f"{name} {path}: response off by {mean.tolist()} px"
        # A single impulse can be off by up to half the stride of the map that predicted it.
        assert error.abs().max().item() <= stride / 2, f"{name} {path}: {error.abs().max()}"


@pytest.mark.parametrize(
    ("name", "offset", "shift"),
    [
        ("fcn32s", 19, 1),
        ("fcn16s", 5, 16),
        ("fcn16s", 27, 1),
        ("fcn8s", 5, 16),
        ("fcn8s", 9, 8),
        ("fcn8s", 31, 1),
    ],
)
def test_fcn_impulse_test_fails_when_a_crop_offset_moves(
    monkeypatch: pytest.MonkeyPatch, name: str, offset: int, shift: int
) -> None:
    """The check above on an FCN whose ``crop_like(..., offset, ...)`` takes offset + 1."""
    crop_like = fcn_module.crop_like
    calls: list[int] = []

    def moved(x: Tensor, at: int, reference: Tensor) -> Tensor:
        calls.append(at)
        return crop_like(x, at + 1 if at == offset else at, reference)

    monkeypatch.setattr(fcn_module, "crop_like", moved)
    errors = _impulse_errors(_geometric_skeleton(name))
    assert offset in calls, f"{name} no longer crops at {offset}; update this test's table"
    worst = max(error.mean(0).abs().max().item() for error in errors)
    assert worst == pytest.approx(shift, abs=0.25)


# -- ENet: dilations -----------------------------------------------------------------------------

#: Paper Table 1, stages 2 and 3 after the downsampling: (dilation, asymmetric 5).
_ENET_TABLE = (
    (1, False),
    (2, False),
    (1, True),
    (4, False),
    (1, False),
    (8, False),
    (1, True),
    (16, False),
)


def _receptive_field(layers: list[tuple[int, int, int]]) -> int:
    """Height of the receptive field of a chain of ``(kernel, stride, dilation)`` layers."""
    field, jump = 1, 1
    for kernel, stride, dilation in layers:
        field += (kernel - 1) * dilation * jump
        jump *= stride
    return field


def _enet_encoder_field(*, dilated: bool) -> int:
    """The paper's encoder along its deepest path, in the vertical direction (1x1s add nothing)."""
    bottleneck = [(5, 1, 1) if asym else (3, 1, d if dilated else 1) for d, asym in _ENET_TABLE]
    layers = [(3, 2, 1)]  # initial block's 3x3/2 conv
    layers += [(2, 2, 1), (3, 1, 1)] + [
        (3, 1, 1)
    ] * 4  # bottleneck 1.0 (2x2/2 projection) + 1.1-1.4
    layers += [(2, 2, 1), (3, 1, 1)] + bottleneck * 2  # bottleneck 2.0, stages 2 and 3
    return _receptive_field(layers)


def _enet_measured_field(model: nn.Module) -> int:
    """Rows of the input that reach the centre pixel of the encoder's output (after stage 3)."""
    torch.manual_seed(0)
    height, width = 1536, 16
    x = torch.randn(1, 3, height, width, requires_grad=True)
    encoded: list[Tensor] = []
    handle = model.stage3.register_forward_hook(lambda _m, _a, out: encoded.append(out))
    try:
        model(x)
    finally:
        handle.remove()
    (out,) = encoded
    assert out.shape[-2:] == (height // 8, width // 8)
    out[0, :, height // 16, width // 16].sum().backward()
    rows = (x.grad[0].abs().sum((0, 2)) > 0).nonzero().flatten()
    assert 0 < rows.min() and rows.max() < height - 1, "the field reaches the border; enlarge"
    return int(rows.max() - rows.min() + 1)


def _without_dilation(model: nn.Module) -> int:
    undone = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.dilation != (1, 1):
            module.dilation = (1, 1)
            module.padding = tuple(k // 2 for k in module.kernel_size)
            undone += 1
    return undone


def test_enet_encoder_field_is_what_the_dilations_imply() -> None:
    torch.manual_seed(0)
    model = build_model("enet", num_classes=11).eval()
    expected = _enet_encoder_field(dilated=True)
    assert expected == 1217
    measured = _enet_measured_field(model)
    assert measured == expected, f"encoder field {measured} rows, Table 1 implies {expected}"


def test_enet_field_test_fails_without_the_dilations() -> None:
    """The same measurement on ENet with every dilation set to 1 (padding kept 'same')."""
    torch.manual_seed(0)
    model = build_model("enet", num_classes=11).eval()
    undone = _without_dilation(model)
    assert undone == 8, f"{undone} dilated convs; Table 1 has 2, 4, 8, 16 in stages 2 and 3"
    measured = _enet_measured_field(model)
    assert measured == _enet_encoder_field(dilated=False) == 385
    assert measured != _enet_encoder_field(dilated=True)


# -- FC-DenseNet: [upsampled, skip] --------------------------------------------------------------


def _transition_up_orders(model: nn.Module) -> list[tuple[bool, bool]]:
    """For each transition up: (its output starts with the upsampled maps, ends with the skip).

    A forward hook sees each transition's inputs ``(x, skip)`` and its output; the upsampled
    maps are the transition's own transposed conv applied to ``x`` and cropped to the skip.
    """
    seen: list[tuple[bool, bool]] = []

    def check(module: nn.Module, args: tuple[Tensor, Tensor], out: Tensor) -> None:
        x, skip = args
        up = module.upsample(x)[..., : skip.shape[-2], : skip.shape[-1]]
        assert out.shape[1] == up.shape[1] + skip.shape[1]
        seen.append(
            (
                torch.equal(out[:, : up.shape[1]], up),
                torch.equal(out[:, out.shape[1] - skip.shape[1] :], skip),
            )
        )

    handles = [t.register_forward_hook(check) for t in model.transitions_up]
    try:
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 96))
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _fcdensenet56() -> nn.Module:
    torch.manual_seed(0)
    return build_model("fcdensenet56", num_classes=11).eval()


def test_fcdensenet_transition_up_concatenates_upsampled_then_skip() -> None:
    orders = _transition_up_orders(_fcdensenet56())
    assert orders == [(True, True)] * 5


def test_fcdensenet_order_test_fails_on_skip_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """``[skip, upsampled]`` keeps every shape and count; only the order check sees it."""
    from pixelwise.models import fcdensenet

    def skip_first(self: nn.Module, x: Tensor, skip: Tensor) -> Tensor:
        up = self.upsample(x)[..., : skip.shape[-2], : skip.shape[-1]]
        return torch.cat([skip, up], dim=1)

    monkeypatch.setattr(fcdensenet.TransitionUp, "forward", skip_first)
    orders = _transition_up_orders(_fcdensenet56())
    assert len(orders) == 5 and not any(first and last for first, last in orders)


# -- GAN-SS: the discriminator's loss on real pixels, labelled or not ----------------------------


def test_gan_ss_discriminator_loss_counts_every_real_pixel_labelled_or_not(tmp_path) -> None:
    """D's loss is supervised + real + fake (Salimans et al.), and the real term, -log(1 - p_fake),
    covers the unlabelled images too: with one labelled and one all-ignore image, the logged
    ``d_real`` is the hand-computed mean over both images' pixels and the step's loss is the sum
    of the three logged terms (dropping a term from the update would leave it logged)."""
    from pixelwise.config import config_from_dict
    from pixelwise.engine.precision import float32
    from pixelwise.tasks import build_task
    from pixelwise.tasks.base import Update
    from tests.test_gan_ss import gan_config

    torch.manual_seed(0)
    config = config_from_dict(gan_config(tmp_path))
    task = build_task(config, 3, ["a", "b", "c"], [(0, 0, 0)] * 3)
    model = build_model("gan_ss", 3, **config.model.options)
    task.setup(model, torch.device("cpu"), None, float32())
    model.eval()  # running statistics and no dropout: the step's D forward is reproducible here
    images = torch.randn(2, 3, 32, 32)
    masks = torch.full((2, 32, 32), 255, dtype=torch.long)
    masks[0] = torch.randint(0, 3, (32, 32))  # image 0 labelled, image 1 not
    with torch.no_grad():
        logits = model(images, with_fake=True).double()  # N x (K + 1) x H x W
    p_fake = logits.softmax(dim=1)[:, -1]
    per_image = -torch.log1p(-p_fake).mean(dim=(1, 2))
    assert abs(per_image[0] - per_image[1]) > 1e-3, "the two images must tell the terms apart"

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    update = Update(optimizer, torch.amp.GradScaler("cpu", enabled=False), float32())
    result = task.train_step(model, images, masks, update)
    terms = result.terms
    assert terms["d_real"] == pytest.approx(per_image.mean().item(), rel=1e-4)
    total = terms["d_supervised"] + terms["d_real"] + terms["d_fake"]
    assert result.loss == pytest.approx(total, rel=1e-5)


# -- DecoupledNet: the deconvolution net unpools at the classifier's pool argmax -----------------


def test_decouplednet_decoder_unpools_at_the_classifiers_pool_argmax() -> None:
    """Every decoder stage's input is an unpooled map: in each 2x2 window at most one position,
    the one the classifier's pool picked, is non-zero (nearest upsampling would fill all four)."""
    torch.manual_seed(0)
    model = build_model("decouplednet", 4, width_divisor=16, fc_kernel=2, input_size=96).eval()
    seen: list[Tensor] = []
    handles = [
        block.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        for block in model.decoder
    ]
    try:
        with torch.no_grad():
            model(torch.randn(2, 3, 96, 96), torch.tensor([[0, 0], [1, 2]]))
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == len(model.decoder)
    for unpooled in seen:
        even = unpooled[..., : unpooled.shape[-2] // 2 * 2, : unpooled.shape[-1] // 2 * 2]
        windows = nn.functional.avg_pool2d((even != 0).float(), 2) * 4
        assert windows.max().item() <= 1, "a 2x2 window has more than the pooled position"
        assert windows.sum().item() > 0, "the unpooled map is all zero"
