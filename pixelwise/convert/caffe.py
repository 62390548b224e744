"""Caffe ``.caffemodel`` files, read and written without Caffe: the protobuf wire format by hand.

A ``.caffemodel`` is one serialised ``NetParameter`` message (BVLC/caffe
``src/caffe/proto/caffe.proto``). Only the fields a weight file needs are read; every other field
is skipped by its wire type, so files from Caffe forks (PSPNet's, SegNet's) read the same:

- ``NetParameter``: ``name`` = 1, ``layers`` = 2 (``V1LayerParameter``, files before 2015),
  ``layer`` = 100 (``LayerParameter``).
- ``LayerParameter``: ``name`` = 1, ``type`` = 2 (a string), ``blobs`` = 7.
- ``V1LayerParameter``: ``name`` = 4, ``type`` = 5 (an enum, :data:`V1_TYPES`), ``blobs`` = 6.
- ``BlobProto``: ``shape`` = 7 (``BlobShape``: ``dim`` = 1, packed int64), the legacy 4-D
  ``num`` = 1, ``channels`` = 2, ``height`` = 3, ``width`` = 4; ``data`` = 5 (float, packed or
  not) and ``double_data`` = 8.

:func:`encode_net` writes the same subset, so tests build files in a release's exact layout.
:func:`parse_prototxt` reads the protobuf text format of a deploy ``.prototxt`` (layer order and
parameters), for a release whose weights alone do not say how the net is wired.

The Caffe layer semantics a mapping needs are here too, each on hand-checked numbers in
tests/test_convert_caffe.py: PSPNet's 4-blob ``BN`` (:func:`bn4_to_state`), BVLC ``BatchNorm``
with its moving-average factor plus ``Scale`` (:func:`batchnorm_to_state`), ``Convolution`` and
``Deconvolution`` weights (:func:`conv_to_state`), and :func:`caffe_pool_size`; in
tests/test_convert_decouplednet.py, a stride-1 ``Deconvolution`` read as a convolution
(:func:`deconv_as_conv_to_state`).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pixelwise.errors import PixelwiseError

# V1LayerParameter.LayerType values of the layers that hold weights (caffe.proto, "enum LayerType").
V1_TYPES: dict[int, str] = {
    3: "Concat",
    4: "Convolution",
    6: "Dropout",
    14: "InnerProduct",
    17: "Pooling",
    18: "ReLU",
    19: "Sigmoid",
    20: "Softmax",
    25: "Eltwise",
    39: "Deconvolution",
    # HyeonwooNoh/caffe (DeconvNet's and DecoupledNet's fork) adds these two to the enum; BVLC's
    # V1 enum ends at 39, so no other file gives them another meaning.
    42: "Unpooling",
    43: "BN",
}

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message (a truncated or foreign file)."""


@dataclass
class CaffeLayer:
    """One layer of a ``.caffemodel``: its name, type and weight blobs (float32 arrays)."""

    name: str
    type: str
    blobs: list[np.ndarray] = field(default_factory=list)


@dataclass
class CaffeNet:
    """A parsed ``.caffemodel``: the net's name and its layers in file order."""

    name: str
    layers: list[CaffeLayer]
    # The deploy .prototxt (parse_prototxt's dict), where the user passed one.
    definition: dict[str, list[Any]] | None = None

    def by_name(self) -> dict[str, CaffeLayer]:
        return {layer.name: layer for layer in self.layers}


# -- wire format: reading --------------------------------------------------------------------------


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise WireError("a varint runs past the end of the data")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("a varint is longer than 10 bytes")


def iter_fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of each field of one message: an int for varints,
    a memoryview for length-delimited fields and 4/8-byte fixed values."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _BYTES:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise WireError(f"field {number} claims {length} bytes, {len(buf) - pos} remain")
            value, pos = buf[pos : pos + length], pos + length
        elif wire in (_FIXED32, _FIXED64):
            size = 4 if wire == _FIXED32 else 8
            if pos + size > len(buf):
                raise WireError(f"field {number} runs past the end of the data")
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise WireError(f"wire type {wire} of field {number} is not one protobuf has")
        yield number, wire, value


