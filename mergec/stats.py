"""Statistics over a whole model, computed before the per-tensor pass.

Some parameters are defined over every tensor of a model at once — TIES with
`trim="model"` keeps the top `density` fraction of a task vector's magnitudes over the
whole model, not per tensor. The lowering leaves a `ModelTopK` placeholder in such a merge
node; before the output is written, `compute_model_stats` finds the exact threshold with
two streaming passes over the task vectors, holding one tensor at a time:

  1. a histogram of the magnitudes by the top 16 bits of their float32 bit pattern
     (for non-negative floats the bit pattern orders like the value), which tells the
     bucket where the k-th largest magnitude lies;
  2. the magnitudes inside that one bucket, from which the exact k-th largest is selected.

No full sort and no copy of the model: memory is one tensor plus the bucket.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from mergec.backends.base import keep_count
from mergec.ir.nodes import Node, topo

_BUCKETS = 1 << 16


@dataclass(frozen=True)
class ModelTopK:
    """The magnitude of the k-th largest entry of one task vector over a whole model,
    k = keep_count(density, number of entries)."""

    call: str  # identifies the merge call (and output) it belongs to
    input: int
    density: float

    def __repr__(self) -> str:
        return f"model_topk(input {self.input}, density {self.density:g})"


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


def _bits(a: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.float32, copy=False)).ravel().view(np.uint32)


def compute_model_stats(lo, value_of: Callable[[Node], np.ndarray]) -> dict:
    """Exact model-wide thresholds for every placeholder of one lowered output.
    `value_of(node)` evaluates a node to a float32 numpy array."""
    stats: dict[ModelTopK, float] = {}
    for ph, nodes in _placeholders(lo).items():
        unique = list(dict.fromkeys(nodes))
        total = sum(n.numel for n in unique)
        k = keep_count(ph.density, total)
        if k >= total:
            stats[ph] = 0.0
            continue
        hist = np.zeros(_BUCKETS, dtype=np.int64)
        for n in unique:
            hist += np.bincount(_bits(value_of(n)) >> 16, minlength=_BUCKETS)
        # walk from the largest bucket down until k entries are covered
        above = np.cumsum(hist[::-1])  # above[j]: entries in the top j+1 buckets
        j = int(np.searchsorted(above, k))
        bucket = _BUCKETS - 1 - j
        before = int(above[j - 1]) if j > 0 else 0
        inside = []
        for n in unique:
            b = _bits(value_of(n))
            inside.append(b[(b >> 16) == bucket])
        vals = np.concatenate(inside)
        r = k - before  # the r-th largest inside the bucket (1-based)
        kth = np.partition(vals, vals.size - r)[vals.size - r]
        stats[ph] = float(np.array([kth], dtype=np.uint32).view(np.float32)[0])
    return stats


def resolve_stats(value, stats: dict):
    """A parameter value with its placeholders replaced by the computed statistics."""
    if isinstance(value, ModelTopK):
        return stats[value]
    if isinstance(value, tuple) and any(isinstance(x, ModelTopK) for x in value):
        return tuple(stats[x] if isinstance(x, ModelTopK) else x for x in value)
    return value
