"""Export a trained network to ONNX or TorchScript, with its preprocessing and classes as metadata.

>>> report = export_checkpoint("runs/demo/best.pt", "model.onnx", "onnx")
>>> report.max_difference, read_metadata("model.onnx")["classes"]

The exported graph takes ``N x 3 x H x W`` float32 images, ``image / 255`` normalised with the stored
``mean`` and ``std``, and returns ``N x C x H x W`` logits; batch, height and width are dynamic.
After writing, the file is loaded back (onnxruntime, or ``torch.jit.load``) and run on a random
batch of another size than the one traced; its logits must equal PyTorch's within 1e-4 (max abs),
else the export is refused and nothing is left at ``out``. Where float32 PyTorch is itself further
than that from float64 PyTorch on the check input (PSPNet-101's and RefineNet-152's depth, a
max-unpooling tie), the file may differ from float32 PyTorch by twice that distance.

Which ONNX exporter, and why. torch 2.14.1 has two: the TorchScript-based one (``dynamo=False``,
which traces one forward) and the ``torch.export``-based one (``dynamo=True``). We use the
TorchScript-based one. Measured here on two busy CPU cores with small networks: it writes a U-Net
in 0.3 s and FC-DenseNet56 in 0.8 s where the dynamo exporter took 24 s and 121 s; the dynamo
exporter also refuses ENet in ``torch.export`` (the ceil-pool padding by ``h % 2`` on symbolic
sizes) and LinkNet in the ONNX conversion (a transposed conv with a symbolic ``output_size``),
while the TorchScript one records the size computations of our networks as graph operations, so
the graphs stay dynamic. Three operations still need help, and :func:`portable_ops` gives it while
tracing, without touching the model:

- ``max_unpool2d`` with ``output_size`` (SegNet, ENet): the TorchScript exporter has no symbolic
  for it and torch's own size check fails on traced sizes; it is traced as the equivalent scatter
  of the values into a zero map of the pooled size (the indices of a non-overlapping pool are
  unique, so the two agree exactly).
- ``conv_transpose2d`` with an ``output_padding`` derived from ``output_size`` (LinkNet, ENet):
  ONNX's ConvTranspose holds its output padding as a fixed attribute, so a trace at one size
  would be wrong at a size of the other parity. It is traced with the largest output padding
  the stride allows, then cropped to the requested size: output padding only appends rows and
  columns at the bottom and right, so the crop is exactly the same function.
- ``adaptive_avg_pool2d`` to bins other than 1x1 (PSPNet's 2, 3 and 6), for ONNX only: the
  exporter needs a static input size for it ("input size not accessible"); it is traced as two
  matrix products with averaging matrices built from the traced size over torch's own bins.

U-Net's crop, FC-DenseNet's concatenations, FCN's crops and the bilinear resizes need nothing.
docs/export.md lists what each registered network does, with the differences measured.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from pixelwise.errors import PixelwiseError
from pixelwise.outputs import write_bytes

FORMATS = ("onnx", "torchscript")
DEFAULT_OPSET = 17
TOLERANCE = 1e-4
# How much farther from float64 than float32 PyTorch an exported file's runtime may be.
FILE_FLOOR = 3.0
# The TorchScript file's metadata lives in this extra file inside the archive.
EXTRA_FILE = "pixelwise.json"
METADATA_KEYS = ("model", "num_classes", "classes", "palette", "mean", "std", "resize", "input")
INPUT_DESCRIPTION = "N x 3 x H x W float32 RGB, (image / 255 - mean) / std; logits N x C x H x W"


@dataclass
class ExportReport:
    """What :func:`export_model` wrote and measured.

    Attributes:
        path: the file written.
        format: ``"onnx"`` or ``"torchscript"``.
        size: the (H, W) the network was traced at.
        check_shape: the N x 3 x H x W of the random input the file was checked on.
        max_difference: max abs difference of its logits from PyTorch's on that input.
        seconds: time to trace and write the file (the check not included).
        float32_distance: None when the file is within 1e-4 of float32 PyTorch; otherwise
            float32 PyTorch's own distance from float64 PyTorch on the check input (deep
            networks' rounding, or a max-unpooling tie), and the file passed by being within
            twice that of float32 PyTorch.
    """

    path: Path
    format: str
    size: tuple[int, int]
    check_shape: tuple[int, int, int, int]
    max_difference: float
    seconds: float
    float32_distance: float | None = None


# -- operations made traceable ---------------------------------------------------------------------
def _pair(value: Any) -> tuple[Any, Any]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _unpool_by_scatter(
    x: Tensor,
    indices: Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    output_size: Sequence[Any] | None = None,
) -> Tensor:
    """``F.max_unpool2d`` as a scatter into a zero map, which both tracers record with dynamic sizes."""
    n, c, h, w = x.shape
    if output_size is None:
        kh, kw = _pair(kernel_size)
        sh, sw = _pair(kernel_size if stride is None else stride)
        ph, pw = _pair(padding)
        out_h, out_w = (h - 1) * sh - 2 * ph + kh, (w - 1) * sw - 2 * pw + kw
    else:
        out_h, out_w = output_size[-2], output_size[-1]
    flat = x.new_zeros(n, c, out_h * out_w)
    flat = flat.scatter(2, indices.flatten(2), x.flatten(2))
    return flat.view(n, c, out_h, out_w)


def _conv_transpose_then_crop(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: Any = 1,
    padding: Any = 0,
    output_padding: Any = 0,
    groups: int = 1,
    dilation: Any = 1,
) -> Tensor:
    """``conv_transpose2d`` with the largest output padding, cropped to the asked-for one.

    The asked-for padding may be a traced size difference; the crop keeps it in the graph.
    """
    strides, dilations = _pair(stride), _pair(dilation)
    largest = tuple(max(s, d) - 1 for s, d in zip(strides, dilations, strict=True))
    y = F.conv_transpose2d(x, weight, bias, stride, padding, largest, groups, dilation)
    asked = _pair(output_padding)
    if all(isinstance(a, int) and a == m for a, m in zip(asked, largest, strict=True)):
        return y
    return y[..., : y.shape[-2] - (largest[0] - asked[0]), : y.shape[-1] - (largest[1] - asked[1])]


def _adaptive_average_by_matmul(x: Tensor, output_size: Any) -> Tensor:
    """``F.adaptive_avg_pool2d`` as two matrix products with averaging matrices built from the
    traced size: bin ``i`` of ``b`` averages rows ``floor(i H / b)`` to ``ceil((i + 1) H / b)``,
    torch's regions, so the graph keeps any input size."""
    bins = _pair(output_size)
    sides = []
    for axis, count in zip((-2, -1), bins, strict=True):
        length = x.shape[axis]
        count = length if count is None else count
        index = torch.arange(count, device=x.device).unsqueeze(1)
        start = torch.div(index * length, count, rounding_mode="floor")
        end = torch.div((index + 1) * length + count - 1, count, rounding_mode="floor")
        position = torch.arange(length, device=x.device).unsqueeze(0)
        inside = ((position >= start) & (position < end)).to(x.dtype)
        sides.append(inside / inside.sum(dim=1, keepdim=True))
    rows, columns = sides
    return torch.matmul(torch.matmul(rows, x), columns.transpose(0, 1))


