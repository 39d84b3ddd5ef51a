"""The kernel contract every mergec backend implements, and the rules they share.

A backend turns numpy arrays into its own array type ``T`` (``asarray``), runs per-tensor
kernels on them (``weighted_sum`` and ``method``) and hands the result back as a numpy array
of the storage dtype (``to_numpy``). The compiler never looks inside ``T``.

Contract
--------
* ``asarray(a)``: bf16/f16/f32/f64 numpy array -> backend array, float32 (all compute is in
  float32; reductions such as norms and dot products accumulate in float64).
* ``to_numpy(x, dtype)``: cast once to the storage dtype, rounding to nearest even. dtype is
  one of ``"float32"``, ``"float16"``, ``"bfloat16"`` (``ml_dtypes.bfloat16``), ``"float64"``.
  The array returned owns its memory (it never aliases an input of the kernel).
* ``weighted_sum(terms)``: ``sum_i c_i x_i``; the primitive for ``+``, ``-``, scaling and any
  linear combination in the IR.
* ``method(name, inputs, params, seed)``: one merge method of ``mergec.ops.registry`` on
  same-shaped inputs. ``params`` holds every parameter of the method under its registry name
  (``"lambda"`` included) with defaults filled in; a ``per_input`` parameter is a tuple of
  floats aligned with ``inputs``. ``seed`` is the per-tensor 64-bit seed for methods declared
  ``random=True`` (``None`` for the others). A method with ``base="delta"`` receives task
  vectors and returns the merged task vector with lambda applied (the compiler adds the
  base); ``base="none"`` methods receive the tensors as they are.

Shared rules (this module holds the ones that are plain Python, so every backend follows the
same numbers):

* Counting (:func:`count_of`): the number of entries a fraction ``f`` of ``n`` stands for is
  ``round_half_up(f * n)``, computed as ``floor(f * n + 0.5 + 1e-9)`` (the ``1e-9`` absorbs
  binary representation error, so ``0.35 * 10`` counts 4, and ``0.3 * 10`` counts exactly 3).
  A kept count of a top-k with a positive fraction is at least 1 (:func:`keep_count`), so a
  positive density never zeroes a whole tensor; ``f = 1`` keeps all ``n``.
* Top-k order: entries are ranked by magnitude, larger first; equal magnitudes are ranked by
  flat (row-major) index, lower index first. A top-k keeps exactly the first ``k`` of that
  order. It is computed with a selection (a k-th value) and a tie pass, never a full sort.
* "Per row" means over the last axis for tensors of two or more dimensions, and the whole
  tensor for 0-d and 1-D tensors.
* The spherical methods (slerp, nuslerp, multislerp, karcher) and model_stock need only the
  inner products of their inputs: the backend computes the small Gram matrix and the
  functions below turn it into the coefficients of a final weighted sum, in float64 numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import numpy as np

__all__ = [
    "Backend", "BackendUnavailable", "STORAGE_DTYPES", "storage_dtype",
    "count_of", "keep_count", "breadcrumbs_counts", "per_input", "scalar", "check_inputs",
    "sum_of_weights", "della_line", "rows_shape", "SLERP_DOT_THRESHOLD", "NEARSWAP_FLOOR",
    "ZERO_NORM", "slerp_coefficients", "spherical_mean_coefficients", "model_stock_ratio",
    "gram_partials", "abs_partials", "total", "gram64", "abs_sum64", "GRAM_METHODS",
    "uses_gram", "gram_coefficients", "keep",
]

T = TypeVar("T")

#: |cos| above which slerp falls back to linear interpolation
SLERP_DOT_THRESHOLD = 0.9995
#: smallest distance nearswap divides by
NEARSWAP_FLOOR = 1e-6
#: norms at or below this count as zero where a method has no epsilon parameter (karcher)
ZERO_NORM = 1e-8
#: a spherical mean direction shorter than this (relative to the summed |weights|) is undefined
_MEAN_DIRECTION_FLOOR = 1e-6
#: a log map at an angle within this of pi has no defined direction and contributes nothing
_ANTIPODAL = 1e-6


@runtime_checkable
class Backend(Protocol[T]):
    """What the executor needs from a backend (see the module docstring)."""

    name: str

    def asarray(self, a: np.ndarray) -> T: ...

    def to_numpy(self, x: T, dtype: str) -> np.ndarray: ...

    def weighted_sum(self, terms: Sequence[tuple[T, float]]) -> T: ...

    def method(self, name: str, inputs: Sequence[T], params: Mapping[str, Any],
               seed: int | None) -> T: ...

    def weighted_sum64(self, terms: Sequence[tuple[T, float]]) -> T:
        """sum c_i x_i accumulated in float64, returned as float64 (inputs float32 or
        float64): linear chains round once, wherever they are split."""
        ...

    def to_float32(self, x: T) -> T:
        """A float64 value rounded to float32 (a float32 value unchanged)."""
        ...

    def lowrank(self, b: T, a: T, scale: float, transpose: bool) -> T:
        """scale * (b @ a), transposed when `transpose`: the dense delta of a LoRA pair
        (b: [out, r], a: [r, in])."""
        ...

    def zeros(self, shape: tuple[int, ...]) -> T:
        """A float32 tensor of zeros (a delta that leaves a tensor unchanged)."""
        ...


def kernel_table(backend) -> dict:
    """Method name -> kernel: every registry method, found on the backend as `_<name>`
    (the registry declares the methods; a backend only implements them)."""
    from mergec.ops.registry import REGISTRY

    missing = [m for m in REGISTRY if not hasattr(backend, f"_{m}")]
    if missing:
        raise NotImplementedError(f"the {backend.name} backend has no kernel for "
                                  + ", ".join(missing))
    return {m: getattr(backend, f"_{m}") for m in REGISTRY}


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here (its library or device is missing)."""


