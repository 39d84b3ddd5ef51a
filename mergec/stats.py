"""Statistics over a whole model, computed before the per-tensor pass.

Some parameters are defined over every tensor of a model at once — TIES with
`trim="model"` keeps the top `density` fraction of a task vector's magnitudes over the
whole model, not per tensor. The lowering leaves a `ModelTopK` placeholder in such a merge
node; before the output is written, `compute_model_stats` finds the exact threshold with
two streaming passes over the task vectors, holding one tensor at a time:

  1. a histogram of the magnitudes by the top bits of their float32 bit pattern
     (for non-negative floats the bit pattern orders like the value), which tells the
     bucket where the k-th largest magnitude lies;
  2. the magnitudes inside that one bucket, from which the exact k-th largest is selected.

No full sort and no copy of the model: memory is one tensor plus the bucket.
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from mergec.methods.spec import keep_count
from mergec.ops.select import exact_kth_largest
from mergec.ir.nodes import Node, topo
from mergec.ir.placeholders import ModelTopK



def _placeholders(lo) -> dict[ModelTopK, list[Node]]:
    """Each placeholder with the task-vector nodes it ranges over, in tensor order."""
    found: dict[ModelTopK, list[Node]] = {}
    seen: set[int] = set()
    for t in lo.tensors:
        for n in topo(t.node):
            if n.op != "merge" or id(n) in seen:
                continue
            seen.add(id(n))
            for _, v in n.attr("params"):
                if isinstance(v, tuple):
                    for i, x in enumerate(v):
                        if isinstance(x, ModelTopK):
                            found.setdefault(x, []).append(n.args[x.input])
    return found


def compute_model_stats(lo, chunks_of: Callable[[Node], Iterable[np.ndarray]]) -> dict:
    """Exact model-wide thresholds for every placeholder of one lowered output.
    `chunks_of(node)` yields a node's value as float32 numpy arrays (the whole tensor, or
    blocks of rows when memory is limited)."""
    stats: dict[ModelTopK, float] = {}
    for ph, nodes in _placeholders(lo).items():
        unique = list(dict.fromkeys(nodes))
        total = sum(n.numel for n in unique)
        k = keep_count(ph.density, total)
        if k >= total:
            stats[ph] = 0.0
            continue

        def chunks(unique=unique):
            for n in unique:
                yield from chunks_of(n)

        stats[ph], _ = exact_kth_largest(chunks, k)
    return stats


def resolve_stats(value, stats: dict):
    """A parameter value with its placeholders replaced by the computed statistics."""
    if isinstance(value, ModelTopK):
        return stats[value]
    if isinstance(value, tuple) and any(isinstance(x, ModelTopK) for x in value):
        return tuple(stats[x] if isinstance(x, ModelTopK) else x for x in value)
    return value
