"""The method registry as the checker sees it.

Every module of `mergec.check` takes the registry from here, so where it lives is one
import line.
"""

from __future__ import annotations

from mergec.methods import REGISTRY, Method, Param, get

#: Names a recipe can call besides the methods of the registry.
BUILTINS = ("stack", "ramp")
#: calls that are the whole value of an output written in another form
#: (check/lowrank.py, check/moe.py)
FORMS = ("lowrank", "moe")

__all__ = ["BUILTINS", "FORMS", "REGISTRY", "Method", "Param", "get"]
