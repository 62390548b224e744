"""`pixelwise export`: ONNX and TorchScript files that give PyTorch's logits at other sizes.

Every registered semantic network is exported with dynamic batch, height and width and checked on
a random batch of another size than the one traced (``export_model`` refuses a difference above
1e-4); the networks that cannot export are listed with the reason. docs/export.md has the table.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixelwise.cli import main
from pixelwise.config import load_config
from pixelwise.data.shapes import SHAPES_CLASSES, SHAPES_PALETTE
from pixelwise.engine.checkpoint import save_checkpoint
from pixelwise.engine.model_io import load_model
from pixelwise.errors import PixelwiseError
from pixelwise.export import TOLERANCE, export_model, portable_ops, read_metadata
from pixelwise.models import build_model, list_models, model_info

needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None,
    reason="onnx and onnxruntime are not installed (pip install -e '.[export]')",
)
DEMO_CONFIG = Path(__file__).parents[1] / "pixelwise" / "configs" / "demo.yaml"

# Options as the model zoo's small forwards use them (tests/test_model_zoo.py).
SMALL_OPTIONS = {
    "unet": {"padding": "same", "base_channels": 8},
    **{f"fcdensenet{n}": {"dropout": 0.0} for n in (56, 67, 103)},
}
# 47-134M parameters: each export writes and re-reads a 190-540 MB file and runs it, 30-150 s on
# two busy cores; SegNet and G-FRNet (29M) too: SegNet-Basic, ENet, LinkNet and FC-DenseNet56
# keep max-unpooling, sized transposed convs and concatenations in the quick run.
HEAVY = {"fcn8s", "pspnet50", "refinenet50", "segnet", "gfrnet"}
# A deeper or coarser sibling builds its graph from the same modules as the one named, so one
# export per family is the check: the sweep's time stays inside the suite's ten minutes.
SAME_OPERATIONS_AS = {
    "fcn32s": "fcn8s", "fcn16s": "fcn8s", "fcn8s_atonce": "fcn8s", "pspnet101": "pspnet50",
    "refinenet101": "refinenet50", "refinenet152": "refinenet50", "fcdensenet67": "fcdensenet56",
    "fcdensenet103": "fcdensenet56",
}  # fmt: skip
# name: the words the refusal must contain. Every registered semantic network exports today.
CANNOT_EXPORT: dict[str, str] = {}
SEMANTIC = [n for n in list_models() if model_info(n).task == "semantic"]


def _ort_logits(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.numpy()})[0]


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the demo's network (U-Net, 16 channels, batch norm) as `pixelwise demo`
    writes it, with random weights and batch-norm statistics instead of training."""
    config = load_config(DEMO_CONFIG)
    torch.manual_seed(0)
    model = build_model("unet", len(SHAPES_CLASSES), **config.model.options)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    meta = {
        "model": "unet",
        "num_classes": len(SHAPES_CLASSES),
        "classes": list(SHAPES_CLASSES),
        "palette": [list(c) for c in SHAPES_PALETTE],
        "dataset": "shapes",
        "mean": list(config.data.mean),
        "std": list(config.data.std),
        "model_options": dict(config.model.options),
        "run": {},
    }
    path = tmp_path_factory.mktemp("demo") / "best.pt"
    save_checkpoint(path, {"model": model.state_dict(), "meta": meta, "config": config.to_dict()})
    return path


@needs_onnxruntime
def test_demo_checkpoint_round_trips_through_onnxruntime_at_another_size(
    tmp_path, demo_checkpoint, capsys
):
    out = tmp_path / "model.onnx"
    argv = ["export", "--checkpoint", str(demo_checkpoint), "--out", str(out), "--size", "64", "64"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "traced at 64x64" in printed and "2x3x77x69" in printed
    model = load_model(demo_checkpoint, "cpu").model
    x = torch.randn(1, 3, 77, 101)
    with torch.no_grad():
        expected = model(x).numpy()
    got = _ort_logits(out, x)
    assert got.shape == (1, 6, 77, 101)
    assert np.abs(got - expected).max() <= TOLERANCE
    assert not out.with_name("model.onnx.tmp").exists()


@needs_onnxruntime
def test_onnx_metadata_holds_the_classes_and_the_normalisation(tmp_path, demo_checkpoint):
    import onnx

    out = tmp_path / "model.onnx"
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(demo_checkpoint),
                "--out",
                str(out),
                "--size",
                "32",
                "40",
            ]
        )
        == 0
    )
    meta = read_metadata(out)
    assert meta["model"] == "unet" and meta["num_classes"] == 6
    assert meta["classes"] == list(SHAPES_CLASSES)
    assert meta["palette"] == [list(c) for c in SHAPES_PALETTE]
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["std"] == [0.25, 0.25, 0.25]
    # A consumer without pixelwise reads the same values from metadata_props.
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["model"] == "unet" and props["mean"] == "[0.5, 0.5, 0.5]"
    graph = onnx.load(str(out)).graph
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]