class portable_ops(TorchFunctionMode):  # noqa: N801 - a context manager, named like torch's modes
    """While active, three operations run (and so trace) in equivalent forms that export with
    dynamic sizes: ``max_unpool2d`` with ``output_size``, ``conv_transpose2d`` and, for ONNX,
    ``adaptive_avg_pool2d`` to bins other than 1x1.

    A torch function mode rather than a patched ``torch.nn.functional``: it sees the calls made
    through modules (``nn.MaxUnpool2d``, ``nn.ConvTranspose2d``, ``nn.AdaptiveAvgPool2d``) and
    through the functions alike, changes no model, and ends with the ``with`` block. Torch leaves
    the mode while a handler runs, so the replacements' own calls are not intercepted again.

    Args:
        adaptive_pool: also replace adaptive average pooling (the TorchScript-based ONNX exporter
            needs a static input size for it; a TorchScript trace keeps torch's own operation).
    """

    def __init__(self, *, adaptive_pool: bool = True) -> None:
        super().__init__()
        self.adaptive_pool = adaptive_pool

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.max_unpool2d:
            return _unpool_by_scatter(*args, **kwargs)
        if func is F.conv_transpose2d:
            return _conv_transpose_then_crop(*args, **kwargs)
        if func is F.adaptive_avg_pool2d and self.adaptive_pool:
            bins = _pair(kwargs.get("output_size", args[1] if len(args) > 1 else None))
            if bins != (1, 1):  # a global pool exports as GlobalAveragePool at any size
                return _adaptive_average_by_matmul(args[0], bins)
        return func(*args, **kwargs)


