"""TIES-Merging: trim each task vector to its largest entries, elect a sign, merge the
entries that agree with it."""

from __future__ import annotations

from .consensus import ELECT, WEIGHTED_ELECT, consensus, f32
from .linear import LAMBDA, NORMALIZE, WEIGHT
from .spec import COUNTS, Method, Param, Traits, keep_count

TRIM = Param("trim", "string", "tensor",
             "where the top-k threshold is taken: per tensor or over the whole model",
             choices=("tensor", "model"))
COUNT = Param("count", "string", "round",
              "entries kept of n: round_half_up(density * n), or int(density * n) as "
              "mergekit counts (floor); at least 1 either way", choices=COUNTS)


def _check(params, n: int) -> str | None:
    if params.get("count") == "floor" and params.get("trim") == "model":
        return 'count="floor" counts per tensor: it cannot be used with trim="model"'
    return None


def _ties(ops, xs, p, seed):
    """Trim: per tensor, the top-k by magnitude with ``k = keep_count(density_i, n)``
    (ties by lower flat index); per model, ``|tau_i| >= thresholds_i``, the magnitudes the
    runtime computed over the whole model. For a block of rows the runtime passes the
    block's rows of the whole tensor's masks instead."""
    if p.masks is not None:
        taus = [ops.keep(x, ops.host(m)) for x, m in zip(xs, p.masks)]
    elif p.trim == "tensor":
        taus = [ops.keep(x, ops.topk_mask(ops.abs(x), keep_count(d, ops.size(x), p.count)))
                for x, d in zip(xs, p.density)]
    elif p.trim == "model":
        if p.thresholds is None:
            raise ValueError("method ties with trim=\"model\" needs the per-input parameter "
                             "'thresholds' (magnitudes computed over the whole model)")
        taus = [ops.keep(x, ops.ge(ops.abs(x), f32(t))) for x, t in zip(xs, p.thresholds)]
    else:
        raise ValueError(f"method ties: unknown trim {p.trim!r}")
    return consensus(ops, taus, p, "ties")


METHODS = (
    Method(
        "ties", "Trim, elect sign, disjoint merge (TIES-Merging).",
        "trim each tau_i to its top density fraction by magnitude; gamma = sign(sum tau_i) "
        "(mass) or sign(sum sign tau_i) (count); merged = sum_{i agrees} w_i tau_i / "
        "sum_{i agrees} w_i; base + lambda * merged",
        (WEIGHT, Param("density", "number", 0.2, "fraction of entries kept per input",
                       per_input=True, min=0.0, max=1.0, min_open=True),
         LAMBDA, NORMALIZE, ELECT, WEIGHTED_ELECT, TRIM, COUNT),
        _ties, base="delta", min_inputs=1, check=_check,
        references=("Yadav et al. 2023, TIES-Merging, arXiv:2306.01708",),
        traits=Traits(split=lambda params, ndim: "masks", masks="topk"),
    ),
)
