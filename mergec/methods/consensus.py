"""What the sparsify-then-agree methods share: parameters, rescaling and the TIES sign
election with its disjoint merge (ties, dare_ties, breadcrumbs_ties, della, sce)."""

from __future__ import annotations

from mergec.lazy import lazy_module

from .spec import Param

np = lazy_module("numpy")  # numpy loads when a method runs, not when it is declared

DENSITY = Param("density", "number", 1.0, "fraction of entries kept", per_input=True,
                min=0.0, max=1.0, min_open=True)
RESCALE = Param("rescale", "string", "inverse",
                "how kept entries are rescaled: 1/density (inverse) or to the input's L1 norm (l1)",
                choices=("inverse", "l1", "none"))
ELECT = Param("elect", "string", "mass",
              "sign election: sign of the summed values (mass) or majority of signs (count)",
              choices=("mass", "count"))
WEIGHTED_ELECT = Param("weighted_elect", "bool", False,
                       "elect the sign on weight-scaled task vectors")


def f32(x: float) -> float:
    """A number rounded to float32 (as the float32 arithmetic of every backend sees it)."""
    return float(np.float32(x))


def rescale(ops, kept, orig, mode: str, inverse_of, method: str):
    """A sparsified task vector rescaled: ``kept / p`` (inverse; ``p`` the keep
    probability, a number or an array), ``kept * |orig|_1 / |kept|_1`` (l1; 0 if nothing
    is kept) or as it is (none)."""
    if mode == "inverse":
        return ops.div(kept, inverse_of)
    if mode == "l1":
        s_kept = ops.abs_sum64(kept)
        if s_kept == 0.0:
            return ops.zeros_like(kept)
        return ops.mul(kept, float(ops.abs_sum64(orig) / s_kept))
    if mode == "none":
        return kept
    raise ValueError(f"method {method}: unknown rescale {mode!r}")


def disjoint(ops, taus, weights, elect: str, weighted_elect: bool, normalize: bool,
             method: str):
    """TIES sign election and disjoint merge.

    ``gamma = sign(sum_i c_i tau_i)`` with ``c_i = w_i`` if weighted_elect else 1
    (elect="mass"), or ``sign(sum_i sign(tau_i))`` (elect="count"); the vote is summed in
    float64 (products of float32 values and float32 weights are exact there). Input i
    agrees where ``tau_i != 0`` and ``sign(tau_i) == gamma != 0``. normalize:
    ``sum_{agree} w_i tau_i / sum_{agree} w_i``, 0 where that sum is 0 (or nothing
    agrees); otherwise ``sum_{agree} w_i tau_i``.

    A backend may provide ``disjoint_merge`` with these exact numbers, faster
    (tests/test_methods_units.py holds it to this code, bit for bit)."""
    if elect not in ("mass", "count"):
        raise ValueError(f"method {method}: unknown elect {elect!r}")
    fused = getattr(ops, "disjoint_merge", None)
    if fused is not None:
        return fused(taus, weights, elect, weighted_elect, normalize)
    vote = None
    for tau, w in zip(taus, weights):
        if elect == "mass":
            term = ops.to_float64(tau)
            if weighted_elect:
                term = ops.mul(term, f32(w))
        else:
            term = ops.to_float64(ops.sign(tau))
        vote = term if vote is None else ops.add(vote, term)
    pos, neg = ops.gt(vote, 0.0), ops.lt(vote, 0.0)
    del vote
    num = ops.zeros_like(taus[0])
    den = ops.zeros_like(taus[0])
    for tau, w in zip(taus, weights):
        w32 = f32(w)
        agree = ops.or_(ops.and_(ops.gt(tau, 0.0), pos), ops.and_(ops.lt(tau, 0.0), neg))
        num = ops.add(num, ops.keep(ops.mul(tau, w32), agree))
        den = ops.add(den, ops.where(agree, w32, 0.0))
    if not normalize:
        return num
    ok = ops.ne(den, 0.0)
    return ops.keep(ops.div(num, ops.where(ok, den, 1.0)), ok)


def consensus(ops, taus, p, method: str):
    """The disjoint merge of ``taus`` with the call's weights and election, times lambda."""
    merged = disjoint(ops, taus, p.weight, p.elect, p.weighted_elect, p.normalize, method)
    return ops.mul(merged, p.lambda_) if p.lambda_ != 1.0 else merged
