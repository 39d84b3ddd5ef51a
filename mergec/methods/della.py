"""DELLA: drop entries at random with a keep probability that grows with their magnitude
rank, then the TIES election and disjoint merge (della) or a weighted sum (della_linear)."""

from __future__ import annotations

from mergec.lazy import lazy_module

from .consensus import DENSITY, ELECT, RESCALE, WEIGHTED_ELECT, consensus, rescale
from .linear import LAMBDA, NO_NORMALIZE, NORMALIZE, WEIGHT, combine
from .spec import Method, Param, need_seed, rows_shape

np = lazy_module("numpy")  # numpy loads when a method runs, not when it is declared

EPSILON = Param("epsilon", "number", 0.15, "spread of keep probabilities",
                per_input=True, min=0.0, max=0.5)


def della_line(density: float, epsilon: float, n: int) -> tuple[np.float32, np.float32]:
    """(offset, step) of the keep probability ``p = offset + step * rank`` in float32:
    ``offset = density - epsilon``, ``step = 2 epsilon / (n - 1)``; for ``n = 1`` the
    probability is ``density``. Every backend evaluates ``offset + step * rank`` in
    float32 with one rounding per operation, so the masks are bit-identical."""
    if n <= 1:
        return np.float32(density), np.float32(0.0)
    return np.float32(density - epsilon), np.float32(2.0 * epsilon / (n - 1))


def dropped(ops, xs, p, seed, method: str) -> list:
    """Per row, ``r`` = ascending magnitude rank (0 smallest; equal magnitudes: the lower
    index ranks higher); ``p = min(offset + step r, 1)``; kept where
    ``uniform(seed, i) < p``; rescaled (inverse: by ``1 / p``)."""
    out = []
    for i, (x, d, e) in enumerate(zip(xs, p.density, p.epsilon)):
        shape = ops.shape(x)
        rows, n = rows_shape(shape)
        offset, step = della_line(d, e, n)
        if ops.size(x) == 0 or (offset >= 1.0 and step == 0.0):  # p = 1 everywhere
            out.append(x)
            continue
        u = ops.reshape(ops.uniform(need_seed(method, seed), i, shape), (rows, n))
        xr = ops.reshape(x, (rows, n))
        r = ops.rank_ascending(ops.abs(xr))
        prob = ops.minimum(ops.add(ops.mul(r, float(step)), float(offset)), 1.0)
        keep = ops.lt(u, prob)
        kept = ops.keep(xr, keep)
        safe_p = ops.where(keep, prob, 1.0)
        out.append(ops.reshape(rescale(ops, kept, xr, p.rescale, safe_p, method), shape))
    return out


def _della(ops, xs, p, seed):
    return consensus(ops, dropped(ops, xs, p, seed, "della"), p, "della")


def _della_linear(ops, xs, p, seed):
    taus = dropped(ops, xs, p, seed, "della_linear")
    return combine(ops, taus, p.weight, p.normalize, p.lambda_, "della_linear")


METHODS = (
    Method(
        "della", "Magnitude-ranked random drop (DELLA), then TIES sign election and disjoint merge.",
        "per row, rank r of |tau| (0 smallest); p = density - epsilon + 2 epsilon r/(n-1); "
        "keep with probability p, rescale by 1/p; TIES elect + disjoint mean; base + lambda * merged",
        (WEIGHT, DENSITY, EPSILON, LAMBDA, NORMALIZE, RESCALE, ELECT, WEIGHTED_ELECT),
        _della, base="delta", min_inputs=1, random=True,
        references=("Deep et al. 2024, DELLA-Merging, arXiv:2406.11617",),
    ),
    Method(
        "della_linear", "Magnitude-ranked random drop (DELLA), then a weighted sum.",
        "DELLA masks and rescale; base + lambda * sum w_i tau_i'",
        (WEIGHT, DENSITY, EPSILON, LAMBDA, RESCALE, NO_NORMALIZE),
        _della_linear, base="delta", min_inputs=1, random=True,
        references=("Deep et al. 2024, arXiv:2406.11617",),
    ),
)