@contextlib.contextmanager
def _quiet_console() -> Iterator[None]:
    """Silence the process's stdout and stderr: torch 2.14's TorchScript-based exporter prints its
    whole graph when an operation fails (its check of the logging flag is always true); the
    sentence we raise says what failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


# -- export ------------------------------------------------------------------------------------------
class _Logits(nn.Module):
    """``x -> model(x)``: one positional input and one output, whatever keywords the model takes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


def missing_runtime(fmt: str) -> str | None:
    """Why ``fmt`` cannot be exported and checked here (a package to install), or None if it can."""
    if fmt == "onnx":
        for package in ("onnx", "onnxruntime"):
            if importlib.util.find_spec(package) is None:
                return (
                    f"{package} is not installed; install it with `pip install pixelwise[export]`"
                )
    return None


def export_model(
    model: nn.Module,
    out: str | Path,
    fmt: str = "onnx",
    *,
    size: Sequence[int] = (64, 64),
    metadata: dict[str, Any] | None = None,
    opset: int = DEFAULT_OPSET,
    check_size: Sequence[int] | None = None,
    name: str | None = None,
) -> ExportReport:
    """Write ``model`` (on the CPU) to ``out`` with dynamic batch, height and width, then check it.

    Args:
        model: a network taking N x 3 x H x W and returning logits (eval mode is used; the
            model's own mode is restored afterwards).
        out: the file to write; it appears only when the check passes.
        fmt: ``"onnx"`` or ``"torchscript"``.
        size: the (H, W) to trace at.
        metadata: JSON-able values stored in the file (ONNX ``metadata_props``, one key each;
            TorchScript ``_extra_files[EXTRA_FILE]``); read them back with :func:`read_metadata`.
        opset: the ONNX opset (ignored for TorchScript).
        check_size: the (H, W) of the random check input (batch 2); default: ``size`` plus
            13 x 5 (the other parity), or plus 16 x 32 where the network refuses that.
        name: the network's name, for messages.

    Raises:
        PixelwiseError: an unknown format or opset, a missing runtime, an operation that cannot be
            exported (named, with the reason), or logits that differ by more than 1e-4.
    """
    name = name or type(model).__name__
    out = Path(out)
    size = _check_size(size, "size")
    candidates = [_check_size(check_size, "check size")] if check_size else _other_sizes(size)
    if fmt not in FORMATS:
        raise PixelwiseError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    reason = missing_runtime(fmt)
    if reason:
        raise PixelwiseError(f"Cannot export {name} to {fmt}: {reason}.")
    low, high = 7, torch.onnx._constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    if fmt == "onnx" and not low <= opset <= high:
        raise PixelwiseError(
            f"ONNX opset {opset} is not supported by torch's exporter; give --opset {low}..{high}."
        )
    devices = {str(t.device) for t in [*model.parameters(), *model.buffers()]}
    if devices - {"cpu"}:
        raise PixelwiseError(
            f"{name} is on {', '.join(sorted(devices))}; export traces and checks it on the CPU, "
            "so move it there first (model.cpu())."
        )
    metadata = dict(metadata or {})
    was_training = model.training
    net = _Logits(model).eval()
    try:
        example = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
        start = time.perf_counter()
        try:
            # Serialised in memory: nothing touches the disk until the file passed its check,
            # and a full disk cannot abort the exporter half-way through a file.
            data = _serialise(net, example, fmt, opset, metadata)
        except PixelwiseError:
            raise
        except Exception as error:  # the exporters raise many types; each becomes one sentence
            raise PixelwiseError(_cannot_export(name, fmt, error)) from None
        seconds = time.perf_counter() - start
        x, expected = _reference(net, candidates, name, size)
        difference, own = _difference(net, data, fmt, x, expected, name, size)
        if not difference <= max(TOLERANCE, 2 * (own or 0.0)):
            raise PixelwiseError(
                f"The {fmt} export of {name} gives logits that differ from PyTorch's by up to "
                f"{difference:.3g} (more than {TOLERANCE:g}) on a random {_shape(x)} input "
                f"(the logits reach {np.abs(expected).max():.3g}; float32 PyTorch is itself "
                f"{own:.2g} from float64 PyTorch there, and the file may differ by twice that), "
                f"so {out} was not written."
            )
        write_bytes(out, data)
    finally:
        model.train(was_training)
    return ExportReport(out, fmt, size, tuple(x.shape), difference, seconds, own)