def test_torchscript_round_trip_and_metadata(tmp_path, demo_checkpoint, capsys):
    out = tmp_path / "model.pt"
    argv = ["export", "--checkpoint", str(demo_checkpoint), "--format", "torchscript"]
    assert main([*argv, "--out", str(out), "--size", "48", "64"]) == 0
    assert "traced at 48x64" in capsys.readouterr().out
    model = load_model(demo_checkpoint, "cpu").model
    scripted = torch.jit.load(str(out))
    x = torch.randn(2, 3, 77, 101)
    with torch.no_grad():
        difference = (scripted(x) - model(x)).abs().max().item()
    assert difference <= TOLERANCE
    meta = read_metadata(out)
    assert meta["classes"] == list(SHAPES_CLASSES) and meta["std"] == [0.25, 0.25, 0.25]


def _small(name: str) -> nn.Module:
    """The network with 3 classes, with logits of a trained network's scale.

    Parameters its paper initialises to zero (FCN's score layers) are made random, so that the
    logits compared are not all one bias; batch-norm statistics are those of one random batch,
    as training leaves them: with the initial ones (mean 0, variance 1) a random ResNet-101/152
    trunk grows its activations block by block, and RefineNet-152's logits reach values whose
    float32 rounding alone is above 1e-4.
    """
    torch.manual_seed(0)
    model = build_model(name, 3, **SMALL_OPTIONS.get(name, {}))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.01)
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # a plain average over the calibration batch
        if norms:
            model.train()
            model(torch.randn(2, 3, 64, 64))
    return model.eval()


@needs_onnxruntime
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
        for n in SEMANTIC
        if n not in CANNOT_EXPORT and n not in SAME_OPERATIONS_AS
    ],
)
def test_every_semantic_network_exports_to_onnx_with_dynamic_sizes(tmp_path, name):
    out = tmp_path / f"{name}.onnx"
    report = export_model(_small(name), out, "onnx", size=(32, 48), name=name)
    assert report.check_shape == (2, 3, 45, 53)
    if report.float32_distance is None:
        assert report.max_difference <= TOLERANCE
    else:  # float32 PyTorch itself is that far from float64 PyTorch (depth, unpooling ties)
        assert TOLERANCE < report.max_difference <= 2 * report.float32_distance
    assert out.is_file()


def test_every_sibling_left_out_of_the_sweep_has_its_family_in_it():
    for name, family in SAME_OPERATIONS_AS.items():
        assert name in SEMANTIC and family in SEMANTIC and family not in SAME_OPERATIONS_AS
        assert model_info(name).paper == model_info(family).paper


@needs_onnxruntime
def test_valid_padding_unet_is_checked_at_another_size_it_takes(tmp_path):
    # The paper's U-Net takes sides of 124 + 16k only and returns the centre crop, so the check
    # moves on from 201x193 (refused by the network itself) to 204x220.
    torch.manual_seed(0)
    model = build_model("unet", 2, base_channels=4).eval()
    report = export_model(model, tmp_path / "u.onnx", "onnx", size=(188, 188), name="unet")
    assert report.check_shape == (2, 3, 204, 220)
    assert report.max_difference <= TOLERANCE


