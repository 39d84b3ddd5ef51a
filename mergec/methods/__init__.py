"""The method library: one module per method (or family), collected here.

Each module declares its methods (:class:`~mergec.methods.spec.Method`: typed parameters,
traits, checks) and implements each once over the backends' array primitives
(:class:`mergec.backends.base.ArrayOps`). Adding a method is a new module and one line in
``MODULES``.
"""

from __future__ import annotations

import importlib

from .spec import REQUIRED, Args, Method, Param, Traits, run

#: the method modules, in the order the reference lists them
MODULES = (
    "linear",
    "spherical",
    "ties",
    "dare",
    "breadcrumbs",
    "della",
    "model_stock",
    "sce",
    "nearswap",
    "tsv",
    "iso_c",
    "fisher",
    "regmean",
)

METHODS: tuple[Method, ...] = tuple(
    m for mod in MODULES for m in importlib.import_module(f"{__name__}.{mod}").METHODS)

REGISTRY: dict[str, Method] = {m.name: m for m in METHODS}


def get(name: str) -> Method | None:
    return REGISTRY.get(name)


def run_method(ops, name: str, inputs, params, seed: int | None = None):
    """Method `name` on backend arrays `inputs` (see :func:`mergec.methods.spec.run`)."""
    method = REGISTRY.get(name)
    if method is None:
        raise ValueError(f"unknown method {name!r}")
    return run(method, ops, inputs, params, seed)


__all__ = ["METHODS", "REGISTRY", "REQUIRED", "Args", "Method", "Param", "Traits", "get",
           "run", "run_method"]