def _check_size(size: Sequence[int], what: str) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise PixelwiseError(
            f"The export {what} {list(size)} is not two positive integers; give H W, e.g. 360 480."
        )
    return int(size[0]), int(size[1])


def _other_sizes(size: tuple[int, int]) -> list[tuple[int, int]]:
    """Check sizes unlike the traced one: first the other parity and another remainder mod 32;
    then multiples of 16 more, for a network that takes only such sizes (valid-padding U-Net)."""
    h, w = size
    return [(h + 13, w + 5), (h + 16, w + 32)]


def _reference(
    net: nn.Module, sizes: list[tuple[int, int]], name: str, traced: tuple[int, int]
) -> tuple[Tensor, np.ndarray]:
    """A random batch of 2 at the first of ``sizes`` the network takes, and PyTorch's logits."""
    refusals = []
    for h, w in sizes:
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(1))
        try:
            with torch.no_grad():
                return x, net(x).numpy()
        except (PixelwiseError, RuntimeError, ValueError) as error:
            refusals.append(f"{h}x{w}: {_first_line(str(error), 120)}")
    raise PixelwiseError(
        f"{name} takes no input of another size than the traced {traced[0]}x{traced[1]} to check "
        f"the export on ({'; '.join(refusals)}); give a --size the network takes."
    )


def _shape(x: Tensor) -> str:
    return "x".join(str(s) for s in x.shape)


def _serialise(net: nn.Module, example: Tensor, fmt: str, opset: int, metadata: dict) -> bytes:
    # The exporters warn about every traced size computation (that is what keeps the graph
    # dynamic) and about their own deprecation; the check after export is what tells the user.
    quiet = _quiet_console() if fmt == "onnx" else contextlib.nullcontext()
    with (
        torch.no_grad(),
        portable_ops(adaptive_pool=fmt == "onnx"),
        quiet,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            traced = torch.jit.trace(net, example, check_trace=False)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: json.dumps(metadata)})
            return buffer.getvalue()
        dims = {0: "batch", 2: "height", 3: "width"}
        buffer = io.BytesIO()
        torch.onnx.export(
            net,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": dims, "logits": dims},
        )
    import onnx

    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    return proto.SerializeToString()


def _difference(
    net: nn.Module, data: bytes, fmt: str, x: Tensor, expected: np.ndarray, name: str, size: tuple
) -> tuple[float, float | None]:
    """Max abs difference between PyTorch's logits ``expected`` and the written file's on ``x``,
    and when that is above 1e-4, float32 PyTorch's own distance from float64 PyTorch (else None)."""
    try:
        if fmt == "torchscript":
            with torch.no_grad():
                got = _load_torchscript(io.BytesIO(data))(x).numpy()
        else:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 4  # a failing run is reported below, in one sentence
            session = onnxruntime.InferenceSession(
                data, options, providers=["CPUExecutionProvider"]
            )
            got = session.run(None, {"image": x.numpy()})[0]
    except Exception as error:  # onnxruntime raises its own types; any failure here is one sentence
        why = _first_line(str(error))
        raise PixelwiseError(
            f"The {fmt} export of {name} traced at {size[0]}x{size[1]} does not run on a "
            f"{_shape(x)} input ({why}); the network does not export with dynamic sizes."
        ) from None
    if got.shape != expected.shape:
        raise PixelwiseError(
            f"The {fmt} export of {name} traced at {size[0]}x{size[1]} gives {got.shape} logits "
            f"for a {_shape(x)} input instead of {expected.shape}; it does not export with dynamic sizes."
        )
    difference = float(np.abs(got - expected).max())
    if difference <= TOLERANCE:
        return difference, None
    # float32 itself can be further than 1e-4 from the exact function: PSPNet-101's and
    # RefineNet-152's 100-150 layers round to 1e-4..1e-3, and max-unpooling (SegNet, ENet) moves
    # a value by one pixel, and the logits around it by 1e-3, where a pooled window holds values
    # within rounding of each other (ReLU zeros against 1e-8). Float64 PyTorch measures that
    # floor; two float32 computations of one function can differ by twice it.
    # The file's runtime rounds its own way too: onnxruntime's float32 convolutions, on their own,
    # ended 2.7x as far from float64 as PyTorch's for PSPNet-50 (2.2e-4 against 8.1e-5, 45x53).
    # A file no farther from the exact function than FILE_FLOOR times float32 PyTorch passes.
    with torch.no_grad():
        exact = copy.deepcopy(net).double()(x.double()).numpy()
    own = float(np.abs(expected - exact).max())
    if float(np.abs(got - exact).max()) <= FILE_FLOOR * own:
        return difference, max(own, difference / 2)
    return difference, own


