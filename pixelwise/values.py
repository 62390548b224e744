"""Values typed by hand (YAML files, ``key=value`` on the command line) checked against type hints.

One checker for the config's fields and the datasets' options: numbers written ``1e-3`` are
numbers, lists have their declared lengths, and a value that does not fit raises
:class:`TypeMismatch`, which the caller turns into one sentence naming the key.
"""

from __future__ import annotations

import math
import re
import types
from typing import Any, Literal, Union, get_args, get_origin


class TypeMismatch(Exception):
    """A value does not fit a type hint; the caller turns it into one sentence naming the key."""


# YAML 1.1 reads 1e-3 and 1E-3 (no dot) as strings; these spellings are numbers all the same.
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def coerce(value: Any, hint: Any, length: int | None) -> Any:
    """``value`` checked against (and converted to) ``hint``; raises :class:`TypeMismatch`."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, length)
            except TypeMismatch:
                pass
        raise TypeMismatch
    if origin is Literal:
        if value in args and not isinstance(value, bool):
            return value
        raise TypeMismatch
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeMismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeMismatch
    if hint is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise TypeMismatch
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeMismatch
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise TypeMismatch
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise TypeMismatch
            return tuple(coerce(v, a, None) for v, a in zip(value, args, strict=True))
        if length is not None and len(value) != length:
            raise TypeMismatch
        item = args[0] if args else Any
        items = [coerce(v, item, None) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise TypeMismatch
        key_hint, value_hint = args if args else (Any, Any)
        return {coerce(k, key_hint, None): coerce(v, value_hint, None) for k, v in value.items()}
    raise TypeError(f"type {hint!r} has no check")  # a schema bug, not user input


def describe(hint: Any, length: int | None) -> str:
    """``hint`` in words, as the sentence of a refused value says it."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        words = [describe(a, length) for a in args if a is not type(None)]
        if type(None) in args:
            words.insert(0, "null")
        return " or ".join(words)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (list, tuple):
        count = f"{length} " if length is not None else ""
        if origin is tuple and args and args[-1] is not Ellipsis:
            count = f"{len(args)} "
        item = args[0] if args else Any
        return f"a list of {count}{plural(item)}"
    if origin is dict or hint is dict:
        return "a mapping of names to values"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, "any value"
    )


def plural(hint: Any) -> str:
    return {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(hint, "values")
