"""Spherical methods: slerp, nuslerp, multislerp and the Karcher mean.

Each is a weighted sum of its inputs whose coefficients come from the inputs' inner
products only: the backend forms the small Gram matrix (float64 sums, the same wherever a
tensor is split: :func:`mergec.backends.base.total`) and the functions below turn it into
coefficients, in float64 numpy. nuslerp without ``flatten`` works per row (or column)
instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mergec.lazy import lazy_module

from .linear import WEIGHT
from .spec import REQUIRED, Method, Param, Traits, sum_of_weights

np = lazy_module("numpy")  # numpy loads when a method runs, not when it is declared

#: |cos| above which slerp falls back to linear interpolation
SLERP_DOT_THRESHOLD = 0.9995
#: norms at or below this count as zero where a method has no epsilon parameter (karcher)
ZERO_NORM = 1e-8
#: a spherical mean direction shorter than this (relative to the summed |weights|) is undefined
MEAN_DIRECTION_FLOOR = 1e-6
#: a log map at an angle within this of pi has no defined direction and contributes nothing
ANTIPODAL = 1e-6

EPSILON = Param("epsilon", "number", 1e-8, "norms below this count as zero", min=0.0)


def slerp_coefficients(g00: Any, g11: Any, g01: Any, t: float, epsilon: float,
                       threshold: float = SLERP_DOT_THRESHOLD
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(c0, c1) with ``slerp(v0, v1, t) = c0 v0 + c1 v1``, elementwise over arrays of rows.

    ``g00 = |v0|^2``, ``g11 = |v1|^2``, ``g01 = <v0, v1>``. Linear interpolation
    ``(1 - t, t)`` is used when a norm is below ``epsilon`` (or zero) or when
    ``|cos| > threshold`` (0.9995; parallel and antiparallel vectors alike) or
    ``1 - cos^2 <= 1e-16`` (so no NaN, whatever the threshold); otherwise
    ``sin((1 - t) W) / sin W`` and ``sin(t W) / sin W`` with ``W = arccos cos``.
    """
    g00 = np.atleast_1d(np.asarray(g00, dtype=np.float64))
    g11 = np.atleast_1d(np.asarray(g11, dtype=np.float64))
    g01 = np.atleast_1d(np.asarray(g01, dtype=np.float64))
    n0 = np.sqrt(np.maximum(g00, 0.0))
    n1 = np.sqrt(np.maximum(g11, 0.0))
    small = (n0 < epsilon) | (n0 == 0) | (n1 < epsilon) | (n1 == 0)
    denom = np.where(small, 1.0, n0 * n1)
    cos = np.clip(np.where(small, 1.0, g01 / denom), -1.0, 1.0)
    lerp = small | (np.abs(cos) > threshold) | (1.0 - cos * cos <= 1e-16) | ~np.isfinite(cos)
    omega = np.arccos(np.where(lerp, 0.0, cos))
    so = np.where(lerp, 1.0, np.sin(omega))
    c0 = np.where(lerp, 1.0 - t, np.sin((1.0 - t) * omega) / so)
    c1 = np.where(lerp, t, np.sin(t * omega) / so)
    return c0, c1


