"""Fisher merging: a weighted average of the inputs, entry by entry, weighted by each
model's diagonal Fisher information.

Matena & Raffel, "Merging Models with Fisher-Weighted Averaging", NeurIPS 2022. For each
parameter entry, with F_i the diagonal Fisher of input i (from its statistics folder,
``kind: "fisher"``, see docs/stats.md) and w_i the input's weight:

    merged = sum_i w_i (F_i + eps) x_i / sum_i w_i (F_i + eps)

``eps`` keeps the division defined where every Fisher is 0 (there the result is the
weighted average of the inputs) and is the floor of the authors' code. Computed in
float64, rounded once to float32. Tensors without statistics are what `fallback=` says.
"""

from __future__ import annotations

from .spec import Method, Param, Traits

EPS = Param("eps", "number", 1e-8, "added to every Fisher value (the floor where all are 0)",
            min=0.0, min_open=True, rampable=False)
FISHER_WEIGHT = Param("weight", "number", 1.0, "weight of each input (its Fisher is scaled "
                      "by it)", per_input=True, min=0.0)


def _fisher(ops, xs, p, seed):
    n = len(xs) // 2
    num = den = None
    for x, f, w in zip(xs[:n], xs[n:], p.weight):
        scaled = ops.mul(ops.add(ops.to_float64(f), p.eps), w)
        term = ops.mul(scaled, ops.to_float64(x))
        num = term if num is None else ops.add(num, term)
        den = scaled if den is None else ops.add(den, scaled)
    return ops.to_float32(ops.div(num, den))


METHODS = (
    Method(
        "fisher", "Fisher-weighted average: each entry weighted by each model's diagonal "
        "Fisher information (needs statistics).",
        "sum_i w_i (F_i + eps) x_i / sum_i w_i (F_i + eps), F_i from stats=[...]; "
        "tensors without statistics: fallback",
        (FISHER_WEIGHT, EPS), _fisher, base="none", min_inputs=2,
        references=("Matena & Raffel 2022, Merging Models with Fisher-Weighted Averaging, "
                    "arXiv:2111.09832",),
        notes="Takes `stats=[f1, f2, ...]`, one `stats` folder of kind \"fisher\" per input "
              "(`mergec stats MODEL --kind fisher`), and `fallback=` (a Model) for the "
              "tensors the statistics do not cover; see docs/stats.md.",
        family="data",
        stats="fisher",
        stats_shape=lambda shape: tuple(shape),
        traits=Traits(split=lambda params, ndim: "entries", normalizes=lambda params: True),
    ),
)

__all__ = ["METHODS"]