def _packed_varints(buf: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos)
        values.append(value)
    return values


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def decode_blob(buf: memoryview) -> np.ndarray:
    """A ``BlobProto`` -> float32 array of its shape (``shape`` or the legacy 4-D fields)."""
    dims: list[int] = []
    legacy = {1: 0, 2: 0, 3: 0, 4: 0}
    chunks: list[np.ndarray] = []
    singles: list[bytes] = []
    for number, wire, value in iter_fields(buf):
        if number == 7 and wire == _BYTES:
            for dim_number, dim_wire, dim in iter_fields(value):
                if dim_number == 1 and dim_wire == _BYTES:
                    dims.extend(_int64(v) for v in _packed_varints(dim))
                elif dim_number == 1 and dim_wire == _VARINT:
                    dims.append(_int64(dim))
        elif number in legacy and wire == _VARINT:
            legacy[number] = _int64(value)
        elif number == 5 and wire == _BYTES:
            if len(value) % 4:
                raise WireError("packed float data is not a whole number of floats")
            chunks.append(np.frombuffer(value, dtype="<f4"))
        elif number == 5 and wire == _FIXED32:
            singles.append(bytes(value))
        elif number == 8 and wire == _BYTES:
            if len(value) % 8:
                raise WireError("packed double data is not a whole number of doubles")
            chunks.append(np.frombuffer(value, dtype="<f8").astype(np.float32))
        elif number == 8 and wire == _FIXED64:
            chunks.append(np.frombuffer(bytes(value), dtype="<f8").astype(np.float32))
    if singles:
        chunks.append(np.frombuffer(b"".join(singles), dtype="<f4"))
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if not dims:
        dims = [legacy[1], legacy[2], legacy[3], legacy[4]]
        # Legacy blobs leave unused leading axes at 0 or 1 (a bias is 1 x 1 x 1 x C).
        if math.prod(dims) == 0 and data.size:
            dims = [d for d in dims if d] or [data.size]
    if math.prod(dims) != data.size:
        raise WireError(f"a blob of shape {dims} holds {data.size} values")
    return data.astype(np.float32, copy=False).reshape(dims)


def _decode_layer(buf: memoryview, v1: bool) -> CaffeLayer:
    name_field, type_field, blob_field = (4, 5, 6) if v1 else (1, 2, 7)
    name, kind, blobs = "", "", []
    for number, wire, value in iter_fields(buf):
        if number == name_field and wire == _BYTES:
            name = bytes(value).decode("utf-8", "replace")
        elif number == type_field and wire == (_VARINT if v1 else _BYTES):
            kind = V1_TYPES.get(value, f"V1:{value}") if v1 else bytes(value).decode("utf-8")
        elif number == blob_field and wire == _BYTES:
            blobs.append(decode_blob(value))
    return CaffeLayer(name, kind, blobs)


def decode_net(data: bytes) -> CaffeNet:
    """A serialised ``NetParameter`` -> :class:`CaffeNet` (raises :class:`WireError`)."""
    buf = memoryview(data)
    name, layers = "", []
    for number, wire, value in iter_fields(buf):
        if number == 1 and wire == _BYTES:
            name = bytes(value).decode("utf-8", "replace")
        elif number in (2, 100) and wire == _BYTES:
            layers.append(_decode_layer(value, v1=number == 2))
    return CaffeNet(name, layers)


