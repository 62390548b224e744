"""torch7's binary serialisation (``torch.save`` / ``torch.load``, ``.t7`` and ``.net`` files).

Written from the format of torch7's ``File.lua`` (``writeObject``/``readObject``) and
``generic/Tensor.c``/``generic/Storage.c`` (``write``/``read``), without torch7 or ``torchfile``:

- every object starts with an int32 type tag: 0 nil, 1 number (float64), 2 string (int32 length +
  bytes), 3 table, 4 torch object, 5 boolean (int32), 6/7/8 Lua function;
- a table or torch object then carries an int32 index: an index seen before is a reference to the
  object read there (shared storages, ``SpatialMaxUnpooling.pooling``), otherwise its contents
  follow: a table's int32 pair count and that many (key, value) objects; a torch object's version
  string ``"V 1"`` and class name, then either a tensor/storage body or its fields as a table;
- a tensor body is int32 ndim, ndim sizes, ndim strides, the 1-based storage offset (each a C
  ``long``) and the storage as an object; a storage body is its ``long`` length and the raw
  elements, little-endian.

Only the common x86-64 layout is read: ``long`` is 8 bytes. Files written where ``long`` has 4
bytes (32-bit builds, Windows) are refused with a sentence, not misread.

Tables come back as ``dict`` (Lua keys that are whole numbers as ``int``), tensors and storages as
numpy arrays (a tensor is a view of its storage, so shared storages stay shared), other torch
objects (``nn.SpatialConvolution`` ...) as :class:`TorchObject` with their fields. Lua functions are
kept as :class:`LuaFunction` (bytecode, never run).

The second half turns an ``nn`` module tree into the parametrised layers a release mapping zips
with a pixelwise network (:func:`layers_with_weights`, :func:`state_from_layers`).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor, nn

from pixelwise.errors import PixelwiseError
from pixelwise.outputs import write_with

__all__ = [
    "LuaFunction",
    "TorchLayer",
    "Torch7File",
    "TorchObject",
    "children",
    "dumps",
    "layers_with_weights",
    "lua_list",
    "read",
    "state_from_layers",
    "weighted_modules",
    "write",
]

_NIL, _NUMBER, _STRING, _TABLE, _TORCH, _BOOLEAN = 0, 1, 2, 3, 4, 5
_FUNCTION, _LEGACY_RECUR_FUNCTION, _RECUR_FUNCTION = 6, 7, 8
_LONG = 8  # sizeof(long) on x86-64 Linux/macOS, where the releases were saved

# Element type of each tensor/storage class; CUDA classes are stored as their CPU element type.
_ELEMENT_TYPES: dict[str, np.dtype] = {
    "Double": np.dtype("<f8"),
    "Float": np.dtype("<f4"),
    "Half": np.dtype("<f2"),
    "Long": np.dtype("<i8"),
    "Int": np.dtype("<i4"),
    "Short": np.dtype("<i2"),
    "Char": np.dtype("i1"),
    "Byte": np.dtype("u1"),
    "Cuda": np.dtype("<f4"),
    "CudaDouble": np.dtype("<f8"),
    "CudaHalf": np.dtype("<f2"),
    "CudaLong": np.dtype("<i8"),
    "CudaInt": np.dtype("<i4"),
    "CudaShort": np.dtype("<i2"),
    "CudaChar": np.dtype("i1"),
    "CudaByte": np.dtype("u1"),
}
# The class a numpy array is written as.
_WRITE_PREFIX = {
    np.dtype("<f8"): "Double",
    np.dtype("<f4"): "Float",
    np.dtype("<i8"): "Long",
    np.dtype("<i4"): "Int",
    np.dtype("u1"): "Byte",
}


@dataclass(eq=False)
class TorchObject:
    """A torch class instance other than a tensor or storage: its class name and fields."""

    typename: str
    fields: dict[Any, Any] = field(default_factory=dict)
    version: int = 1

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)

    @property
    def basename(self) -> str:
        """The class without its package: ``cudnn.SpatialConvolution`` -> ``SpatialConvolution``."""
        return self.typename.rsplit(".", 1)[-1]


@dataclass(eq=False)
class LuaFunction:
    """A serialised Lua function: its bytecode and upvalues, kept but never executed."""

    bytecode: bytes
    upvalues: Any


class _Truncated(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.memo: dict[int, Any] = {}

    def take(self, count: int) -> memoryview:
        if count < 0 or self.pos + count > len(self.data):
            raise _Truncated
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def int32(self) -> int:
        return struct.unpack("<i", self.take(4))[0]

    def long(self) -> int:
        return struct.unpack("<q", self.take(_LONG))[0]

    def longs(self, count: int) -> list[int]:
        return list(struct.unpack(f"<{count}q", self.take(_LONG * count)))

    def string(self) -> str:
        return bytes(self.take(self.int32())).decode("utf-8", errors="replace")

    def object(self) -> Any:
        tag = self.int32()
        if tag == _NIL:
            return None
        if tag == _NUMBER:
            value = struct.unpack("<d", self.take(8))[0]
            return int(value) if value.is_integer() and abs(value) < 2**53 else value
        if tag == _STRING:
            return self.string()
        if tag == _BOOLEAN:
            return self.int32() == 1
        if tag == _TABLE:
            return self.table()
        if tag == _TORCH:
            return self.torch_object()
        if tag in (_FUNCTION, _LEGACY_RECUR_FUNCTION, _RECUR_FUNCTION):
            return self.function(tag)
        raise ValueError(f"unknown type tag {tag} at byte {self.pos - 4}")

    def table(self) -> Any:
        index = self.int32()
        if index in self.memo:
            return self.memo[index]
        table: dict[Any, Any] = {}
        self.memo[index] = table
        for _ in range(self.int32()):
            key = self.object()
            table[key] = self.object()
        return table

    def function(self, tag: int) -> LuaFunction:
        # A plain function has no index; a recursive one is indexed like a table.
        index = None if tag == _FUNCTION else self.int32()
        if index is not None and index in self.memo:
            return self.memo[index]
        function = LuaFunction(b"", None)
        if index is not None:
            self.memo[index] = function
        function.bytecode = bytes(self.take(self.int32()))
        function.upvalues = self.object()
        return function

    def torch_object(self) -> Any:
        index = self.int32()
        if index in self.memo:
            return self.memo[index]
        version_or_class = self.string()
        if version_or_class.startswith("V "):
            version, typename = int(version_or_class[2:]), self.string()
        else:  # files from before torch7 versioned its classes
            version, typename = 0, version_or_class
        kind, element = _tensor_class(typename)
        if kind == "Storage":
            storage = np.frombuffer(self.take(self.long() * element.itemsize), dtype=element)
            self.memo[index] = storage
            return storage
        if kind == "Tensor":
            # The tensor is memoised after its storage, which a tensor never contains.
            tensor = self.tensor(element)
            self.memo[index] = tensor
            return tensor
        obj = TorchObject(typename, {}, version)
        self.memo[index] = obj
        fields = self.object()
        if not isinstance(fields, dict):
            raise ValueError(f"{typename} has no field table")
        obj.fields = fields
        return obj

    def tensor(self, element: np.dtype) -> np.ndarray:
        ndim = self.int32()
        sizes, strides = self.longs(ndim), self.longs(ndim)
        offset = self.long() - 1
        storage = self.object()
        if ndim == 0 or storage is None:
            return np.zeros((0,), dtype=element)
        if not isinstance(storage, np.ndarray):
            raise ValueError("a tensor's storage is not a storage")
        last = offset + sum((s - 1) * st for s, st in zip(sizes, strides, strict=True))
        if offset < 0 or any(s < 0 or st < 0 for s, st in zip(sizes, strides, strict=True)):
            raise ValueError("a tensor has a negative size, stride or offset")
        if min(sizes) > 0 and last >= storage.size:
            raise ValueError("a tensor reaches past the end of its storage")
        return np.lib.stride_tricks.as_strided(
            storage[offset:],
            shape=tuple(sizes),
            strides=tuple(st * element.itemsize for st in strides),
            writeable=False,
        )


def _tensor_class(typename: str) -> tuple[str | None, np.dtype]:
    """``torch.FloatTensor`` -> ("Tensor", float32); ``torch.CudaStorage`` -> ("Storage", float32)."""
    if not typename.startswith("torch."):
        return None, np.dtype("<f4")
    name = typename.removeprefix("torch.")
    for kind in ("Tensor", "Storage"):
        prefix = name.removesuffix(kind)
        if prefix != name and prefix in _ELEMENT_TYPES:
            return kind, _ELEMENT_TYPES[prefix]
    return None, np.dtype("<f4")


@dataclass(eq=False)
class Torch7File:
    """What :func:`read` returns: the file's path (for error sentences) and its root object."""

    path: Path
    root: Any


