"""DELLA: drop entries at random with a keep probability that grows with their magnitude
rank, then the TIES election and disjoint merge (della) or a weighted sum (della_linear)."""

from __future__ import annotations

from mergec.lazy import lazy_module

from .consensus import DENSITY, ELECT, RESCALE, WEIGHTED_ELECT, consensus, rescale
from .linear import LAMBDA, NO_NORMALIZE, NORMALIZE, WEIGHT, combine
from .spec import Method, Param, Traits, need_seed, rows_shape

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


def keeps_all(density: float, epsilon: float, shape: tuple[int, ...]) -> bool:
    """Whether an input of this shape is kept as it is (no draw): it is empty, or its keep
    probability is 1 everywhere."""
    rows, n = rows_shape(shape)
    offset, step = della_line(density, epsilon, n)
    return rows * n == 0 or (offset >= 1.0 and step == 0.0)


def ranked_keep(ops, xr, u, density: float, epsilon: float) -> tuple:
    """(keep mask, keep probability) of a task vector in its per-row view ``xr`` (rows,
    row length), with ``u`` its uniform numbers in the same view: per row, ``r`` =
    ascending magnitude rank (0 smallest; equal magnitudes: the lower index ranks higher);
    ``p = min(offset + step r, 1)``; kept where ``u < p``. Each row on its own, so a block
    of whole rows gets the rows of the whole tensor's result."""
    offset, step = della_line(density, epsilon, ops.shape(xr)[-1])
    r = ops.rank_ascending(ops.abs(xr))
    prob = ops.minimum(ops.add(ops.mul(r, float(step)), float(offset)), 1.0)
    return ops.lt(u, prob), prob


def dropped(ops, xs, p, seed, method: str) -> list:
    """Each task vector with the entries of :func:`ranked_keep` kept, drawn with
    ``uniform(seed, i)``, rescaled (inverse: by ``1 / p``). For a tensor computed in
    blocks of rows the runtime passes the block's masks (``p.masks``, and the keep
    probabilities ``p.keep_probs`` for an inverse rescale) and, for an l1 rescale, the
    whole tensor's L1 ratios (``p.l1_scales``)."""
    out = []
    for i, (x, d, e) in enumerate(zip(xs, p.density, p.epsilon)):
        shape = ops.shape(x)
        if keeps_all(d, e, shape):  # p = 1 everywhere
            out.append(x)
            continue
        rows, n = rows_shape(shape)
        xr = ops.reshape(x, (rows, n))
        if p.masks is not None:
            keep = ops.reshape(ops.host(p.masks[i]), (rows, n))
            prob = (None if p.keep_probs is None else
                    ops.reshape(ops.host(p.keep_probs[i]), (rows, n)))
        else:
            u = ops.reshape(ops.uniform(need_seed(method, seed), i, shape), (rows, n))
            keep, prob = ranked_keep(ops, xr, u, d, e)
        kept = ops.keep(xr, keep)
        if p.rescale == "l1" and p.l1_scales is not None:
            s = p.l1_scales[i]
            res = ops.mul(kept, s) if s else ops.zeros_like(kept)
        else:
            if p.masks is not None and (p.rescale == "l1" or
                                        (p.rescale == "inverse" and prob is None)):
                raise ValueError(f"method {method}: with given masks, rescale="
                                 f"{p.rescale!r} needs the whole tensor's "
                                 + ("L1 ratios" if p.rescale == "l1" else "keep probabilities"))
            safe_p = ops.where(keep, prob, 1.0) if p.rescale == "inverse" else None
            res = rescale(ops, kept, xr, p.rescale, safe_p, method)
        out.append(ops.reshape(res, shape))
    return out


def _della(ops, xs, p, seed):
    return consensus(ops, dropped(ops, xs, p, seed, "della"), p, "della")


def _della_linear(ops, xs, p, seed):
    taus = dropped(ops, xs, p, seed, "della_linear")
    return combine(ops, taus, p.weight, p.normalize, p.lambda_, "della_linear")


def _l1(params) -> bool:
    return params.get("rescale") == "l1"


#: per row, so a block of whole rows: the runtime makes each block's masks (and keep
#: probabilities) with :func:`ranked_keep`; an l1 rescale first needs a pass for the norms
_TRAITS = Traits(split=lambda params, ndim: "masks", masks="ranked", l1_rescale=_l1)

METHODS = (
    Method(
        "della", "Magnitude-ranked random drop (DELLA), then TIES sign election and disjoint merge.",
        "per row, rank r of |tau| (0 smallest); p = density - epsilon + 2 epsilon r/(n-1); "
        "keep with probability p, rescale by 1/p; TIES elect + disjoint mean; base + lambda * merged",
        (WEIGHT, DENSITY, EPSILON, LAMBDA, NORMALIZE, RESCALE, ELECT, WEIGHTED_ELECT),
        _della, base="delta", min_inputs=1, random=True,
        references=("Deep et al. 2024, DELLA-Merging, arXiv:2406.11617",),
        traits=_TRAITS,
    ),
    Method(
        "della_linear", "Magnitude-ranked random drop (DELLA), then a weighted sum.",
        "DELLA masks and rescale; base + lambda * sum w_i tau_i'",
        (WEIGHT, DENSITY, EPSILON, LAMBDA, RESCALE, NO_NORMALIZE),
        _della_linear, base="delta", min_inputs=1, random=True,
        references=("Deep et al. 2024, arXiv:2406.11617",),
        traits=_TRAITS,
    ),
)
