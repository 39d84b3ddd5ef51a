"""Optimization passes over the per-tensor IR.

Each pass is one module with one function of the same name, taking the roots of every
output tensor and a canonical `Graph`, and returning the rewritten roots and a list of
lines saying what it changed. They run in the order of `RULES`:

  fold_linear        merges that are linear combinations (linear, task_arithmetic,
                     passthrough) become weighted sums, and weighted sums of weighted sums
                     become one — first, so the later passes see whole sums;
  eliminate_common   equal sub-expressions become one node (a task vector used by two
                     merges is computed once) — after folding, which creates equal sums;
  eliminate_dead     terms with coefficient 0, and deltas that are zero, are dropped, with
                     the reads that only they needed;
  raw_copy           a tensor written exactly as an input stores it is copied as bytes,
                     without decoding — after the eliminations, which expose such tensors;
  fuse_cast          a tensor that is an input tensor in another storage dtype is converted
                     directly, without the float32 compute path.

Weighted sums are accumulated in float64 and only rounded where a non-linear method or
the output needs them, so a folded chain and an unfolded one round at the same places;
their float64 values differ only in the last bits, which can change the rounding of an
entry whose exact value is a tie (one unit in the last place, in a small fraction of
entries: tests/test_passes.py). Copies, conversions and every non-linear method are
bit-identical with and without the passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mergec.ir.nodes import Graph, Node
from mergec.ir.passes.eliminate_common import eliminate_common
from mergec.ir.passes.eliminate_dead import eliminate_dead
from mergec.ir.passes.fold_linear import fold_linear
from mergec.ir.passes.fuse_cast import fuse_cast
from mergec.ir.passes.raw_copy import raw_copy

RULES = (fold_linear, eliminate_common, eliminate_dead, raw_copy, fuse_cast)


@dataclass
class PassReport:
    name: str
    changes: list[str] = field(default_factory=list)


def run_passes(roots: list[Node], rules=RULES) -> tuple[list[Node], list[PassReport]]:
    g = Graph(canonical=False)  # each pass does its own work; eliminate_common interns
    reports = []
    for rule in rules:
        roots, changes = rule(roots, g)
        reports.append(PassReport(rule.__name__, changes))
    return roots, reports