def read(path: str | Path) -> Torch7File:
    """Read a torch7 ``.t7``/``.net`` file into Python objects (see the module docstring).

    Raises:
        PixelwiseError: the file is missing, cut short, or not a torch7 binary file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PixelwiseError(
            f"cannot read the torch7 file {path} ({error.strerror or error}); "
            "check the path given with --weights."
        ) from None
    reader = _Reader(data)
    try:
        return Torch7File(path, reader.object())
    except _Truncated:
        raise PixelwiseError(
            f"the torch7 file {path} ends after {len(data)} bytes, in the middle of an object; "
            "it is truncated: download it again."
        ) from None
    except (ValueError, struct.error, UnicodeDecodeError, OverflowError, MemoryError) as error:
        raise PixelwiseError(
            f"{path} is not a torch7 binary file ({error}); pass the .t7/.net file that "
            "torch.save wrote in binary mode on a 64-bit machine."
        ) from None


# -- writer ------------------------------------------------------------------------------------


class _Writer:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.memo: dict[int, int] = {}
        self.keep: list[Any] = []  # keeps memoised objects alive so their ids stay unique
        self.count = 0

    def int32(self, value: int) -> None:
        self.out.write(struct.pack("<i", value))

    def long(self, value: int) -> None:
        self.out.write(struct.pack("<q", value))

    def string(self, value: str) -> None:
        data = value.encode("utf-8")
        self.int32(len(data))
        self.out.write(data)

    def reference(self, obj: Any) -> bool:
        """Write the object's index; True when it was written before (a reference)."""
        known = self.memo.get(id(obj))
        if known is not None:
            self.int32(known)
            return True
        self.memo[id(obj)] = self.new_index()
        self.keep.append(obj)
        self.int32(self.memo[id(obj)])
        return False

    def new_index(self) -> int:
        self.count += 1
        return self.count

    def object(self, obj: Any) -> None:
        if obj is None:
            self.int32(_NIL)
        elif isinstance(obj, bool | np.bool_):
            self.int32(_BOOLEAN)
            self.int32(1 if obj else 0)
        elif isinstance(obj, int | float | np.integer | np.floating):
            self.int32(_NUMBER)
            self.out.write(struct.pack("<d", float(obj)))
        elif isinstance(obj, str):
            self.int32(_STRING)
            self.string(obj)
        elif isinstance(obj, dict | list | tuple):
            self.table(obj)
        elif isinstance(obj, TorchObject):
            self.int32(_TORCH)
            if not self.reference(obj):
                self.string(f"V {obj.version}")
                self.string(obj.typename)
                self.table(obj.fields)
        elif isinstance(obj, np.ndarray | Tensor):
            self.tensor(obj)
        else:
            raise TypeError(f"cannot write a {type(obj).__name__} as a torch7 object")

    def table(self, obj: dict | list | tuple) -> None:
        self.int32(_TABLE)
        if self.reference(obj):
            return
        items = list(obj.items()) if isinstance(obj, dict) else list(enumerate(obj, start=1))
        self.int32(len(items))
        for key, value in items:
            self.object(key)
            self.object(value)

    def tensor(self, array: np.ndarray | Tensor) -> None:
        self.int32(_TORCH)
        if self.reference(array):
            return
        values = array.detach().cpu().numpy() if isinstance(array, Tensor) else array
        values = np.ascontiguousarray(values)
        values = values.astype(values.dtype.newbyteorder("<"), copy=False)
        prefix = _WRITE_PREFIX.get(values.dtype)
        if prefix is None:
            raise TypeError(f"cannot write a {values.dtype} array as a torch7 tensor")
        self.string("V 1")
        self.string(f"torch.{prefix}Tensor")
        self.int32(values.ndim)
        for size in values.shape:
            self.long(size)
        stride = 1
        strides = []
        for size in reversed(values.shape):
            strides.append(stride)
            stride *= size
        for step in reversed(strides):
            self.long(step)
        self.long(1)
        # The storage is an object of its own, with the next index.
        self.int32(_TORCH)
        self.int32(self.new_index())
        self.string("V 1")
        self.string(f"torch.{prefix}Storage")
        self.long(values.size)
        self.out.write(values.tobytes())


