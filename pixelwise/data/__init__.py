"""Datasets in their official on-disk formats, one file per dataset, and the joint transforms.

``build_dataset(name, root, split=...)`` builds a registered dataset; ``list_datasets()`` names them.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, get_type_hints

from pixelwise._imports import import_submodules
from pixelwise.data.base import DATASETS, IGNORE_INDEX, SegmentationDataset, register_dataset
from pixelwise.data.home import home_root
from pixelwise.errors import PixelwiseError
from pixelwise.values import TypeMismatch, coerce, describe

import_submodules(__name__, __path__, skip={"base", "transforms", "check"})


def build_dataset(name: str, root: str | Path | None = None, split: str = "train", **kwargs: Any):
    """Build the dataset registered as ``name``; options the class does not take, or of the wrong
    type, raise in one sentence."""
    cls = DATASETS.get(name)
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        # transforms is for code, not a value a user can type, so it is not offered.
        valid = ", ".join(p for p in accepted if p not in ("self", "root", "split", "transforms"))
        raise PixelwiseError(
            f"Dataset {name!r} does not take {', '.join(unknown)}; its options are: "
            f"{valid or 'none'}."
        )
    kwargs = _typed_options(name, cls, kwargs)
    if root is None:
        if "root" in accepted and accepted["root"].default is inspect.Parameter.empty:
            # A recipe names the dataset, not a path: it lives in the data home.
            return cls(home_root(cls.home_folder()), split=split, **kwargs)
        return cls(split=split, **kwargs)
    return cls(root, split=split, **kwargs)


def _typed_options(name: str, cls: type, options: dict[str, Any]) -> dict[str, Any]:
    """Each option checked against the class's annotation, converted like a config value (a list
    for a tuple, an int where a float is wanted) or refused in one sentence with the default.

    Options typed by hand (``data.options`` in a config, ``key=value`` after ``datasets check``)
    arrive as YAML values; annotations the checker has no rule for (``Path``) take them as they are.
    """
    try:
        hints = get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve is not checked
        hints = {}
    defaults = inspect.signature(cls.__init__).parameters
    typed = {}
    for key, value in options.items():
        hint = hints.get(key, Any)
        try:
            typed[key] = coerce(value, hint, None)
        except TypeMismatch:
            raise PixelwiseError(
                f"Option {key}={value!r} of dataset {name!r} must be {describe(hint, None)}; "
                f"its default is {defaults[key].default!r}."
            ) from None
        except TypeError:
            typed[key] = value
    return typed


def list_datasets() -> list[str]:
    return DATASETS.names()


def dataset_class(name: str) -> type[SegmentationDataset]:
    return DATASETS.get(name)


__all__ = [
    "IGNORE_INDEX",
    "SegmentationDataset",
    "build_dataset",
    "dataset_class",
    "list_datasets",
    "register_dataset",
]
