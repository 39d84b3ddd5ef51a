"""Nearswap: take the input where it is close to the base, the base elsewhere."""

from __future__ import annotations

from .consensus import f32
from .spec import REQUIRED, Method, Param, Traits

#: smallest distance nearswap divides by
NEARSWAP_FLOOR = 1e-6


def _nearswap(ops, xs, p, seed):
    """``w = clip(t / max(|tau|, 1e-6), 0, 1)``; ``w * tau`` (float32 throughout)."""
    tau = xs[0]
    w = ops.clip(ops.div(f32(p.t), ops.maximum(ops.abs(tau), f32(NEARSWAP_FLOOR))), 0.0, 1.0)
    return ops.mul(w, tau)


METHODS = (
    Method(
        "nearswap", "Take the input where it is close to the base, the base elsewhere.",
        "w = clamp(t / max(|tau|, 1e-6), 0, 1); base + w * tau",
        (Param("t", "number", REQUIRED, "distance below which the input is taken", min=0.0,
               min_open=True),),
        _nearswap, base="delta", min_inputs=1, max_inputs=1,
        references=("Gauthier-Caron 2024, nearswap",),
        traits=Traits(split=lambda params, ndim: "entries"),
    ),
)