def write(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as ``torch.save`` would (binary, 8-byte longs), atomically.

    Python ``None``/bool/int/float/str become nil/boolean/number/string, dicts and lists tables
    (a list's keys 1..n), numpy arrays and torch tensors ``torch.<Double|Float|Long|Int|Byte>Tensor``
    with a storage of their own, :class:`TorchObject` a torch class instance. An object met twice
    is written once and referenced after, as torch7 does.
    """
    write_with(Path(path), lambda out: _Writer(out).object(obj))


def dumps(obj: Any) -> bytes:
    """The bytes :func:`write` would write."""
    buffer = io.BytesIO()
    _Writer(buffer).object(obj)
    return buffer.getvalue()


# -- nn module trees ---------------------------------------------------------------------------


def lua_list(table: Any) -> list[Any]:
    """A Lua array (keys 1..n) as a list; a list passes through."""
    if isinstance(table, list):
        return table
    if not isinstance(table, dict):
        return []
    return [table[i] for i in range(1, len(table) + 1) if i in table]


def children(module: TorchObject) -> list[Any]:
    """A container's ``modules`` in order (none for a leaf)."""
    return lua_list(module.get("modules"))


_CONV = {"SpatialConvolution", "SpatialConvolutionMM", "SpatialDilatedConvolution"}
_FULL_CONV = {"SpatialFullConvolution"}
_BATCH_NORM = {"SpatialBatchNormalization", "BatchNormalization"}
_PRELU = {"PReLU"}
# Modules whose output at evaluation is their input times (1 - p): torch7's SpatialDropout scales
# at test time, never while training (nn/SpatialDropout.lua), unlike PyTorch's inverted dropout.
_TEST_TIME_SCALED = {"SpatialDropout"}
KINDS = {**dict.fromkeys(_CONV, "conv"), **dict.fromkeys(_FULL_CONV, "full_conv")}
KINDS |= {**dict.fromkeys(_BATCH_NORM, "batch_norm"), **dict.fromkeys(_PRELU, "prelu")}


@dataclass
class TorchLayer:
    """A torch7 module with weights, where it sits in the tree, and an output scale to fold in."""

    path: str  # 1-based positions in the containers, e.g. "5.1.1.3"
    module: TorchObject
    kind: str  # "conv", "full_conv", "batch_norm", "prelu"
    scale: float = 1.0  # a following test-time-scaled dropout's (1 - p)


def _walk(module: Any, path: str) -> Iterator[tuple[str, Any, Any]]:
    """(path, module, previous sibling) depth first, containers before their children."""
    yield path, module, None
    previous = None
    for i, child in enumerate(children(module) if isinstance(module, TorchObject) else [], 1):
        child_path = f"{path}.{i}" if path else str(i)
        first = True
        for item in _walk(child, child_path):
            yield (item[0], item[1], previous) if first else item
            first = False
        previous = child


def layers_with_weights(tree: Any, source: Path) -> list[TorchLayer]:
    """The modules of ``tree`` that hold weights, depth first, as torch7 runs a Sequential.

    ``nn.DataParallelTable`` is unwrapped. A SpatialDropout's test-time factor ``1 - p`` is put on
    the batch norm just before it (ENet's bottlenecks end in BN -> SpatialDropout), so that a
    PyTorch network without that factor computes the same function in evaluation.

    Raises:
        PixelwiseError: the file holds no nn module, a weighted module pixelwise cannot convert,
            or a dropout that does not follow a batch norm.
    """
    if not isinstance(tree, TorchObject):
        raise PixelwiseError(
            f"{source} holds a {type(tree).__name__}, not a torch7 nn model; pass the .t7/.net "
            "file that torch.save wrote from the trained network."
        )
    while tree.basename == "DataParallelTable" and children(tree):
        tree = children(tree)[0]
    layers: list[TorchLayer] = []
    for path, module, previous in _walk(tree, ""):
        if not isinstance(module, TorchObject) or children(module):
            continue
        name = module.basename
        if name in KINDS:
            layers.append(TorchLayer(path, module, KINDS[name]))
        elif _scales_at_test_time(module):
            if not (layers and layers[-1].module is previous and layers[-1].kind == "batch_norm"):
                raise PixelwiseError(
                    f"{source}: the {module.typename} at {path} does not follow a batch norm, so "
                    "its test-time scaling cannot be folded in; this is not a file of this release."
                )
            layers[-1].scale *= 1.0 - float(module["p"])
        elif isinstance(module.get("weight"), np.ndarray):
            raise PixelwiseError(
                f"{source}: the {module.typename} at {path} has weights that pixelwise does not "
                "convert; this is not a file of this release."
            )
    return layers


def _scales_at_test_time(module: TorchObject) -> bool:
    """SpatialDropout always, nn.Dropout built with ``v1`` (``v2 = false``): both multiply by
    ``1 - p`` in evaluation."""
    if float(module.get("p", 0.0)) <= 0:
        return False
    if module.basename == "Dropout":
        return module.get("v2", True) is False
    return module.basename in _TEST_TIME_SCALED


def _geometry(layer: TorchLayer) -> tuple[tuple[int, ...], ...]:
    """Kernel, stride, padding and dilation as (h, w) pairs, from the torch7 fields."""
    m = layer.module
    kernel = (int(m.get("kH", 1)), int(m.get("kW", 1)))
    stride = (int(m.get("dH", 1)), int(m.get("dW", 1)))
    padding = (int(m.get("padH", 0)), int(m.get("padW", 0)))
    dilation = (int(m.get("dilationH", 1)), int(m.get("dilationW", 1)))
    return kernel, stride, padding, dilation


def _array(module: TorchObject, key: str) -> np.ndarray | None:
    value = module.get(key)
    return value if isinstance(value, np.ndarray) and value.size else None


def _tensor(values: np.ndarray, shape: torch.Size) -> Tensor:
    return torch.from_numpy(np.array(values, dtype=np.float32)).reshape(shape)


def _convert_conv(
    layer: TorchLayer, target: nn.Conv2d | nn.ConvTranspose2d, name: str, source: Path, keep: slice
) -> dict[str, Tensor]:
    kernel, stride, padding, dilation = _geometry(layer)
    ours = (target.kernel_size, target.stride, target.padding, target.dilation)
    if (kernel, stride, padding) != tuple(ours[:3]) or (
        layer.kind == "conv" and dilation != tuple(target.dilation)
    ):
        raise PixelwiseError(
            f"{source}: the {layer.module.typename} at {layer.path} has kernel/stride/padding/"
            f"dilation {kernel}/{stride}/{padding}/{dilation}, but {name} expects {ours}; "
            "this is not a file of this release."
        )
    out_axis = 1 if layer.kind == "full_conv" else 0
    shape = list(target.weight.shape)
    shape[out_axis] = -1
    # torch7 keeps a conv's weight as (out, in, kH, kW) (older nn: out x in*kH*kW, the same bytes)
    # and a full conv's as (in, out, kH, kW): PyTorch's layouts once reshaped.
    w = _tensor(layer.module["weight"], torch.Size(shape))
    w = w[(slice(None),) * out_axis + (keep,)]
    state = {f"{name}.weight": w}
    bias = _array(layer.module, "bias")
    if target.bias is not None:
        if bias is None:
            raise PixelwiseError(
                f"{source}: the {layer.module.typename} at {layer.path} has no bias but {name} "
                "has one; this is not a file of this release."
            )
        state[f"{name}.bias"] = _tensor(bias, (-1,))[keep]
    elif bias is not None and np.any(bias != 0):
        raise PixelwiseError(
            f"{source}: the {layer.module.typename} at {layer.path} has a non-zero bias where "
            f"{name} has none; this is not a file of this release."
        )
    return state


def _convert_batch_norm(layer: TorchLayer, target: nn.BatchNorm2d, name: str) -> dict[str, Tensor]:
    m, n = layer.module, target.num_features
    eps = float(m.get("eps", 1e-5))
    weight, bias = _array(m, "weight"), _array(m, "bias")
    gamma = _tensor(weight, (n,)) if weight is not None else torch.ones(n)
    beta = _tensor(bias, (n,)) if bias is not None else torch.zeros(n)
    mean = _tensor(m["running_mean"], (n,))
    if _array(m, "running_var") is not None:
        var_plus_eps = _tensor(m["running_var"], (n,)) + eps
    else:  # nn before 2016 kept running_std = 1 / sqrt(var + eps)
        var_plus_eps = 1.0 / _tensor(m["running_std"], (n,)) ** 2
    return {
        f"{name}.weight": gamma * layer.scale,
        f"{name}.bias": beta * layer.scale,
        f"{name}.running_mean": mean,
        # Our eps may differ from the file's: var + eps is what normalises, so keep that sum.
        f"{name}.running_var": var_plus_eps - target.eps,
        f"{name}.num_batches_tracked": torch.tensor(0, dtype=torch.long),
    }


def state_from_layers(
    layers: Sequence[TorchLayer],
    targets: Sequence[tuple[str, nn.Module]],
    source: Path,
    *,
    keep_outputs: dict[str, slice] | None = None,
) -> dict[str, Tensor]:
    """Zip the file's weighted layers with our modules (same order) into a state dict.

    Args:
        layers: from :func:`layers_with_weights`.
        targets: (state-dict prefix, module) of our Conv2d/ConvTranspose2d/BatchNorm2d/PReLU in
            the order the release's tree runs them.
        source: the file, for the error sentences.
        keep_outputs: per prefix, the output channels of the file's layer that ours keeps (a
            release's extra "Unlabeled" class).

    Raises:
        PixelwiseError: the counts, kinds or shapes differ (a file of another model).
    """
    if len(layers) != len(targets):
        raise PixelwiseError(
            f"{source} holds {len(layers)} layers with weights where this release has "
            f"{len(targets)}; it is a file of another model: pass the release's own file."
        )
    keep_outputs = keep_outputs or {}
    state: dict[str, Tensor] = {}
    for layer, (name, target) in zip(layers, targets, strict=True):
        expected = _kind_of(target)
        if layer.kind != expected:
            raise PixelwiseError(
                f"{source}: layer {layer.path} is a {layer.module.typename} where this release "
                f"has a {expected} ({name}); it is a file of another model."
            )
        try:
            if layer.kind in ("conv", "full_conv"):
                keep = keep_outputs.get(name, slice(None))
                state |= _convert_conv(layer, target, name, source, keep)
            elif layer.kind == "batch_norm":
                state |= _convert_batch_norm(layer, target, name)
            else:
                state[f"{name}.weight"] = _tensor(layer.module["weight"], target.weight.shape)
        except (RuntimeError, KeyError, TypeError) as error:
            raise PixelwiseError(
                f"{source}: layer {layer.path} ({layer.module.typename}) does not fit {name} "
                f"({error}); it is a file of another model or class count."
            ) from None
        _check_shapes(state, target, name, layer, source)
    return state


def _check_shapes(
    state: dict[str, Tensor], target: nn.Module, name: str, layer: TorchLayer, source: Path
) -> None:
    for key, expected in target.state_dict(prefix=f"{name}.").items():
        value = state.get(key)
        if value is not None and value.shape != expected.shape:
            raise PixelwiseError(
                f"{source}: layer {layer.path} gives {key} the shape {tuple(value.shape)} where "
                f"the model needs {tuple(expected.shape)}; it is a file of another model or "
                "class count."
            )


def _kind_of(module: nn.Module) -> str:
    if isinstance(module, nn.ConvTranspose2d):
        return "full_conv"
    if isinstance(module, nn.Conv2d):
        return "conv"
    if isinstance(module, nn.BatchNorm2d):
        return "batch_norm"
    if isinstance(module, nn.PReLU):
        return "prelu"
    raise TypeError(f"no torch7 counterpart for {type(module).__name__}")


def weighted_modules(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Our modules that hold weights, in registration order (the order torch7 would run them)."""
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.PReLU)
    return [
        (f"{prefix}{name}" if name else prefix.rstrip("."), module)
        for name, module in model.named_modules()
        if isinstance(module, kinds)
    ]
