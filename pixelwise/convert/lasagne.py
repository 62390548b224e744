"""Lasagne parameter dumps: ``np.savez(path, *lasagne.layers.get_all_param_values(output))``.

The file is a zip of ``arr_0.npy`` .. ``arr_{N-1}.npy``: every parameter of the network in
``get_all_param_values`` order, which is ``get_all_layers`` order (a depth-first walk from the
output that lists each layer after its inputs, first input first: for a network built in one
pass, the order its layers were created) and, within a layer, the order the layer added them:

- ``Conv2DLayer``: ``W`` (out, in, h, w), ``b``;
- ``TransposedConv2DLayer`` (``Deconv2DLayer``): ``W`` (in, out, h, w), ``b``;
- ``BatchNormLayer``: ``beta``, ``gamma``, ``mean``, ``inv_std`` = 1 / sqrt(var + epsilon).

Filter orientation (``flip_filters``): Lasagne's ``Conv2DLayer`` flips by default (a true
convolution) and PyTorch's ``conv2d`` does not (a correlation), so a layer built with
``flip_filters=True`` needs its ``W`` rotated by 180 degrees. ``TransposedConv2DLayer`` is Theano's
gradient of a convolution with ``filter_flip = not flip_filters``: with its default
``flip_filters=False`` it is the transpose of a *true* convolution by ``W``, which is PyTorch's
``conv_transpose2d`` by ``W`` rotated by 180 degrees. :class:`ParamCursor` takes the flag and
does the rotation.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from pixelwise.errors import PixelwiseError

__all__ = ["LasagneParams", "ParamCursor", "read"]


@dataclass(eq=False)
class LasagneParams:
    """What :func:`read` returns: the file's path and its arrays in parameter order."""

    path: Path
    arrays: list[np.ndarray]


def read(path: str | Path) -> LasagneParams:
    """Read ``arr_0`` .. ``arr_{N-1}`` of a Lasagne ``.npz`` dump, in that order.

    Raises:
        PixelwiseError: the file is missing, truncated, not an ``.npz``, or its arrays are not
            named ``arr_0`` .. ``arr_{N-1}`` (not a ``np.savez(path, *params)`` dump).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            count = len(names)
            expected = {f"arr_{i}" for i in range(count)}
            if names != expected:
                odd = sorted(names - expected)[:3]
                raise PixelwiseError(
                    f"{path} holds arrays named {', '.join(odd)}, not arr_0..arr_{count - 1}; "
                    "pass the file np.savez wrote from get_all_param_values."
                )
            arrays = [np.asarray(archive[f"arr_{i}"]) for i in range(count)]
    except OSError as error:
        raise PixelwiseError(
            f"cannot read the Lasagne file {path} ({error.strerror or error}); check the path "
            "given with --weights."
        ) from None
    except (zipfile.BadZipFile, ValueError, EOFError, KeyError) as error:
        raise PixelwiseError(
            f"{path} is not a complete .npz archive ({error}); it is truncated or another "
            "format: download it again."
        ) from None
    return LasagneParams(path, arrays)


def _float(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


class ParamCursor:
    """Takes a Lasagne dump's arrays in order, checking each shape against our module."""

    def __init__(self, params: LasagneParams, network: str) -> None:
        self.params = params
        self.network = network
        self.position = 0

    def _take(self, shape: tuple[int, ...], what: str) -> np.ndarray:
        arrays = self.params.arrays
        if self.position >= len(arrays):
            raise PixelwiseError(
                f"{self.params.path} ends after {len(arrays)} arrays where {self.network} needs "
                f"more ({what}); it is a file of another model."
            )
        array = arrays[self.position]
        if tuple(array.shape) != tuple(shape):
            raise PixelwiseError(
                f"{self.params.path}: arr_{self.position} has the shape {tuple(array.shape)} where "
                f"{self.network} needs {tuple(shape)} ({what}); it is a file of another model or "
                "class count."
            )
        self.position += 1
        return array

    def conv(self, name: str, conv: nn.Conv2d, *, flip_filters: bool) -> dict[str, Tensor]:
        """A ``Conv2DLayer``'s ``W``, ``b``; ``flip_filters`` as the layer was built."""
        weight = _float(self._take(tuple(conv.weight.shape), f"{name}.weight"))
        if flip_filters:  # a true convolution: PyTorch correlates, so rotate the kernel
            weight = weight.flip(-2, -1)
        bias = _float(self._take(tuple(conv.bias.shape), f"{name}.bias"))
        return {f"{name}.weight": weight, f"{name}.bias": bias}

    def transposed_conv(
        self, name: str, conv: nn.ConvTranspose2d, *, flip_filters: bool = False
    ) -> dict[str, Tensor]:
        """A ``TransposedConv2DLayer``'s ``W`` (in, out, h, w), ``b``."""
        weight = _float(self._take(tuple(conv.weight.shape), f"{name}.weight"))
        if not flip_filters:  # the transpose of a true convolution (module docstring)
            weight = weight.flip(-2, -1)
        bias = _float(self._take(tuple(conv.bias.shape), f"{name}.bias"))
        return {f"{name}.weight": weight, f"{name}.bias": bias}

    def batch_norm(self, name: str, norm: nn.BatchNorm2d) -> dict[str, Tensor]:
        """A ``BatchNormLayer``'s ``beta``, ``gamma``, ``mean``, ``inv_std``."""
        shape = (norm.num_features,)
        beta = _float(self._take(shape, f"{name} beta"))
        gamma = _float(self._take(shape, f"{name} gamma"))
        mean = _float(self._take(shape, f"{name} mean"))
        inv_std = self._take(shape, f"{name} inv_std").astype(np.float64)
        # inv_std = 1 / sqrt(var + eps_lasagne); keep var + eps whatever our eps is.
        var = torch.from_numpy(1.0 / inv_std**2 - norm.eps).float()
        return {
            f"{name}.weight": gamma,
            f"{name}.bias": beta,
            f"{name}.running_mean": mean,
            f"{name}.running_var": var,
            f"{name}.num_batches_tracked": torch.tensor(0, dtype=torch.long),
        }

    def finish(self) -> None:
        """Every array was used; a longer file is another model's."""
        if self.position != len(self.params.arrays):
            raise PixelwiseError(
                f"{self.params.path} holds {len(self.params.arrays)} arrays where "
                f"{self.network} has {self.position}; it is a file of another model."
            )
