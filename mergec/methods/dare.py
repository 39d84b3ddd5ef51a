"""DARE: drop entries of each task vector at random and rescale the rest, then a weighted
sum (dare_linear) or the TIES election and disjoint merge (dare_ties)."""

from __future__ import annotations

from .consensus import DENSITY, ELECT, RESCALE, WEIGHTED_ELECT, consensus, f32, rescale
from .linear import LAMBDA, NO_NORMALIZE, NORMALIZE, WEIGHT, combine
from .spec import Method, Traits, need_seed


def dropped(ops, xs, p, seed, method: str) -> list:
    """Each task vector with its entries kept where ``uniform(seed, i) < float32(density_i)``
    (:func:`mergec.ops.random.keep_mask`), rescaled; density 1 keeps an input as it is
    (no draw). For a block of rows the runtime passes the block's rows of the masks, and
    for an l1 rescale the whole tensor's L1 ratios."""
    out = []
    for i, (x, d) in enumerate(zip(xs, p.density)):
        if d >= 1.0:
            out.append(x)
            continue
        mask = (ops.host(p.masks[i]) if p.masks is not None else
                ops.keep_mask(need_seed(method, seed), i, ops.shape(x), d))
        kept = ops.keep(x, mask)
        if p.rescale == "l1" and p.l1_scales is not None:
            s = p.l1_scales[i]
            out.append(ops.mul(kept, s) if s else ops.zeros_like(kept))
            continue
        out.append(rescale(ops, kept, x, p.rescale, f32(d), method))
    return out


def _dare_linear(ops, xs, p, seed):
    taus = dropped(ops, xs, p, seed, "dare_linear")
    return combine(ops, taus, p.weight, p.normalize, p.lambda_, "dare_linear")


def _dare_ties(ops, xs, p, seed):
    return consensus(ops, dropped(ops, xs, p, seed, "dare_ties"), p, "dare_ties")


def _l1(params) -> bool:
    return params.get("rescale") == "l1"


_TRAITS = Traits(split=lambda params, ndim: "masks", masks="bernoulli", l1_rescale=_l1)

METHODS = (
    Method(
        "dare_linear", "Random drop and rescale (DARE), then a weighted sum.",
        "m_i ~ Bernoulli(density); tau_i' = m_i tau_i rescaled; base + lambda * sum w_i tau_i'",
        (WEIGHT, DENSITY, LAMBDA, RESCALE, NO_NORMALIZE),
        _dare_linear, base="delta", min_inputs=1, random=True,
        references=("Yu et al. 2024, Language models are Super Mario, arXiv:2311.03099",),
        traits=_TRAITS,
    ),
    Method(
        "dare_ties", "Random drop and rescale (DARE), then TIES sign election and disjoint merge.",
        "m_i ~ Bernoulli(density); tau_i' = m_i tau_i rescaled; TIES elect + disjoint mean; "
        "base + lambda * merged",
        (WEIGHT, DENSITY, LAMBDA, NORMALIZE, RESCALE, ELECT, WEIGHTED_ELECT),
        _dare_ties, base="delta", min_inputs=1, random=True,
        references=("Yu et al. 2024, arXiv:2311.03099", "Yadav et al. 2023, arXiv:2306.01708"),
        traits=_TRAITS,
    ),
)
