"""Limits on the size of what the checker and the lowering walk, the recursion depth they
are given, and what keeps their time linear in the recipe's size.

The parser bounds one expression's nesting (E107, `mergec.lang.parser.MAX_NESTING`); `let`
statements can still chain values much deeper than that (`let a2 = f(a1)`, `let a3 =
f(a2)`, ...). The checker measures that depth for every statement and stops it at
`MAX_VALUE_DEPTH` with E109, so that the stages after it, some of which recurse once per
level, can be given a recursion limit that is certain to be enough.
"""

from __future__ import annotations

import gc
import sys
from contextlib import contextmanager

#: the deepest chain of nested values (merge calls, arithmetic, slices, stacks) a statement
#: may build through `let`s: generated recipes of thousands of steps fit, and the stages
#: that recurse stay well within the recursion limit below
MAX_VALUE_DEPTH = 4000 if sys.version_info >= (3, 11) else 1500
#: Python frames per level of a value in the recursive stages (lowering: a node, a call,
#: its arguments), with room to spare
_FRAMES_PER_LEVEL = 5
RECURSION_LIMIT = MAX_VALUE_DEPTH * _FRAMES_PER_LEVEL + 2000


@contextmanager
def deep_recursion():
    """Raise Python's recursion limit to RECURSION_LIMIT for the duration (never lower it).
    Python 3.11 runs Python-to-Python calls without growing the C stack (3.10 does, hence
    its lower MAX_VALUE_DEPTH), and the C-level recursions that remain (JSON, the parser's
    tree) are bounded by their own limits."""
    old = sys.getrecursionlimit()
    if old < RECURSION_LIMIT:
        sys.setrecursionlimit(RECURSION_LIMIT)
    try:
        yield
    finally:
        if old < RECURSION_LIMIT:
            sys.setrecursionlimit(old)


@contextmanager
def paused_gc():
    """Pause the cyclic garbage collector for the duration. Parsing and checking a recipe
    allocate many small objects and no cycles that must be freed early; with the collector
    running, its passes over the growing heap make a 100,000-statement recipe three times
    slower. Objects are still freed by reference counting."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
