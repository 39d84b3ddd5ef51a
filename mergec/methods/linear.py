"""Linear methods: weighted averages, task arithmetic and passthrough.

Each is a linear combination of its inputs with coefficients known from the parameters
alone (``Traits.coeffs``), so the IR passes fold them into weighted sums and the runtime
never calls ``compute`` for them once the parameters are numbers; ``compute`` is the same
weighted sum, for a direct call.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .spec import REQUIRED, Method, Param, Traits, sum_of_weights

WEIGHT = Param("weight", "number", 1.0, "weight of each input", per_input=True)
LAMBDA = Param("lambda", "number", 1.0, "scale of the merged task vector")
NORMALIZE = Param("normalize", "bool", True, "divide by the sum of the weights")
NO_NORMALIZE = Param("normalize", "bool", False, "divide by the sum of the weights")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def weights_of(params: Mapping[str, Any], n: int) -> list[float] | None:
    """The per-input weights as floats, None while they are not plain numbers."""
    w = params["weight"]
    if _number(w):
        w = (w,) * n
    if not isinstance(w, tuple) or not all(_number(x) for x in w):
        return None
    return [float(x) for x in w]


def _sum_coeffs(method: str, scaled: bool):
    def coeffs(params: Mapping[str, Any], n: int) -> tuple[float, ...] | None:
        w = weights_of(params, n)
        if w is None:
            return None
        if params.get("normalize"):
            total = sum(w)
            if total == 0:
                raise ValueError(f"the weights of `{method}` sum to 0, so they cannot be "
                                 "normalized")
            w = [x / total for x in w]
        if scaled:
            if not _number(params["lambda"]):
                return None
            lam = float(params["lambda"])
            w = [lam * x for x in w]
        return tuple(w)
    return coeffs


def _passthrough_coeffs(params: Mapping[str, Any], n: int) -> tuple[float, ...] | None:
    return (float(params["scale"]),) if _number(params["scale"]) else None


def combine(ops, xs, weights, normalize: bool, scale: float, method: str):
    """``scale * sum_i w_i x_i`` (``/ sum_i w_i`` when normalize): the last step of every
    method that ends in a weighted sum."""
    total = sum_of_weights(weights, method) if normalize else 1.0
    return ops.wsum([(x, scale * w / total) for x, w in zip(xs, weights)])


def _linear(ops, xs, p, seed):
    return combine(ops, xs, p.weight, p.normalize, 1.0, "linear")


def _task_arithmetic(ops, xs, p, seed):
    return combine(ops, xs, p.weight, p.normalize, p.lambda_, "task_arithmetic")


def _passthrough(ops, xs, p, seed):
    return ops.mul(xs[0], p.scale) if p.scale != 1.0 else ops.copy(xs[0])


def _entries(params, ndim) -> str:
    return "entries"


METHODS = (
    Method(
        "linear", "Weighted average of the inputs (model soups).",
        "sum_i w_i x_i, divided by sum_i w_i when normalize",
        (WEIGHT, NORMALIZE), _linear, base="none", min_inputs=1,
        references=("Wortsman et al. 2022, Model soups, arXiv:2203.05482",),
        traits=Traits(coeffs=_sum_coeffs("linear", False), split=_entries),
    ),
    Method(
        "task_arithmetic", "Add weighted task vectors to the base.",
        "base + lambda * sum_i w_i tau_i",
        (WEIGHT, LAMBDA, NO_NORMALIZE), _task_arithmetic, base="delta", min_inputs=1,
        references=("Ilharco et al. 2023, Editing models with task arithmetic, arXiv:2212.04089",),
        traits=Traits(coeffs=_sum_coeffs("task_arithmetic", True), split=_entries),
    ),
    Method(
        "passthrough", "One input unchanged, optionally scaled.",
        "scale * x",
        (Param("scale", "number", 1.0, "factor applied to the input"),), _passthrough,
        base="none", min_inputs=1, max_inputs=1,
        traits=Traits(coeffs=_passthrough_coeffs, split=_entries),
    ),
)

__all__ = ["METHODS", "WEIGHT", "LAMBDA", "NORMALIZE", "NO_NORMALIZE", "REQUIRED", "combine",
           "weights_of"]
