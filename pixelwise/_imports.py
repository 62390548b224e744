"""Import every module of a package so that the registration decorators in them run."""

from __future__ import annotations

import importlib
import pkgutil


def import_submodules(package_name: str, package_path: list[str], skip: set[str]) -> None:
    """Import ``package_name.<module>`` for each module file in the package, except ``skip``.

    One file per paper or dataset registers itself when imported; listing the files here instead
    would be a second list to keep in step with the files themselves.
    """
    for module in sorted(pkgutil.iter_modules(package_path), key=lambda m: m.name):
        if module.name.startswith("_") or module.name in skip:
            continue
        importlib.import_module(f"{package_name}.{module.name}")
