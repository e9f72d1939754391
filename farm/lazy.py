"""Lazy public names for a package (PEP 562): `import farm` stays cheap, names load on first use.

Why: a Serve replica imports `inference` for `load_posterior` alone, and `farm --help` should not
pay for numba, zarr, torch or Ray. Each package lists where its public names live; this module
turns that table into the package's `__getattr__` and `__dir__`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, where: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The `__getattr__` and `__dir__` of ``package`` for the names in ``where`` (name -> module).

    Args:
        package: the package's ``__name__``.
        where: each public name and the module that defines it.
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