def read(path: str | Path) -> CaffeNet:
    """Read a ``.caffemodel``; a file that is not one is a one-sentence error naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise PixelwiseError(
            f"Caffe weights {path} could not be read ({error.strerror}); pass the .caffemodel "
            "file the release publishes."
        ) from None
    try:
        net = decode_net(data)
    except WireError as error:
        raise PixelwiseError(
            f"Caffe weights {path} are not a readable .caffemodel ({error}); the file may be "
            "truncated or of another format, so download it again."
        ) from None
    if not any(layer.blobs for layer in net.layers):
        raise PixelwiseError(
            f"Caffe weights {path} hold no layer with weights; pass the .caffemodel (not the "
            ".prototxt or .solverstate) the release publishes."
        )
    return net


# -- wire format: writing --------------------------------------------------------------------------


def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _key(number, _BYTES) + _encode_varint(len(payload)) + payload


def encode_blob(
    array: np.ndarray, *, legacy_shape: bool = False, packed: bool = True, double: bool = False
) -> bytes:
    """A ``BlobProto``: ``shape`` (or num/channels/height/width, at most 4-D, left-padded with
    1s as old Caffe wrote them) and the values as packed or unpacked float, or packed double."""
    array = np.asarray(array)
    out = bytearray()
    if legacy_shape:
        dims = [1] * (4 - array.ndim) + list(array.shape)
        for number, dim in zip((1, 2, 3, 4), dims, strict=True):
            out += _key(number, _VARINT) + _encode_varint(dim)
    else:
        shape = b"".join(_encode_varint(d) for d in array.shape)
        out += _bytes_field(7, _bytes_field(1, shape))
    flat = array.reshape(-1)
    if double or packed:
        # Appended from the array's buffer: one copy of the values (files reach gigabytes).
        values = np.ascontiguousarray(flat, dtype="<f8" if double else "<f4")
        out += _key(8 if double else 5, _BYTES) + _encode_varint(values.nbytes)
        out += values.data.cast("B")
    else:
        key = _key(5, _FIXED32)
        out += b"".join(key + struct.pack("<f", float(v)) for v in flat)
    return bytes(out)


def encode_net(
    layers: Sequence[CaffeLayer],
    *,
    name: str = "",
    v1: bool = False,
    legacy_shape: bool = False,
    packed: bool = True,
    double: bool = False,
) -> bytes:
    """A ``NetParameter`` with ``layer`` (or V1 ``layers``) entries: name, type and blobs."""
    v1_codes = {kind: code for code, kind in V1_TYPES.items()}
    out = bytearray(_bytes_field(1, name.encode()) if name else b"")
    for layer in layers:
        blobs = [
            encode_blob(b, legacy_shape=legacy_shape, packed=packed, double=double)
            for b in layer.blobs
        ]
        if v1:
            head = _bytes_field(4, layer.name.encode())
            head += _key(5, _VARINT) + _encode_varint(v1_codes[layer.type])
        else:
            head = _bytes_field(1, layer.name.encode()) + _bytes_field(2, layer.type.encode())
        # The layer's length first, then its fields appended in place (no nested copies).
        prefixes = [_key(6 if v1 else 7, _BYTES) + _encode_varint(len(b)) for b in blobs]
        length = len(head) + sum(len(p) + len(b) for p, b in zip(prefixes, blobs, strict=True))
        out += _key(2 if v1 else 100, _BYTES) + _encode_varint(length) + head
        for prefix, blob in zip(prefixes, blobs, strict=True):
            out += prefix
            out += blob
    return bytes(out)


# -- prototxt (protobuf text format) ---------------------------------------------------------------


def _tokens(text: str) -> Iterator[str]:
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "{}:":
            yield c
            i += 1
        elif c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            yield text[i : j + 1]
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "{}:#":
                j += 1
            yield text[i:j]
            i = j


def _scalar(token: str) -> Any:
    if token[:1] in "\"'":
        return token[1:-1]
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(token, token)


def parse_prototxt(text: str) -> dict[str, list[Any]]:
    """Protobuf text format -> {field: [values]}, a message being such a dict itself.

    Every field is a list (repeated or not), in file order: ``net["layer"][0]["name"][0]``.

    Raises:
        ValueError: unbalanced braces or a field without a value.
    """
    tokens = list(_tokens(text))
    stack: list[dict[str, list[Any]]] = [{}]
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "}":
            if len(stack) == 1:
                raise ValueError("a '}' closes nothing")
            stack.pop()
            i += 1
            continue
        if i + 1 >= len(tokens):
            raise ValueError(f"field {token!r} has no value")
        nxt = tokens[i + 1]
        if nxt == ":" and i + 2 < len(tokens) and tokens[i + 2] != "{":
            stack[-1].setdefault(token, []).append(_scalar(tokens[i + 2]))
            i += 3
        elif nxt == "{" or (nxt == ":" and i + 2 < len(tokens)):
            child: dict[str, list[Any]] = {}
            stack[-1].setdefault(token, []).append(child)
            stack.append(child)
            i += 2 if nxt == "{" else 3
        else:
            raise ValueError(f"field {token!r} has no value")
    if len(stack) != 1:
        raise ValueError("a '{' is never closed")
    return stack[0]


def read_prototxt(path: str | Path) -> dict[str, list[Any]]:
    """Read a deploy ``.prototxt``; an unreadable one is a one-sentence error naming it."""
    path = Path(path)
    try:
        return parse_prototxt(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PixelwiseError(
            f"Caffe definition {path} could not be read as a .prototxt ({error}); pass the "
            "release's deploy .prototxt."
        ) from None


# -- layer semantics -------------------------------------------------------------------------------


def caffe_pool_size(size: int, kernel: int, stride: int, pad: int = 0) -> int:
    """Caffe's pooled size: rounded up, then one less when the last window would start in the
    padding (BVLC/caffe ``src/caffe/layers/pooling_layer.cpp``, ``Reshape``)."""
    pooled = math.ceil((size + 2 * pad - kernel) / stride) + 1
    if pad and (pooled - 1) * stride >= size + pad:
        pooled -= 1
    return pooled


def _tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _check(layer: CaffeLayer, count: int, what: str) -> None:
    if len(layer.blobs) != count:
        raise MappingError(
            f"layer {layer.name!r} ({layer.type}) has {len(layer.blobs)} blobs where {what} "
            f"has {count}"
        )


class MappingError(ValueError):
    """The file's layers do not fit the release's network (missing layer, other shape ...)."""


def conv_to_state(
    layer: CaffeLayer, prefix: str, *, bias: bool, reverse_input: bool = False
) -> dict[str, Tensor]:
    """``Convolution`` (out, in, kh, kw) or ``Deconvolution`` (in, out / groups, kh, kw) weights
    -> ``prefix.weight`` (and ``prefix.bias``). Both already have PyTorch's Conv2d /
    ConvTranspose2d layouts. ``reverse_input`` reverses the input channels (axis 1 of a
    Convolution): a first layer trained on BGR then reads RGB."""
    _check(layer, 2 if bias else 1, f"{prefix} ({'with' if bias else 'without'} bias)")
    weight = layer.blobs[0]
    if weight.ndim != 4:
        raise MappingError(f"layer {layer.name!r} has a {weight.ndim}-D weight, not 4-D")
    if reverse_input:
        weight = weight[:, ::-1]
    state = {f"{prefix}.weight": _tensor(weight)}
    if bias:
        state[f"{prefix}.bias"] = _tensor(layer.blobs[1].reshape(-1))
    return state


def deconv_as_conv_to_state(layer: CaffeLayer, prefix: str, *, bias: bool) -> dict[str, Tensor]:
    """A stride-1 ``Deconvolution`` (in, out, kh, kw) -> the ``Conv2d`` computing the same map
    (padding unchanged): the kernel flipped in both spatial axes and its in/out axes swapped,
    ``weight.transpose(0, 1).flip(2, 3)`` (pixelwise writes DecoupledNet's 3x3 deconvolutions as
    convolutions)."""
    state = conv_to_state(layer, prefix, bias=bias)
    state[f"{prefix}.weight"] = state[f"{prefix}.weight"].transpose(0, 1).flip(2, 3).contiguous()
    return state


def bn4_to_state(layer: CaffeLayer, prefix: str) -> dict[str, Tensor]:
    """PSPNet's Caffe ``BN`` (hszhao/PSPNet ``src/caffe/layers/bn_layer.cpp``): four blobs,
    slope, bias, moving mean, moving variance, each 1 x C x 1 x 1, y = slope (x - mean) /
    sqrt(var + eps) + bias (eps 1e-5, BNParameter's default) -> BatchNorm2d's weight, bias,
    running_mean, running_var."""
    _check(layer, 4, f"{prefix} (a 4-blob BN)")
    slope, bias, mean, var = (_tensor(b.reshape(-1)) for b in layer.blobs)
    return _bn_state(prefix, slope, bias, mean, var)


def folded_bn_to_state(layer: CaffeLayer, prefix: str, eps: float = 1e-5) -> dict[str, Tensor]:
    """caffe-segnet's ``BN`` in ``bn_mode: INFERENCE`` (alexgkendall/caffe-segnet
    ``src/caffe/layers/bn_layer.cpp``): two blobs, y = scale x + shift, the statistics already
    folded in by SegNet-Tutorial's ``Scripts/compute_bn_statistics.py`` (HyeonwooNoh/caffe's
    ``BN`` in that mode is the same function, folded by DecoupledNet's
    ``BN_make_INFERENCE_script.py``) -> BatchNorm2d with
    weight = scale, bias = shift, running mean 0 and running variance 1 - eps (so that
    1 / sqrt(var + eps) is 1)."""
    _check(layer, 2, f"{prefix} (an inference-mode BN)")
    scale, shift = (_tensor(b.reshape(-1)) for b in layer.blobs)
    return _bn_state(
        prefix, scale, shift, torch.zeros_like(scale), torch.full_like(scale, 1.0 - eps)
    )


def batchnorm_to_state(
    batchnorm: CaffeLayer, scale: CaffeLayer | None, prefix: str
) -> dict[str, Tensor]:
    """BVLC ``BatchNorm`` (mean sum, variance sum, moving-average factor s) and the ``Scale`` after
    it (gamma, beta) -> BatchNorm2d: running_mean = blob0 / s, running_var = blob1 / s (s = 0
    means 0, as Caffe's ``batch_norm_layer.cpp``); without a Scale, gamma 1 and beta 0."""
    _check(batchnorm, 3, f"{prefix} (a BatchNorm)")
    factor = float(batchnorm.blobs[2].reshape(-1)[0])
    inverse = 0.0 if factor == 0 else 1.0 / factor
    mean = _tensor(batchnorm.blobs[0].reshape(-1)) * inverse
    var = _tensor(batchnorm.blobs[1].reshape(-1)) * inverse
    channels = mean.numel()
    if scale is None:
        gamma, beta = torch.ones(channels), torch.zeros(channels)
    else:
        _check(scale, 2, f"{prefix} (a Scale with bias)")
        gamma, beta = (_tensor(b.reshape(-1)) for b in scale.blobs)
    return _bn_state(prefix, gamma, beta, mean, var)


def _bn_state(prefix: str, weight: Tensor, bias: Tensor, mean: Tensor, var: Tensor) -> dict:
    return {
        f"{prefix}.weight": weight,
        f"{prefix}.bias": bias,
        f"{prefix}.running_mean": mean,
        f"{prefix}.running_var": var,
        f"{prefix}.num_batches_tracked": torch.tensor(0, dtype=torch.long),
    }


# -- a release's mapping as a table ----------------------------------------------------------------


@dataclass(frozen=True)
class LayerMap:
    """One Caffe layer and the module it fills. ``kind``: "conv" (Convolution, with ``bias``),
    "deconv" (Deconvolution), "deconv_as_conv" (a stride-1 Deconvolution filling a
    Conv2d), "bn4" (PSPNet's BN), "bn_folded" (caffe-segnet's or HyeonwooNoh/caffe's inference
    BN). ``reverse_input``: the first convolution of a
    BGR release."""

    caffe: str
    kind: str
    module: str
    bias: bool = False
    reverse_input: bool = False


def state_from_table(net: CaffeNet, table: Sequence[LayerMap]) -> dict[str, Tensor]:
    """The state dict ``table`` says the file's layers fill (raises :class:`MappingError` naming
    the first layer missing or of another blob count)."""
    layers = net.by_name()
    state: dict[str, Tensor] = {}
    for entry in table:
        layer = layers.get(entry.caffe)
        if layer is None:
            raise MappingError(f"it has no layer named {entry.caffe!r}")
        if entry.kind == "bn4":
            state |= bn4_to_state(layer, entry.module)
        elif entry.kind == "bn_folded":
            state |= folded_bn_to_state(layer, entry.module)
        elif entry.kind == "deconv_as_conv":
            state |= deconv_as_conv_to_state(layer, entry.module, bias=entry.bias)
        else:
            state |= conv_to_state(
                layer, entry.module, bias=entry.bias, reverse_input=entry.reverse_input
            )
    return state


def layers_from_state(state: Mapping[str, Tensor], table: Sequence[LayerMap]) -> list[CaffeLayer]:
    """The inverse of :func:`state_from_table`: a network's weights as the release's layers
    (for tests, which write files in the release's layout)."""
    layers = []
    for entry in table:
        blobs: list[Tensor]
        if entry.kind == "bn4":
            names = ("weight", "bias", "running_mean", "running_var")
            blobs = [state[f"{entry.module}.{n}"].reshape(1, -1, 1, 1) for n in names]
            kind = "BN"
        elif entry.kind == "bn_folded":
            blobs = list(_fold_bn(state, entry.module))
            kind = "BN"
        else:
            weight = state[f"{entry.module}.weight"]
            if entry.reverse_input:
                weight = weight.flip(1)
            if entry.kind == "deconv_as_conv":
                weight = weight.flip(2, 3).transpose(0, 1)
            blobs = [weight]
            if entry.bias:
                blobs.append(state[f"{entry.module}.bias"])
            kind = "Convolution" if entry.kind == "conv" else "Deconvolution"
        arrays = [b.detach().cpu().float().numpy() for b in blobs]
        if entry.kind == "bn_folded":
            arrays = [a.reshape(1, -1, 1, 1) for a in arrays]
        layers.append(CaffeLayer(entry.caffe, kind, arrays))
    return layers


def _fold_bn(state: Mapping[str, Tensor], prefix: str, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """A BatchNorm2d's function as caffe-segnet's inference scale and shift."""
    weight, bias = state[f"{prefix}.weight"].double(), state[f"{prefix}.bias"].double()
    mean, var = state[f"{prefix}.running_mean"].double(), state[f"{prefix}.running_var"].double()
    scale = weight / torch.sqrt(var + eps)
    return scale, bias - scale * mean