STORAGE_DTYPES = ("float32", "float16", "bfloat16", "float64")


def storage_dtype(name: str) -> np.dtype:
    """numpy dtype of a canonical storage dtype name."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name in ("float32", "float16", "float64"):
        return np.dtype(name)
    raise ValueError(f"unknown storage dtype {name!r}; expected one of {', '.join(STORAGE_DTYPES)}")


# Counting ----------------------------------------------------------------------------------


def count_of(frac: float, n: int) -> int:
    """round_half_up(frac * n), clamped to [0, n]."""
    if n <= 0:
        return 0
    k = int(math.floor(float(frac) * n + 0.5 + 1e-9))
    return min(max(k, 0), n)


def keep_count(density: float, n: int) -> int:
    """Entries a top-k with ``density`` in (0, 1] keeps out of ``n``: count_of, at least 1."""
    if n <= 0:
        return 0
    if density >= 1.0:
        return n
    return max(1, count_of(density, n))


def breadcrumbs_counts(density: float, gamma: float, n: int) -> tuple[int, int]:
    """(top, kept) for breadcrumbs on ``n`` entries.

    ``top = count_of(gamma, n)`` largest entries are dropped (at most ``n - 1``, so a tensor is
    never dropped whole); then ``kept = count_of(density, n)`` entries (at least 1, at most
    ``n - top``) just below them are kept; the remaining smallest are dropped. When ``top``
    rounds to 0 nothing is dropped at the top. density = 1, gamma = 0 keeps everything.
    """
    if n <= 0:
        return 0, 0
    top = min(count_of(gamma, n), n - 1)
    kept = min(max(1, count_of(density, n)) if density < 1.0 else n, n - top)
    return top, kept


# Parameters --------------------------------------------------------------------------------


def per_input(params: Mapping[str, Any], key: str, n: int, method: str) -> tuple[float, ...]:
    """A per-input parameter as a tuple of n floats (a scalar is expanded)."""
    if key not in params:
        raise ValueError(f"method {method}: missing parameter {key!r}")
    v = params[key]
    if isinstance(v, (list, tuple, np.ndarray)):
        vals = tuple(float(x) for x in v)
        if len(vals) != n:
            raise ValueError(f"method {method}: parameter {key!r} has {len(vals)} values "
                             f"for {n} inputs")
        return vals
    return (float(v),) * n


def scalar(params: Mapping[str, Any], key: str, method: str) -> Any:
    if key not in params:
        raise ValueError(f"method {method}: missing parameter {key!r}")
    return params[key]


def check_inputs(method: str, shapes: Sequence[tuple[int, ...]], min_inputs: int = 1,
                 max_inputs: int | None = None) -> None:
    n = len(shapes)
    if n < min_inputs or (max_inputs is not None and n > max_inputs):
        want = (f"exactly {min_inputs}" if max_inputs == min_inputs
                else f"at least {min_inputs}" if max_inputs is None
                else f"{min_inputs} to {max_inputs}")
        raise ValueError(f"method {method} takes {want} inputs, got {n}")
    for s in shapes[1:]:
        if tuple(s) != tuple(shapes[0]):
            raise ValueError(f"method {method}: inputs have different shapes "
                             f"{tuple(shapes[0])} and {tuple(s)}")


def sum_of_weights(weights: Sequence[float], method: str) -> float:
    """Sum of the weights for normalization; a zero sum is an error."""
    total = math.fsum(weights)
    if total == 0.0:
        raise ValueError(f"method {method}: the weights sum to 0, so normalize=true cannot "
                         f"divide by them (weights {list(weights)})")
    return total


def della_line(density: float, epsilon: float, n: int) -> tuple[np.float32, np.float32]:
    """(offset, step) of the DELLA keep probability ``p = offset + step * rank`` in float32.

    ``offset = density - epsilon`` and ``step = 2 epsilon / (n - 1)``; for ``n = 1`` the
    probability is ``density`` (offset = density, step = 0). Both backends evaluate
    ``float32(offset) + float32(step) * float32(rank)`` with one rounding per operation, so the
    probabilities, and hence the masks, are bit-identical.
    """
    if n <= 1:
        return np.float32(density), np.float32(0.0)
    return np.float32(density - epsilon), np.float32(2.0 * epsilon / (n - 1))


def rows_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, row length) of the per-row view of a tensor of ``shape``."""
    if len(shape) <= 1:
        return 1, math.prod(shape)
    return math.prod(shape[:-1]), shape[-1]


