"""SCE (FuseChat): select the entries that vary most across the inputs, weight each input
by its energy, erase minority signs."""

from __future__ import annotations

from .consensus import disjoint
from .linear import LAMBDA
from .spec import Method, Param, keep_count


def _sce(ops, xs, p, seed):
    """``k = keep_count(select_topk, n)`` entries with the largest variance across the
    inputs are kept in every input (ties by the top-k order; a lone input has zero variance
    everywhere, so its first k entries by index are kept); ``omega_i = mean(tau_i'^2)``
    normalized to sum 1 (all zero: the result is 0); sign election on the plain sum;
    ``sum_{agree} omega_i tau_i' / sum_{agree} omega_i``; times lambda."""
    n = ops.size(xs[0])
    k = keep_count(p.select_topk, n)
    taus = list(xs)
    if k < n:
        acc = xs[0]
        for x in xs[1:]:
            acc = ops.add(acc, x)
        mean = ops.div(acc, float(len(xs)))
        var = ops.zeros_like(xs[0])
        for x in xs:
            dev = ops.sub(x, mean)
            var = ops.add(var, ops.mul(dev, dev))
        mask = ops.topk_mask(var, k)
        taus = [ops.keep(x, mask) for x in xs]
    energy = [ops.sum64(ops.mul(t, t)) / max(n, 1) for t in taus]
    total = sum(energy)
    if total == 0.0:
        return ops.zeros_like(xs[0])
    omega = [e / total for e in energy]
    merged = disjoint(ops, taus, omega, "mass", False, True, "sce")
    return ops.mul(merged, p.lambda_) if p.lambda_ != 1.0 else merged


METHODS = (
    Method(
        "sce", "Select by variance, calculate weights, erase minority signs (SCE).",
        "keep the select_topk fraction of entries with the largest variance across inputs; "
        "TIES sign mask; w_i = mean(tau_i^2) / sum_j mean(tau_j^2); "
        "base + sum w_i m_i tau_i / sum w_i m_i",
        (Param("select_topk", "number", 1.0, "fraction of entries kept by variance",
               min=0.0, max=1.0, min_open=True), LAMBDA),
        _sce, base="delta", min_inputs=1,
        references=("Wan et al. 2024, FuseChat, arXiv:2408.07990",),
    ),
)