def _first_line(text: str, limit: int = 200) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else "no message"
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _cannot_export(name: str, fmt: str, error: BaseException) -> str:
    """One sentence: which operation could not be exported, where in the network, and why."""
    text = str(error)
    operator = _operator(text)
    where = ""
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if f"{os.sep}pixelwise{os.sep}models{os.sep}" in frame.filename:
            where = (
                f" at pixelwise/models/{Path(frame.filename).name}:{frame.lineno} (`{frame.line}`)"
            )
            break
    what = f"operation {operator}" if operator else "an operation"
    label, fix = (
        ("ONNX", "try --format torchscript")
        if fmt == "onnx"
        else ("TorchScript", "try --format onnx")
    )
    return (
        f"{name} cannot be exported to {label}: {what}{where} fails ({_first_line(text)}); {fix}."
    )


def _operator(text: str) -> str | None:
    """The operation an exporter's message names ("... export of operator X ...", "aten::X")."""
    found = re.search(r"operator '?(?:aten::)?(\w+)", text)
    if found:
        return found.group(1)
    found = re.search(r"aten::\w+", text)
    return found.group(0) if found else None


# -- metadata ----------------------------------------------------------------------------------------
def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata an export stored: model, classes, palette, mean, std, ... (JSON values decoded)."""
    path = Path(path)
    if not path.is_file():
        raise PixelwiseError(f"{path} does not exist; give a file written by `pixelwise export`.")
    if zipfile_like(path):
        files = {EXTRA_FILE: ""}
        _load_torchscript(path, files)
        return json.loads(files[EXTRA_FILE] or "{}")
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {entry.key: _decode(entry.value) for entry in proto.metadata_props}


def _load_torchscript(
    source: Path | io.BytesIO, extra_files: dict[str, Any] | None = None
) -> torch.jit.ScriptModule:
    # torch.jit.load warns that TorchScript is deprecated; the file is ours and loads fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        where = str(source) if isinstance(source, Path) else source
        return torch.jit.load(where, map_location="cpu", _extra_files=extra_files or {})


def zipfile_like(path: Path) -> bool:
    """TorchScript archives are zip files; ONNX files are protobuf."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _decode(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


# -- checkpoints -------------------------------------------------------------------------------------
def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    fmt: str = "onnx",
    *,
    size: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    check_size: Sequence[int] | None = None,
) -> ExportReport:
    """Export a checkpoint's network with its classes, palette and normalisation as metadata.

    The trace size is ``size``, else the run's ``data.resize``, else its ``data.crop_size``, else
    the paper's input size of the network.
    """
    from pixelwise.engine.model_io import load_model
    from pixelwise.models import model_info

    loaded = load_model(checkpoint, device="cpu")
    name = loaded.name
    info = model_info(name)
    try:
        module = loaded.task.export_module(loaded.model)  # the task refuses what it cannot trace
    except PixelwiseError as error:
        raise PixelwiseError(f"{checkpoint}: {error}") from None
    data = loaded.config.data
    size = size or data.resize or data.crop_size or info.input_size
    metadata = {
        "model": name,
        "num_classes": int(loaded.meta["num_classes"]),
        "classes": loaded.classes,
        "palette": loaded.palette,
        **loaded.preprocessing,  # mean, std, resize: as eval and predict preprocess
        "input": INPUT_DESCRIPTION,
    }
    return export_model(
        module,
        out,
        fmt,
        size=size,
        metadata=metadata,
        opset=opset,
        check_size=check_size,
        name=name,
    )