@needs_onnxruntime
def test_networks_that_cannot_export_say_which_operation_and_why(tmp_path):
    # Empty while every registered semantic network exports; a network added to CANNOT_EXPORT
    # must be registered and refused with the words listed.
    for name, words in CANNOT_EXPORT.items():
        assert name in SEMANTIC
        with pytest.raises(PixelwiseError, match=words):
            export_model(_small(name), tmp_path / "x.onnx", "onnx", size=(32, 48), name=name)


class _Median(nn.Module):
    """A per-image median shift: aten::median has no ONNX export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.flatten(2).median(dim=2).values[..., None, None]


@needs_onnxruntime
def test_an_operation_without_export_is_named_in_one_sentence(tmp_path):
    out = tmp_path / "x.onnx"
    with pytest.raises(PixelwiseError) as caught:
        export_model(_Median(), out, "onnx", size=(8, 8), name="toy")
    message = str(caught.value)
    assert message.startswith("toy cannot be exported to ONNX: operation median fails (")
    assert "--format torchscript" in message and "\n" not in message
    assert not out.exists() and not tmp_path.joinpath("x.onnx.tmp").exists()


class _SizeBaked(nn.Module):
    """Pads to the traced size with Python ints: right only at the size it was traced at."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])
        return F.pad(x, (0, 64 - w, 0, 64 - h))[..., :h, :w] * 2


@needs_onnxruntime
def test_a_graph_that_only_holds_its_traced_size_is_refused(tmp_path):
    out = tmp_path / "x.onnx"
    with pytest.raises(PixelwiseError, match="does not export with dynamic sizes"):
        export_model(_SizeBaked(), out, "onnx", size=(16, 16), name="toy")
    assert not out.exists()


class _WidthBaked(nn.Module):
    """Scales by the width as a Python float: the trace keeps the traced width as a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * float(x.shape[-1])


@needs_onnxruntime
def test_logits_that_differ_are_refused_with_the_difference(tmp_path):
    out = tmp_path / "x.onnx"
    with pytest.raises(PixelwiseError) as caught:
        export_model(_WidthBaked(), out, "onnx", size=(16, 16), name="toy")
    message = str(caught.value)
    assert message.startswith(
        "The onnx export of toy gives logits that differ from PyTorch's by up to "
    )
    assert "on a random 2x3x29x21 input" in message and f"so {out} was not written" in message
    assert "\n" not in message and not out.exists()


@pytest.mark.parametrize("size", [(13, 7), (8, 12), (61, 45)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6, (2, 3)])
def test_portable_adaptive_pool_is_torchs(size, bins):
    x = torch.randn(2, 4, *size)
    with portable_ops():
        got = F.adaptive_avg_pool2d(x, bins)
    torch.testing.assert_close(got, F.adaptive_avg_pool2d(x, bins), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("size", [(9, 11), (10, 12)])
def test_portable_unpool_and_transposed_conv_are_torchs(size):
    x = torch.randn(2, 4, *size)
    pooled, indices = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    up = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1)
    with torch.no_grad():
        expected = (
            F.max_unpool2d(pooled, indices, 2, 2, output_size=size),
            up(pooled, output_size=size),
        )
        with portable_ops():
            got = (
                F.max_unpool2d(pooled, indices, 2, 2, output_size=size),
                up(pooled, output_size=size),
            )
    assert torch.equal(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1], atol=1e-6, rtol=1e-5)


# -- the command's one-sentence errors ---------------------------------------------------------
def test_missing_checkpoint_is_one_sentence(tmp_path, capsys):
    argv = ["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "m.onnx")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: Checkpoint") and "does not exist" in err
    assert len(err.splitlines()) == 1


def test_unwritable_out_is_one_sentence_before_any_work(tmp_path, demo_checkpoint, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file / "m.onnx", tmp_path):
        assert main(["export", "--checkpoint", str(demo_checkpoint), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --out {out}") and len(err.splitlines()) == 1


@needs_onnxruntime
def test_bad_size_and_opset_are_one_sentence(tmp_path, demo_checkpoint, capsys):
    base = ["export", "--checkpoint", str(demo_checkpoint), "--out", str(tmp_path / "m.onnx")]
    assert main([*base, "--size", "0", "64"]) == 2
    assert "is not two positive integers" in capsys.readouterr().err
    assert main([*base, "--opset", "99"]) == 2
    assert "opset 99" in capsys.readouterr().err
