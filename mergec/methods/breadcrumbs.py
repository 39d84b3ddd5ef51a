"""Model Breadcrumbs: drop the largest and the smallest entries of each task vector."""

from __future__ import annotations

from .consensus import DENSITY, ELECT, WEIGHTED_ELECT, consensus
from .linear import LAMBDA, NO_NORMALIZE, NORMALIZE, WEIGHT, combine
from .spec import COUNTS, Method, Param, Traits, count_of

GAMMA = Param("gamma", "number", 0.01, "fraction of largest entries dropped",
              per_input=True, min=0.0, max=1.0, max_open=True)
COUNT = Param("count", "string", "round",
              "entries of n: round_half_up(fraction * n), kept at least 1; or int(fraction * n) "
              "as mergekit counts (floor), which keeps none when that is 0", choices=COUNTS)


def breadcrumbs_counts(density: float, gamma: float, n: int,
                       count: str = "round") -> tuple[int, int]:
    """(top, kept) for breadcrumbs on ``n`` entries.

    ``top = count_of(gamma, n)`` largest entries are dropped (at most ``n - 1``, so a tensor is
    never dropped whole); then ``kept = count_of(density, n)`` entries (at least 1, at most
    ``n - top``) just below them are kept; the remaining smallest are dropped. When ``top``
    rounds to 0 nothing is dropped at the top. density = 1, gamma = 0 keeps everything.
    With ``count="floor"`` both counts are ``int(fraction * n)`` and ``kept`` may be 0.
    """
    if n <= 0:
        return 0, 0
    top = min(count_of(gamma, n, count), n - 1)
    least = 0 if count == "floor" else 1
    kept = min(max(least, count_of(density, n, count)) if density < 1.0 else n, n - top)
    return top, kept


def band(p, n: int) -> list[tuple[int, int]]:
    """(top, kept) of :func:`breadcrumbs_counts` per input of a call on ``n`` entries."""
    return [breadcrumbs_counts(d, g, n, p.count) for d, g in zip(p.density, p.gamma)]


def trimmed(ops, xs, p) -> list:
    """Per tensor, in the top-k order (magnitude, ties by lower flat index), the entries at
    positions ``[top, top + kept)`` of :func:`breadcrumbs_counts`: the top-(top + kept) mask
    less the top-(top) mask. For a block of rows the runtime passes the block's rows of the
    whole tensor's masks instead."""
    if p.masks is not None:
        return [ops.keep(x, ops.host(m)) for x, m in zip(xs, p.masks)]
    out = []
    for x, d, g in zip(xs, p.density, p.gamma):
        top, kept = breadcrumbs_counts(d, g, ops.size(x), p.count)
        mag = ops.abs(x)
        mask = ops.topk_mask(mag, top + kept)
        if top:
            mask = ops.and_(mask, ops.not_(ops.topk_mask(mag, top)))
        out.append(ops.keep(x, mask))
    return out


def _breadcrumbs(ops, xs, p, seed):
    return combine(ops, trimmed(ops, xs, p), p.weight, p.normalize, p.lambda_, "breadcrumbs")


def _breadcrumbs_ties(ops, xs, p, seed):
    return consensus(ops, trimmed(ops, xs, p), p, "breadcrumbs_ties")


_TRAITS = Traits(split=lambda params, ndim: "masks", masks="band", band=band)

METHODS = (
    Method(
        "breadcrumbs", "Drop the largest gamma and smallest entries, then a weighted sum.",
        "per tensor keep entries ranked (by magnitude) below the top gamma fraction and above "
        "the bottom 1 - density - gamma fraction; base + lambda * sum w_i tau_i'",
        (WEIGHT, DENSITY, GAMMA, LAMBDA, NO_NORMALIZE, COUNT),
        _breadcrumbs, base="delta", min_inputs=1,
        references=("Davari & Belilovsky 2024, Model Breadcrumbs, arXiv:2312.06795",),
        traits=_TRAITS,
    ),
    Method(
        "breadcrumbs_ties", "Breadcrumbs sparsification, then TIES sign election and disjoint merge.",
        "breadcrumbs masks; TIES elect + disjoint mean; base + lambda * merged",
        (WEIGHT, DENSITY, GAMMA, LAMBDA, NORMALIZE, ELECT, WEIGHTED_ELECT, COUNT),
        _breadcrumbs_ties, base="delta", min_inputs=1,
        references=("Davari & Belilovsky 2024, arXiv:2312.06795", "Yadav et al. 2023"),
        traits=_TRAITS,
    ),
)
