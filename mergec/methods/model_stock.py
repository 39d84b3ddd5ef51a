"""Model Stock: the mean of the fine-tunes, pulled toward the base by their mutual angle."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mergec.lazy import lazy_module

from .spec import Method, Param, Traits, rows_shape
from .spherical import from_gram

np = lazy_module("numpy")  # numpy loads when a method runs, not when it is declared


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


def _coefficients(params: Mapping[str, Any], gram: np.ndarray) -> list[float]:
    n = gram.shape[0]
    t = float(model_stock_ratio(gram[None])[0])
    return [t / n] * n


def _model_stock(ops, xs, p, seed):
    """Per tensor, or per row with filter_wise (0-d and 1-D tensors have one row):
    ``t * mean_i tau_i``."""
    shape = ops.shape(xs[0])
    if not (p.filter_wise and len(shape) >= 2):
        return from_gram(ops, xs, _coefficients(p.raw(), ops.gram(xs)))
    k = len(xs)
    rows, n = rows_shape(shape)
    xr = [ops.reshape(x, (rows, n)) for x in xs]
    g = np.zeros((rows, k, k), dtype=np.float64)
    for i in range(k):
        for j in range(i, k):
            g[:, i, j] = g[:, j, i] = ops.row_dots(xr[i], xr[j])
    t = model_stock_ratio(g)
    acc = xr[0]
    for x in xr[1:]:
        acc = ops.add(acc, x)
    return ops.reshape(ops.scale_rows(acc, (t / k).astype(np.float32)), shape)


def _split(params, ndim) -> str:
    return "rows" if params.get("filter_wise", False) and ndim >= 2 else "gram"


METHODS = (
    Method(
        "model_stock", "Interpolate the mean of fine-tunes toward the base by their angle.",
        "cos = mean pairwise cosine of tau_i; t = N cos / (1 + (N - 1) cos); "
        "base + t * mean_i tau_i",
        (Param("filter_wise", "bool", False, "one ratio per row instead of per tensor"),),
        _model_stock, base="delta", min_inputs=2,
        references=("Jang et al. 2024, Model Stock, arXiv:2403.19522",),
        traits=Traits(split=_split), gram_coefficients=_coefficients,
    ),
)
