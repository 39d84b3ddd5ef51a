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

from mergec.backends.base import keep_count
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


def magnitude_bits(a: np.ndarray) -> np.ndarray:
    """The float32 bit patterns of |a|, which order like the magnitudes (NaN above
    infinity)."""
    return np.abs(a.astype(np.float32, copy=False)).ravel().view(np.uint32)


#: histogram buckets of a magnitude's bit pattern: its top 14 bits (sign, exponent and the
#: top 5 mantissa bits)
KEY_SHIFT = 18


def bucket_pass(map_bits: Callable[[Callable], list], k: int) -> tuple[int, list]:
    """Where the k-th largest of some magnitude bit patterns lies, by two passes that hold
    one chunk at a time: a histogram of the top bits, then the entries of the one bucket
    that holds the k-th. `map_bits(fn)` applies `fn` to the bit patterns of every chunk,
    in order, and returns the results. Returns (how many entries lie above the bucket,
    the bucket's entries chunk by chunk)."""
    nb = 1 << (32 - KEY_SHIFT)
    hist = np.sum(map_bits(lambda b: np.bincount(b >> KEY_SHIFT, minlength=nb)), axis=0)
    above = np.cumsum(hist[::-1])
    pos = int(np.searchsorted(above, k))
    bucket = nb - 1 - pos
    return (int(above[pos - 1]) if pos > 0 else 0,
            map_bits(lambda b: b[(b >> KEY_SHIFT) == bucket]))


def kth_of(vals: np.ndarray, r: int):
    """The r-th largest of an array (1 <= r <= size), by selection: repeated values (the
    rule for real weights, on which ``numpy.partition`` is very slow) are counted."""
    if vals.size <= 1 << 15:
        return np.partition(vals, vals.size - r)[vals.size - r]
    uniq, counts = np.unique(vals, return_counts=True)
    at = int(np.searchsorted(np.cumsum(counts[::-1]), r))
    return uniq[uniq.size - 1 - at]


def exact_kth_largest(chunks: Callable[[], Iterable[np.ndarray]], k: int
                      ) -> tuple[float, int]:
    """The k-th largest magnitude over all the arrays `chunks()` yields (called twice,
    see :func:`bucket_pass`), and how many magnitudes are strictly larger. Memory: one
    chunk plus the bucket."""
    above, inside = bucket_pass(lambda fn: [fn(magnitude_bits(a)) for a in chunks()], k)
    vals = np.concatenate(inside)
    kth = kth_of(vals, k - above)
    larger = above + int(np.count_nonzero(vals > kth))
    return float(np.array([kth], dtype=np.uint32).view(np.float32)[0]), larger


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
