"""MatConvNet DagNN files (``.mat``), read without MATLAB or MatConvNet.

A DagNN saved with ``net.saveobj()`` is a plain struct: ``params`` (a struct array of ``name``,
``value``, ``learningRate``, ``weightDecay``, ...) and ``layers`` (a struct array of ``name``,
``type`` such as ``dagnn.Conv``, ``inputs``, ``outputs``, ``params`` - the names of its
parameters - and ``block``, the layer's options), usually with ``vars`` and ``meta``. The file
holds those either as top-level variables (``save(file, '-struct', 'net')``, MatConvNet's model
zoo) or inside one struct variable. Files before MATLAB 7.3 are read with ``scipy.io.loadmat``;
7.3 files are HDF5 and read with ``h5py`` (numeric arrays stored transposed, strings as UTF-16
``char`` arrays, cells and struct arrays as object references).

Layouts that differ from PyTorch, turned around by the helpers here:

- a conv's ``filters`` are ``H x W x Cin x Cout`` (MATLAB's column-major order) -> PyTorch's
  ``Cout x Cin x H x W``; MatConvNet's ``vl_nnconv`` is a correlation, like PyTorch's;
- a batch norm's ``moments`` are ``C x 2``: the mean and sigma = sqrt(var + epsilon), with the
  epsilon already inside (``vl_nnbnorm`` divides by the given sigma and adds nothing), so the
  running variance is ``sigma^2 - eps`` for PyTorch's ``eps``.

MATLAB class objects (``classdef`` handles, stored as MCOS "FileWrapper__" data) are not plain
data: such a file is refused with a sentence. RefineNet's released models are of this kind (their
``net_config`` is a ``ref_obj`` handle holding further handles), see
``pixelwise/convert/releases/refinenet_voc.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pixelwise.errors import PixelwiseError

__all__ = ["DagLayer", "DagNNFile", "batch_norm_state", "conv_weight", "read"]

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_DATA_CLASSES = {
    "double", "single", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
    "uint64", "logical", "char", "cell", "struct",
}  # fmt: skip


@dataclass
class DagLayer:
    """One entry of ``net.layers``: what it is, what it reads and writes, its parameters."""

    name: str
    type: str
    inputs: list[str]
    outputs: list[str]
    params: list[str]
    block: dict[str, Any] = field(default_factory=dict)


@dataclass(eq=False)
class DagNNFile:
    """What :func:`read` returns: the file's path, its parameters by name, its layers in order."""

    path: Path
    params: dict[str, np.ndarray]
    layers: list[DagLayer]
    meta: dict[str, Any] = field(default_factory=dict)

    def param(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The parameter called ``name`` (MATLAB's shape), checked against ``shape`` if given.

        Raises:
            PixelwiseError: the file has no such parameter or another shape (another model).
        """
        if name not in self.params:
            raise PixelwiseError(
                f"{self.path} has no parameter {name!r}; it is a file of another model: pass "
                "the release's own .mat file."
            )
        value = self.params[name]
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise PixelwiseError(
                f"{self.path}: parameter {name!r} has the shape {tuple(value.shape)} where "
                f"{tuple(shape)} is needed; it is a file of another model or class count."
            )
        return value


# -- layouts -----------------------------------------------------------------------------------


def conv_weight(filters: np.ndarray) -> Tensor:
    """MatConvNet ``H x W x Cin x Cout`` filters -> PyTorch ``Cout x Cin x H x W``.

    MATLAB drops trailing singleton dimensions (a 1x1 conv to one class is stored as 2-D, a
    single-output conv as 3-D), so they are put back first.
    """
    array = np.asarray(filters, dtype=np.float32)
    array = array.reshape(array.shape + (1,) * (4 - array.ndim))
    return torch.from_numpy(np.ascontiguousarray(array.transpose(3, 2, 0, 1)))


def batch_norm_state(
    prefix: str, mult: np.ndarray, bias: np.ndarray, moments: np.ndarray, eps: float
) -> dict[str, Tensor]:
    """``dagnn.BatchNorm``'s ``mult``, ``bias``, ``moments`` (C x 2: mean, sigma) -> the state of
    a PyTorch ``BatchNorm2d`` with epsilon ``eps`` at ``prefix``."""
    moments = np.asarray(moments, dtype=np.float64).reshape(-1, 2)
    sigma = moments[:, 1]
    return {
        f"{prefix}.weight": torch.from_numpy(np.asarray(mult, np.float32).reshape(-1)),
        f"{prefix}.bias": torch.from_numpy(np.asarray(bias, np.float32).reshape(-1)),
        f"{prefix}.running_mean": torch.from_numpy(moments[:, 0].astype(np.float32)),
        # sigma already holds MatConvNet's epsilon: keep var + eps = sigma^2 for our eps.
        f"{prefix}.running_var": torch.from_numpy((sigma**2 - eps).astype(np.float32)),
        f"{prefix}.num_batches_tracked": torch.tensor(0, dtype=torch.long),
    }


# -- reading -----------------------------------------------------------------------------------


def read(path: str | Path) -> DagNNFile:
    """Read a MatConvNet DagNN ``.mat`` (v5/v7 with scipy, v7.3 with h5py).

    Raises:
        PixelwiseError: the file is missing, truncated, not a MAT-file, holds MATLAB objects
            instead of plain structs, or has no DagNN ``params``/``layers``.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            handle.seek(512)
            hdf5 = handle.read(8) == _HDF5_SIGNATURE
    except OSError as error:
        raise PixelwiseError(
            f"cannot read the MatConvNet file {path} ({error.strerror or error}); check the path "
            "given with --weights."
        ) from None
    variables = _read_hdf5(path) if hdf5 else _read_v5(path)
    net = _find_dagnn(variables)
    if net is None:
        raise PixelwiseError(
            f"{path} holds no MatConvNet DagNN (no 'params' and 'layers' among "
            f"{', '.join(sorted(variables)) or 'its variables'}); pass the network file the "
            "release published."
        )
    return _dagnn(path, net)


def _find_dagnn(variables: dict[str, Any]) -> dict[str, Any] | None:
    if {"params", "layers"} <= set(variables):
        return variables
    for value in variables.values():
        if isinstance(value, dict) and {"params", "layers"} <= set(value):
            return value
    return None


def _records(value: Any) -> list[dict[str, Any]]:
    """A struct array (one struct or a list of them) as a list of dicts."""
    if isinstance(value, dict):
        keys = list(value)
        # A struct array read from HDF5 comes as one dict of equally long lists.
        if keys and all(isinstance(value[k], list) for k in keys):
            lengths = {len(value[k]) for k in keys}
            if len(lengths) == 1:
                return [{k: value[k][i] for k in keys} for i in range(lengths.pop())]
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, np.ndarray) and value.dtype == object:
        return [s for v in value.ravel().tolist() for s in _strings(v)]
    return []


def _dagnn(path: Path, net: dict[str, Any]) -> DagNNFile:
    params: dict[str, np.ndarray] = {}
    for record in _records(net["params"]):
        name = _strings(record.get("name"))
        if not name:
            continue
        params[name[0]] = np.asarray(record.get("value"))
    layers = []
    for record in _records(net["layers"]):
        block = record.get("block")
        layers.append(
            DagLayer(
                name=(_strings(record.get("name")) or [""])[0],
                type=(_strings(record.get("type")) or [""])[0],
                inputs=_strings(record.get("inputs")),
                outputs=_strings(record.get("outputs")),
                params=_strings(record.get("params")),
                block=block if isinstance(block, dict) else {},
            )
        )
    if not params or not layers:
        raise PixelwiseError(
            f"{path} has an empty DagNN ('params' or 'layers' is empty); pass the network file "
            "the release published."
        )
    meta = net.get("meta")
    return DagNNFile(path, params, layers, meta if isinstance(meta, dict) else {})


def _objects_error(path: Path, name: str, matlab_class: str) -> PixelwiseError:
    return PixelwiseError(
        f"{path} stores {name!r} as a MATLAB object of class {matlab_class!r}, which only MATLAB "
        "can read; pixelwise reads plain structs (a DagNN saved with net.saveobj())."
    )


def _read_v5(path: Path) -> dict[str, Any]:
    import scipy.io
    from scipy.io.matlab import MatlabOpaque, mat_struct

    try:
        # No squeeze_me: it would also drop a filter bank's inner singleton axes (1 input channel).
        raw = scipy.io.loadmat(path, struct_as_record=False)
    except (ValueError, TypeError, OSError, EOFError, IndexError, KeyError) as error:
        raise PixelwiseError(
            f"{path} is not a readable MAT-file ({error}); it is truncated or another format: "
            "download it again."
        ) from None
    except NotImplementedError as error:
        raise PixelwiseError(f"{path} is a MAT-file pixelwise cannot read ({error}).") from None

    def convert(value: Any, name: str) -> Any:
        if isinstance(value, MatlabOpaque):
            raise _objects_error(path, name, _opaque_class(value))
        if isinstance(value, mat_struct):
            return {k: convert(getattr(value, k), k) for k in value._fieldnames}
        if isinstance(value, np.ndarray) and value.dtype == object:  # cell or struct array
            items = [convert(v, name) for v in value.ravel(order="F").tolist()]
            return items[0] if len(items) == 1 else items
        if isinstance(value, np.ndarray) and value.dtype.kind == "U":  # char array
            texts = [str(v) for v in value.ravel(order="F")]
            return texts[0] if len(texts) == 1 else texts
        return value

    return {k: convert(v, k) for k, v in raw.items() if not k.startswith("__")}


def _opaque_class(value: Any) -> str:
    try:
        return str(value[0]["s2"]) if value.dtype.names else "object"
    except (IndexError, KeyError, TypeError, ValueError):
        return "object"


def _read_hdf5(path: Path) -> dict[str, Any]:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise PixelwiseError(
            f"{path} is not a readable MAT-file v7.3 ({error}); it is truncated or another "
            "format: download it again."
        ) from None
    with handle:
        try:
            return {
                name: _h5_value(handle, item, name)
                for name, item in handle.items()
                if not name.startswith("#")
            }
        except (OSError, KeyError, ValueError) as error:
            raise PixelwiseError(
                f"{path} cannot be read to the end ({error}); it is truncated: download it again."
            ) from None


def _attr(item: Any, key: str) -> str | None:
    value = item.attrs.get(key)
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _h5_value(handle: Any, item: Any, name: str) -> Any:
    import h5py

    matlab_class = _attr(item, "MATLAB_class")
    if isinstance(item, h5py.Group):
        if matlab_class not in (None, "struct"):
            raise _objects_error(Path(handle.filename), name, matlab_class)
        return {key: _h5_value(handle, child, key) for key, child in item.items()}
    if matlab_class is not None and matlab_class not in _DATA_CLASSES:
        raise _objects_error(Path(handle.filename), name, matlab_class)
    if item.attrs.get("MATLAB_empty"):
        return "" if matlab_class == "char" else [] if matlab_class == "cell" else np.zeros(0)
    data = item[()]
    if item.dtype == h5py.ref_dtype:
        # A cell array, or one field of a struct array: each element is a reference.
        return [_h5_value(handle, handle[ref], name) for ref in np.asarray(data).T.ravel()]
    array = np.asarray(data).T  # MATLAB is column-major; HDF5 holds the reversed shape
    if matlab_class == "char":
        return "".join(chr(c) for c in array.ravel(order="F"))
    if matlab_class == "logical":
        return array.astype(bool)
    return array