# Spherical coefficients (float64 numpy on Gram matrices) -----------------------------------


def slerp_coefficients(g00: Any, g11: Any, g01: Any, t: float, epsilon: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(c0, c1) with ``slerp(v0, v1, t) = c0 v0 + c1 v1``, elementwise over arrays of rows.

    ``g00 = |v0|^2``, ``g11 = |v1|^2``, ``g01 = <v0, v1>``. Linear interpolation
    ``(1 - t, t)`` is used when a norm is below ``epsilon`` (or zero) or when
    ``|cos| > 0.9995`` (parallel and antiparallel vectors alike, so no NaN); otherwise
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
    lerp = small | (np.abs(cos) > SLERP_DOT_THRESHOLD) | ~np.isfinite(cos)
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
    if mnorm <= _MEAN_DIRECTION_FLOOR * float(np.abs(wn).sum()) or not np.isfinite(mnorm):
        return linear
    alpha = alpha / mnorm
    for _ in range(max_iter):
        cos = np.clip((g @ alpha) * inv, -1.0, 1.0)  # <m, u_i>
        theta = np.arccos(cos)
        sin = np.sin(theta)
        factor = np.where(theta < 1e-7, 1.0, theta / np.where(sin > 0, sin, 1.0))
        factor = np.where((np.pi - theta) < _ANTIPODAL, 0.0, factor)
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


def model_stock_ratio(gram: np.ndarray) -> np.ndarray:
    """Model Stock ratio ``t`` per row from per-row Gram matrices ``gram[r, i, j]``.

    ``cos`` is the mean over pairs i < j of ``<tau_i, tau_j> / (|tau_i| |tau_j|)``, a pair with
    a zero vector counting as cosine 0; ``t = N cos / (1 + (N - 1) cos)``. The mean pairwise
    cosine of N vectors is at least ``-1 / (N - 1)``, so the denominator is never negative;
    where it is below 1e-6 (the task vectors cancel out) ``t`` is 0, i.e. the base.
    """
    g = np.asarray(gram, dtype=np.float64)
    n = g.shape[-1]
    norms = np.sqrt(np.maximum(np.diagonal(g, axis1=-2, axis2=-1), 0.0))  # (R, N)
    outer = norms[..., :, None] * norms[..., None, :]
    cosm = np.where(outer > 0, g / np.where(outer > 0, outer, 1.0), 0.0)
    iu = np.triu_indices(n, 1)
    cos = np.clip(cosm[..., iu[0], iu[1]].mean(axis=-1), -1.0, 1.0)
    denom = 1.0 + (n - 1) * cos
    return np.where(denom > 1e-6, n * cos / np.where(denom > 1e-6, denom, 1.0), 0.0)


# Whole-tensor sums, the same wherever a tensor is split -----------------------------------
#
# Norms, dot products and L1 sums over a whole tensor are summed in float64 in two steps:
# first along each slice of the first axis (the "rows" a tensor is split into when it is
# computed a block at a time), then over those per-row partial sums in row order. A block of
# rows yields exactly the partial sums the whole tensor would, so the totals (and every
# coefficient made from them) do not depend on how a tensor is split, on the memory limit or
# on the number of threads. 0-d and 1-D tensors are one row.


def _rows(x: Any) -> np.ndarray:
    a = np.asarray(x, dtype=np.float32)
    return a.reshape(a.shape[0] if a.ndim >= 2 else 1, -1)


def _rows64(x: Any) -> np.ndarray:
    return _rows(x).astype(np.float64)


def keep(x: Any, mask: Any, out: np.ndarray | None = None) -> np.ndarray:
    """``where(mask, x, +0.0)`` for a float32 numpy array, by masking its bit patterns
    (numpy's ``where`` with a scalar runs element by element)."""
    x = np.asarray(x, dtype=np.float32)
    bits = np.negative(np.asarray(mask, dtype=bool).view(np.uint8), dtype=np.uint32)
    res = np.bitwise_and(x.view(np.uint32), bits,
                         out=None if out is None else out.view(np.uint32))
    return res.view(np.float32)


def gram_partials(xs: Sequence[Any]) -> np.ndarray:
    """Per-row partial inner products of numpy arrays: shape (rows, n, n), float64 sums of
    the float32 products (as every backend forms them)."""
    rows = [_rows(x) for x in xs]
    n = len(rows)
    out = np.zeros((rows[0].shape[0], n, n), dtype=np.float64)
    for i in range(n):
        for j in range(i, n):
            out[:, i, j] = out[:, j, i] = np.sum((rows[i] * rows[j]).astype(np.float64),
                                                 axis=1)
    return out


def abs_partials(x: Any) -> np.ndarray:
    """Per-row partial L1 sums of a numpy array: shape (rows,), float64."""
    return np.sum(np.abs(_rows64(x)), axis=1)


def total(partials: Sequence[np.ndarray]) -> Any:
    """The sum over rows of per-row partials (blocks given in row order)."""
    p = np.concatenate(list(partials), axis=0) if len(partials) != 1 else partials[0]
    return p.sum(axis=0)  # the same array wherever the tensor was split, so the same sum


def gram64(xs: Sequence[Any]) -> np.ndarray:
    """Inner products of whole tensors (numpy), summed as described above."""
    return total([gram_partials(xs)])


def abs_sum64(x: Any) -> float:
    """L1 norm of a whole tensor (numpy), summed as described above."""
    return float(total([abs_partials(x)]))


#: methods whose result is a weighted sum of the inputs with coefficients computed from the
#: inputs' inner products (see :func:`gram_coefficients`)
GRAM_METHODS = ("slerp", "nuslerp", "multislerp", "karcher", "model_stock")


def uses_gram(method: str, params: Mapping[str, Any], ndim: int) -> bool:
    """Is this call a weighted sum with coefficients from the whole-tensor Gram matrix?
    (nuslerp without flatten and filter-wise model_stock work per row instead, for
    tensors of two or more dimensions.)"""
    if method in ("slerp", "multislerp", "karcher"):
        return True
    if method == "nuslerp":
        return bool(params.get("flatten", True)) or ndim < 2
    if method == "model_stock":
        return not bool(params.get("filter_wise", False)) or ndim < 2
    return False


def gram_coefficients(method: str, params: Mapping[str, Any], gram: np.ndarray
                      ) -> list[float]:
    """Coefficients c_i with ``result = sum_i c_i x_i`` for a call that
    :func:`uses_gram`, from the inputs' Gram matrix."""
    n = gram.shape[0]
    if method == "slerp":
        check_inputs(method, [()] * n, 2, 2)
        t = float(scalar(params, "t", method))
        eps = float(scalar(params, "epsilon", method))
    elif method == "nuslerp":
        check_inputs(method, [()] * n, 2, 2)
        w = per_input(params, "weight", 2, method)
        if w[0] + w[1] == 0.0:
            raise ValueError(f"method {method}: the two weights sum to 0 (weights {list(w)})")
        t = w[1] / (w[0] + w[1])
        eps = float(scalar(params, "epsilon", method))
    elif method in ("multislerp", "karcher"):
        check_inputs(method, [()] * n, 2)
        w = per_input(params, "weight", n, method)
        if method == "multislerp":
            zero, iters, tol = float(scalar(params, "epsilon", method)), 1, 0.0
        else:
            zero = ZERO_NORM
            iters = int(scalar(params, "max_iter", method))
            tol = float(scalar(params, "tol", method))
        return [float(c) for c in spherical_mean_coefficients(gram, w, zero, iters, tol, method)]
    elif method == "model_stock":
        check_inputs(method, [()] * n, 2)
        t = float(model_stock_ratio(gram[None])[0])
        return [t / n] * n
    else:
        raise ValueError(f"method {method} is not computed from inner products")
    c0, c1 = slerp_coefficients(gram[0, 0], gram[1, 1], gram[0, 1], t, eps)
    return [float(c0[0]), float(c1[0])]
