"""A module imported on first use.

``np = lazy_module("numpy")`` at the top of a module that needs numpy only when its functions
run (the method library, which the checker imports for the methods' declarations) keeps
``mergec check`` and ``mergec fmt`` from paying numpy's import. The first attribute read
imports the module; later reads are plain attribute lookups on the proxy.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class _LazyModule:
    __slots__ = ("_name", "_module", "__dict__")

    def __init__(self, name: str) -> None:
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        value = getattr(module, attr)
        self.__dict__[attr] = value  # later reads of `attr` skip __getattr__
        return value

    def __repr__(self) -> str:
        state = "loaded" if self._module is not None else "not loaded yet"
        return f"<lazy module {self._name!r} ({state})>"


def lazy_module(name: str) -> Any:
    """A stand-in for ``import name`` that imports the module when an attribute is first read."""
    return _LazyModule(name)