def spherical_mean_coefficients(gram: np.ndarray, weights: Sequence[float], zero_norm: float,
                                max_iter: int, tol: float, method: str) -> np.ndarray:
    """Coefficients ``gamma`` with ``result = sum_i gamma_i x_i`` for multislerp and karcher.

    ``gram[i, j] = <x_i, x_j>``. With ``n_i = |x_i|`` and unit directions ``u_i = x_i / n_i``:

    1. inputs with ``n_i <= zero_norm`` have no direction: they drop out of the direction
       computations (their norm, 0, still counts in the norm average);
    2. ``m = normalize(sum_i w_i u_i)`` over the inputs with a direction;
    3. up to ``max_iter`` times: ``v = sum_i w_i log_m(u_i) / sum_i w_i`` with
       ``log_m(u) = theta / sin(theta) (u - cos(theta) m)``, ``theta = arccos <m, u>``
       (an input at an angle within 1e-6 of pi from m has no defined log and contributes
       nothing); ``m = exp_m(v) = cos|v| m + sin|v| v / |v|``; stop once ``|v| < tol``;
    4. result ``m * sum_i w_i n_i / sum_i w_i``.

    multislerp is one step of this (``max_iter = 1``), karcher the iteration. Every vector is
    kept as coefficients over the inputs, so only inner products are needed. When no input
    has a direction, or the weighted sum of directions (nearly) vanishes so that the mean
    direction is undefined (e.g. two opposite vectors of equal weight), the result is the
    weighted linear mean ``sum_i w_i x_i / sum_i w_i``.
    """
    g = np.asarray(gram, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    total_w = sum_of_weights(list(weights), method)
    linear = w / total_w
    norms = np.sqrt(np.maximum(np.diag(g), 0.0))
    valid = norms > zero_norm
    wv = np.where(valid, w, 0.0)
    sw = wv.sum()
    if not valid.any() or sw == 0.0:
        return linear
    wn = wv / sw
    inv = np.where(valid, 1.0 / np.where(valid, norms, 1.0), 0.0)  # u_i = inv_i x_i

    def norm_of(c: np.ndarray) -> float:
        return math.sqrt(max(float(c @ g @ c), 0.0))

    alpha = wn * inv  # m = sum_j alpha_j x_j
    mnorm = norm_of(alpha)
    if mnorm <= MEAN_DIRECTION_FLOOR * float(np.abs(wn).sum()) or not np.isfinite(mnorm):
        return linear
    alpha = alpha / mnorm
    for _ in range(max_iter):
        cos = np.clip((g @ alpha) * inv, -1.0, 1.0)  # <m, u_i>
        theta = np.arccos(cos)
        sin = np.sin(theta)
        factor = np.where(theta < 1e-7, 1.0, theta / np.where(sin > 0, sin, 1.0))
        factor = np.where((np.pi - theta) < ANTIPODAL, 0.0, factor)
        a = np.where(valid, wn * factor, 0.0)
        beta = a * inv - float((a * cos).sum()) * alpha  # v = sum a_i (u_i - cos_i m)
        vnorm = norm_of(beta)
        if vnorm > 0.0:
            alpha = math.cos(vnorm) * alpha + (math.sin(vnorm) / vnorm) * beta
            alpha = alpha / norm_of(alpha)
        if vnorm < tol:
            break
    scale = float((w * norms).sum()) / total_w
    return alpha * scale


def nuslerp_t(weight: Sequence[float]) -> float:
    """nuslerp's interpolation factor ``w_2 / (w_1 + w_2)``; a zero sum is an error."""
    if weight[0] + weight[1] == 0.0:
        raise ValueError(f"method nuslerp: the two weights sum to 0 (weights {list(weight)})")
    return weight[1] / (weight[0] + weight[1])


def _pair(t: float, eps: float, gram: np.ndarray,
          threshold: float = SLERP_DOT_THRESHOLD) -> list[float]:
    c0, c1 = slerp_coefficients(gram[0, 0], gram[1, 1], gram[0, 1], t, eps, threshold)
    return [float(c0[0]), float(c1[0])]


def _slerp_gram(params: Mapping[str, Any], gram: np.ndarray) -> list[float]:
    return _pair(float(params["t"]), float(params["epsilon"]), gram)


def _nuslerp_gram(params: Mapping[str, Any], gram: np.ndarray) -> list[float]:
    w = _weights(params, 2)
    return _pair(nuslerp_t(w), float(params["epsilon"]), gram,
                 float(params.get("lerp_threshold", SLERP_DOT_THRESHOLD)))


def _weights(params: Mapping[str, Any], n: int) -> tuple[float, ...]:
    w = params["weight"]
    return tuple(float(x) for x in w) if isinstance(w, (tuple, list)) else (float(w),) * n


def _multislerp_gram(params: Mapping[str, Any], gram: np.ndarray) -> list[float]:
    n = gram.shape[0]
    coef = spherical_mean_coefficients(gram, _weights(params, n), float(params["epsilon"]),
                                       1, 0.0, "multislerp")
    return [float(c) for c in coef]


def _karcher_gram(params: Mapping[str, Any], gram: np.ndarray) -> list[float]:
    n = gram.shape[0]
    coef = spherical_mean_coefficients(gram, _weights(params, n), ZERO_NORM,
                                       int(params["max_iter"]), float(params["tol"]), "karcher")
    return [float(c) for c in coef]


def from_gram(ops, xs, coefficients: list[float]):
    """The weighted sum a gram method stands for."""
    return ops.wsum([(x, c) for x, c in zip(xs, coefficients)])


def _gram_compute(fn):
    def compute(ops, xs, p, seed):
        return from_gram(ops, xs, fn(p.raw(), ops.gram(xs)))
    return compute


def _nuslerp(ops, xs, p, seed):
    t = nuslerp_t(p.weight)
    a, b = xs
    if p.flatten or len(ops.shape(a)) < 2:
        return from_gram(ops, xs, _pair(t, p.epsilon, ops.gram(xs), p.lerp_threshold))
    if not p.row_wise:  # columns: the vectors along axis -2
        a, b = ops.swapaxes(a), ops.swapaxes(b)
    c0, c1 = slerp_coefficients(ops.row_dots(a, a), ops.row_dots(b, b), ops.row_dots(a, b),
                                t, p.epsilon, p.lerp_threshold)
    out = ops.add(ops.scale_rows(a, c0.astype(np.float32)),
                  ops.scale_rows(b, c1.astype(np.float32)))
    return ops.swapaxes(out) if not p.row_wise else out


def _always_gram(params, ndim) -> str:
    return "gram"


def _nuslerp_split(params, ndim) -> str:
    if params.get("flatten", True) or ndim < 2:
        return "gram"
    # per row; per column only when a block holds whole columns
    return "rows" if params.get("row_wise", False) or ndim >= 3 else "whole"


def _always(params) -> bool:
    """nuslerp, multislerp and karcher always divide by the sum of their weights."""
    return True


METHODS = (
    Method(
        "slerp", "Spherical linear interpolation of two inputs.",
        "v0, v1 flattened; d = cos angle of unit vectors; |d| > 0.9995: (1-t) v0 + t v1; "
        "else (sin((1-t) W) v0 + sin(t W) v1) / sin W with W = arccos d",
        (Param("t", "number", REQUIRED,
               "interpolation factor: 0 gives the first input, 1 the second", min=0.0, max=1.0),
         Param("epsilon", "number", 1e-8, "norms below this count as zero; lerp is used",
               min=0.0)),
        _gram_compute(_slerp_gram), base="none", min_inputs=2, max_inputs=2,
        references=("Shoemake 1985, Animating rotation with quaternion curves",),
        traits=Traits(split=_always_gram), gram_coefficients=_slerp_gram,
    ),
    Method(
        "nuslerp", "Slerp with the factor taken from two weights; on task vectors with base=.",
        "t = w_2 / (w_1 + w_2); slerp(x_1, x_2, t) over the whole tensor (flatten) or per row",
        (WEIGHT, Param("flatten", "bool", True, "treat the tensor as one vector"),
         Param("row_wise", "bool", False, "with flatten=false: rows (true) or columns (false)"),
         EPSILON,
         Param("lerp_threshold", "number", SLERP_DOT_THRESHOLD,
               "|cos| above which the inputs are interpolated linearly; 1: only exactly "
               "parallel inputs, as mergekit's nuslerp", min=0.0, max=1.0)),
        _nuslerp, base="delta", min_inputs=2, max_inputs=2, models_without_base=True,
        references=("Shoemake 1985",),
        notes="Without base= the inputs are interpolated as they are (Models or Deltas).",
        traits=Traits(split=_nuslerp_split, normalizes=_always),
        gram_coefficients=_nuslerp_gram,
    ),
    Method(
        "multislerp", "Weighted spherical mean of two or more inputs.",
        "unit directions u_i; mean direction m = normalize(sum w_i u_i); log map of each u_i at m, "
        "weighted tangent sum, exp map; times sum w_i |x_i| / sum w_i",
        (WEIGHT, EPSILON), _gram_compute(_multislerp_gram),
        base="delta", min_inputs=2, models_without_base=True,
        references=("Buss & Fillmore 2001, Spherical averages and applications",),
        notes="Without base= the inputs are averaged as they are (Models or Deltas).",
        traits=Traits(split=_always_gram, normalizes=_always),
        gram_coefficients=_multislerp_gram,
    ),
    Method(
        "karcher", "Riemannian (Karcher) mean of the unit directions, times the mean norm.",
        "iterate m <- exp_m(sum_i w_i log_m(u_i) / sum w_i) until the step < tol; result m * mean |x_i|",
        (WEIGHT, Param("max_iter", "int", 10, "iterations at most", min=1, max=10000),
         Param("tol", "number", 1e-5, "stop when the tangent step norm is below this", min=0.0,
               min_open=True)),
        _gram_compute(_karcher_gram), base="none", min_inputs=2,
        references=("Karcher 1977, Riemannian center of mass and mollifier smoothing",),
        traits=Traits(split=_always_gram, normalizes=_always),
        gram_coefficients=_karcher_gram,
    ),
)
