"""The numpy reference backend: every kernel written plainly, the yardstick for the others.

Arrays are float32 ``numpy.ndarray``. Reductions (norms, dot products, L1 sums) accumulate in
float64. Every step that feeds a discrete decision (variance ranking, DELLA probabilities,
masks) is a sequence of elementwise float32 operations in input order, and the sign-election
vote is an elementwise float64 sum in input order, so the torch backend, which performs the
same sequence, reaches bit-identical decisions. Random numbers come from
:mod:`mergec.ops.random`.

Method semantics (shared with every backend; ``tau_i`` are the inputs of a ``base="delta"``
method, ``w_i`` the weights, ``lambda`` the final scale):

linear
    ``sum w_i x_i`` (``/ sum w_i`` when normalize; a zero sum is a ValueError).
task_arithmetic
    ``lambda * sum w_i tau_i`` (``/ sum w_i`` when normalize).
slerp
    flattened, see :func:`mergec.backends.base.slerp_coefficients`.
nuslerp
    ``t = w_2 / (w_1 + w_2)`` (zero sum: ValueError). flatten=true: slerp of the whole
    tensors. flatten=false: row_wise=true slerps each row (last axis), row_wise=false each
    column (the vectors along axis -2, for every index of the other axes). Tensors of fewer
    than two dimensions have no rows or columns: flatten=false slerps the whole tensor.
multislerp, karcher
    :func:`mergec.backends.base.spherical_mean_coefficients`; multislerp uses its
    ``epsilon`` as the zero-norm threshold and one tangent step, karcher ``ZERO_NORM`` (1e-8)
    and up to ``max_iter`` steps. karcher scales by the weighted mean norm
    ``sum w_i |x_i| / sum w_i`` (the plain mean norm when the weights are equal).
ties
    trim (per tensor: top-k by magnitude with ``k = keep_count(density_i, n)``; per model:
    keep ``|tau_i| >= thresholds_i``, the per-input parameter ``thresholds`` the compiler
    computes over the whole model; density is then unused), elect, disjoint merge (below).
dare_linear, dare_ties
    keep mask ``uniform(seed, i, shape) < float32(density_i)`` (mergec.ops.random);
    rescale: inverse ``kept / density_i``; l1 ``kept * |tau_i|_1 / |kept|_1`` (0 if nothing
    is kept); none. density_i = 1 returns tau_i unchanged (no draw).
breadcrumbs, breadcrumbs_ties
    per tensor, the order of the top-k rule; with ``(top, kept) = breadcrumbs_counts``
    entries at positions ``[top, top + kept)`` of that order are kept.
della, della_linear
    per row, ``r`` = ascending magnitude rank (0 smallest; equal magnitudes: the lower index
    ranks higher, as in the top-k order); ``p = density - eps + 2 eps r / (n - 1)``
    (``n = 1``: ``p = density``) evaluated in float32 (:func:`base.della_line`), capped at 1;
    kept where ``uniform(seed, i, shape) < p`` (``p <= 0`` is never kept). Rescale inverse:
    ``kept / p``; l1 and none as for DARE, the L1 norms taken over the whole tensor.
TIES elect and disjoint merge (ties, dare_ties, breadcrumbs_ties, della)
    ``gamma = sign(sum_i c_i tau_hat_i)`` with ``c_i = w_i`` if weighted_elect else 1
    (elect="mass"), or ``sign(sum_i sign(tau_hat_i))`` (elect="count", which ignores
    weighted_elect); the vote is summed in
    float64 (products of float32 values and float32 weights are exact there, so the elected
    sign hardly ever depends on the order of the inputs). Input i agrees where
    ``tau_hat_i != 0`` and ``sign(tau_hat_i) == gamma != 0``. normalize: ``sum_{agree} w_i
    tau_hat_i / sum_{agree} w_i``, 0 where that weight sum is 0 (or nothing agrees);
    normalize=false: ``sum_{agree} w_i tau_hat_i`` (0 where nothing agrees). Then ``* lambda``.
model_stock
    :func:`base.model_stock_ratio` per tensor (or per row with filter_wise; 0-d and 1-D
    tensors have one row); ``t * mean_i tau_i``.
sce
    ``k = keep_count(select_topk, n)`` entries with the largest variance across the inputs
    are kept in every input (ties by the top-k order; a lone input has zero variance
    everywhere, so its first k entries by index are kept); ``omega_i = mean(tau_i'^2)`` of
    the selected vectors, normalized to sum 1 (all zero: the result is 0); sign election
    ``gamma = sign(sum_i tau_i')``; ``sum_{agree} omega_i tau_i' / sum_{agree} omega_i``
    (0 where nothing agrees); ``* lambda``.
nearswap
    ``w = clip(t / max(|tau|, 1e-6), 0, 1)``; ``w * tau``.
passthrough
    ``scale * x``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mergec.ops import random as rnd

from . import base as B

Array = np.ndarray
_F32 = np.float32
_ZERO = np.float32(0.0)


def _f32(x: Array) -> Array:
    return np.asarray(x, dtype=np.float32)


# Building blocks ---------------------------------------------------------------------------


def topk_mask(mag: Array, k: int) -> Array:
    """bool mask of the ``k`` largest entries of ``mag`` (flat), ties by lowest flat index.
    Magnitudes (non-negative float32) are ranked by their bit patterns, which order like
    the values and put NaN above infinity."""
    flat = mag.reshape(-1)
    n = flat.size
    if k >= n:
        return np.ones(mag.shape, dtype=bool)
    if k <= 0:
        return np.zeros(mag.shape, dtype=bool)
    if flat.dtype == np.float32 and not bool(np.signbit(flat).any()):
        flat = flat.view(np.uint32)
    thr = kth_largest(flat, k)
    gt = flat > thr
    need = k - int(np.count_nonzero(gt))
    if need > 0:  # entries equal to the k-th: the lowest indices first
        gt[np.flatnonzero(flat == thr)[:need]] = True
    return gt.reshape(mag.shape)


def kth_largest(flat: Array, k: int):
    """The k-th largest value of a flat array (1 <= k <= size), by selection. For the bit
    patterns of magnitudes (uint32), a histogram of the top bits finds the bucket and a
    count inside it the value (:mod:`mergec.stats`)."""
    from mergec.stats import bucket_pass, kth_of

    n = flat.size
    if flat.dtype != np.uint32 or n < 1 << 16:
        return np.partition(flat, n - k)[n - k]
    above, (inside,) = bucket_pass(lambda fn: [fn(flat)], k)
    return kth_of(inside, k - above)


def _rank_ascending(mag_rows: Array) -> Array:
    """Per row rank of the magnitude, 0 smallest; equal values: the lower index ranks higher."""
    order = np.argsort(-mag_rows, axis=-1, kind="stable")  # descending, ties by index
    n = mag_rows.shape[-1]
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.arange(n)[None, :].repeat(mag_rows.shape[0], 0), axis=-1)
    return (n - 1) - pos


def _sum_f64(x: Array) -> float:
    return float(np.sum(x, dtype=np.float64))


_keep = B.keep


def _row_dot(a: Array, b: Array) -> Array:
    return np.sum(a * b, axis=-1, dtype=np.float64)


def _rescale(kept: Array, orig: Array, mode: str, inverse_of: Any, method: str) -> Array:
    """Rescale a sparsified task vector; ``inverse_of`` is the keep probability (or array)."""
    if mode == "inverse":
        return kept / inverse_of
    if mode == "l1":
        s_kept = B.abs_sum64(kept)
        if s_kept == 0.0:
            return np.zeros_like(kept)
        return kept * float(B.abs_sum64(orig) / s_kept)
    if mode == "none":
        return kept
    raise ValueError(f"method {method}: unknown rescale {mode!r}")


class ReferenceBackend:
    """numpy reference backend (CPU only)."""

    name = "reference"

    def __init__(self, device: str = "cpu") -> None:
        if device not in ("cpu", "auto"):
            raise B.BackendUnavailable(f"the reference backend runs on the cpu only, "
                                       f"not on {device!r}")
        self.device = "cpu"
        self._kernels = B.kernel_table(self)

    # contract ------------------------------------------------------------------------------

    @property
    def method_names(self) -> frozenset[str]:
        return frozenset(self._kernels)

    def asarray(self, a: np.ndarray) -> Array:
        return np.array(a, dtype=np.float32, copy=True)

    def to_numpy(self, x: Array, dtype: str) -> np.ndarray:
        return np.asarray(x).astype(B.storage_dtype(dtype))  # astype copies; RNE

    def weighted_sum(self, terms: Sequence[tuple[Array, float]]) -> Array:
        if not terms:
            raise ValueError("weighted_sum of no terms")
        x0, c0 = terms[0]
        acc = x0 * float(c0)
        for x, c in terms[1:]:
            acc = acc + x * float(c)
        return _f32(acc)

    def weighted_sum64(self, terms: Sequence[tuple[Array, float]]) -> Array:
        if not terms:
            raise ValueError("weighted_sum64 of no terms")
        acc = np.asarray(terms[0][0], dtype=np.float64) * float(terms[0][1])
        for x, c in terms[1:]:
            acc += np.asarray(x, dtype=np.float64) * float(c)
        return acc

    def to_float32(self, x: Array) -> Array:
        return x if x.dtype == np.float32 else x.astype(np.float32)

    def lowrank(self, b: Array, a: Array, scale: float, transpose: bool) -> Array:
        d = _f32(np.matmul(_f32(b), _f32(a)) * np.float32(scale))
        return np.ascontiguousarray(d.T) if transpose else d

    def zeros(self, shape: tuple[int, ...]) -> Array:
        return np.zeros(tuple(shape), dtype=np.float32)

    def method(self, name: str, inputs: Sequence[Array], params: Mapping[str, Any],
               seed: int | None) -> Array:
        kernel = self._kernels.get(name)
        if kernel is None:
            raise NotImplementedError(f"the {self.name} backend has no kernel for method {name}")
        xs = [_f32(x) for x in inputs]
        return _f32(kernel(xs, params, seed))

    # linear family -------------------------------------------------------------------------

    def _combine(self, xs: Sequence[Array], weights: Sequence[float], normalize: bool,
                 scale: float, method: str) -> Array:
        total = B.sum_of_weights(weights, method) if normalize else 1.0
        return self.weighted_sum([(x, scale * w / total) for x, w in zip(xs, weights)])

    def _linear(self, xs, p, seed):
        B.check_inputs("linear", [x.shape for x in xs])
        w = B.per_input(p, "weight", len(xs), "linear")
        return self._combine(xs, w, bool(B.scalar(p, "normalize", "linear")), 1.0, "linear")

    def _task_arithmetic(self, xs, p, seed):
        m = "task_arithmetic"
        B.check_inputs(m, [x.shape for x in xs])
        w = B.per_input(p, "weight", len(xs), m)
        return self._combine(xs, w, bool(B.scalar(p, "normalize", m)),
                             float(B.scalar(p, "lambda", m)), m)

    def _passthrough(self, xs, p, seed):
        B.check_inputs("passthrough", [x.shape for x in xs], 1, 1)
        scale = float(B.scalar(p, "scale", "passthrough"))
        return xs[0] * scale if scale != 1.0 else xs[0].copy()

    # spherical -----------------------------------------------------------------------------

    def _from_gram(self, method: str, xs, p) -> Array:
        """A method that is a weighted sum with coefficients from the inner products."""
        coef = B.gram_coefficients(method, p, B.gram64(xs))
        return self.weighted_sum([(x, c) for x, c in zip(xs, coef)])

    def _slerp(self, xs, p, seed):
        return self._from_gram("slerp", xs, p)

    def _nuslerp(self, xs, p, seed):
        m = "nuslerp"
        B.check_inputs(m, [x.shape for x in xs], 2, 2)
        w = B.per_input(p, "weight", 2, m)
        if w[0] + w[1] == 0.0:
            raise ValueError(f"method {m}: the two weights sum to 0 (weights {list(w)})")
        t = w[1] / (w[0] + w[1])
        eps = float(B.scalar(p, "epsilon", m))
        a, b = xs
        if B.uses_gram(m, {"flatten": bool(B.scalar(p, "flatten", m))}, a.ndim):
            return self._from_gram(m, xs, p)
        row_wise = bool(B.scalar(p, "row_wise", m))
        if not row_wise:  # columns: the vectors along axis -2
            a, b = np.swapaxes(a, -1, -2), np.swapaxes(b, -1, -2)
        c0, c1 = B.slerp_coefficients(_row_dot(a, a), _row_dot(b, b), _row_dot(a, b), t, eps)
        out = c0.astype(np.float32)[..., None] * a + c1.astype(np.float32)[..., None] * b
        if not row_wise:
            out = np.swapaxes(out, -1, -2)
        return np.ascontiguousarray(out)

    def _multislerp(self, xs, p, seed):
        return self._from_gram("multislerp", xs, p)

    def _karcher(self, xs, p, seed):
        return self._from_gram("karcher", xs, p)

    # sparsify + consensus ------------------------------------------------------------------

    def _disjoint(self, taus: Sequence[Array], weights: Sequence[float], elect: str,
                  weighted_elect: bool, normalize: bool, method: str) -> Array:
        # written with whole-array operations into reused buffers (no masked ufuncs, which
        # numpy runs element by element); the values are those of the rules above
        shape = taus[0].shape
        vote = np.zeros(shape, dtype=np.float64)
        tmp = np.empty(shape, dtype=np.float64)
        for tau, w in zip(taus, weights):
            if elect == "mass":
                np.multiply(tau, float(_F32(w)) if weighted_elect else 1.0, out=tmp,
                            dtype=np.float64)
            elif elect == "count":
                np.sign(tau, out=tmp, dtype=np.float64)
            else:
                raise ValueError(f"method {method}: unknown elect {elect!r}")
            vote += tmp
        pos, neg = vote > 0, vote < 0
        del vote, tmp
        num = np.zeros(shape, dtype=np.float32)
        den = np.zeros(shape, dtype=np.float32)
        agree = np.empty(shape, dtype=bool)
        other = np.empty(shape, dtype=bool)
        part = np.empty(shape, dtype=np.float32)
        for tau, w in zip(taus, weights):
            np.greater(tau, _ZERO, out=agree)
            agree &= pos
            np.less(tau, _ZERO, out=other)
            other &= neg
            agree |= other
            np.multiply(tau, _F32(w), out=part)
            num += _keep(part, agree, out=part)     # + 0 where it does not agree
            np.multiply(agree, _F32(w), out=part)   # w where it agrees, else 0
            den += part
        if not normalize:
            return num
        ok = np.not_equal(den, _ZERO, out=agree)
        den += ~ok                                  # 1 where nothing agrees
        np.divide(num, den, out=num)
        return _keep(num, ok, out=num)

    def _consensus(self, taus, p, method):
        w = B.per_input(p, "weight", len(taus), method)
        merged = self._disjoint(taus, w, str(B.scalar(p, "elect", method)),
                                bool(B.scalar(p, "weighted_elect", method)),
                                bool(B.scalar(p, "normalize", method)), method)
        lam = float(B.scalar(p, "lambda", method))
        return merged * lam if lam != 1.0 else merged

    def _ties(self, xs, p, seed):
        m = "ties"
        B.check_inputs(m, [x.shape for x in xs])
        trim = str(B.scalar(p, "trim", m))
        if "masks" in p:  # trim masks made by the executor for a block of rows
            taus = [_keep(x, np.asarray(k)) for x, k in zip(xs, p["masks"])]
        elif trim == "tensor":
            dens = B.per_input(p, "density", len(xs), m)
            taus = [np.where(topk_mask(np.abs(x), B.keep_count(d, x.size)), x, _ZERO)
                    for x, d in zip(xs, dens)]
        elif trim == "model":
            if "thresholds" not in p:
                raise ValueError("method ties with trim=\"model\" needs the per-input parameter "
                                 "'thresholds' (magnitudes computed over the whole model)")
            thr = B.per_input(p, "thresholds", len(xs), m)
            taus = [np.where(np.abs(x) >= _F32(t), x, _ZERO) for x, t in zip(xs, thr)]
        else:
            raise ValueError(f"method ties: unknown trim {trim!r}")
        return self._consensus(taus, p, m)

    def _dare(self, xs, p, seed, method):
        B.check_inputs(method, [x.shape for x in xs])
        dens = B.per_input(p, "density", len(xs), method)
        mode = str(B.scalar(p, "rescale", method))
        out = []
        for i, (x, d) in enumerate(zip(xs, dens)):
            if d >= 1.0:
                out.append(x)
                continue
            if seed is None:
                raise ValueError(f"method {method} draws random numbers and needs a seed")
            mask = p["masks"][i] if "masks" in p else rnd.keep_mask(seed, i, x.shape, d)
            kept = _keep(x, mask)
            if mode == "l1" and "l1_scales" in p:  # the whole tensor's L1 ratio, for a block
                out.append(kept * p["l1_scales"][i] if p["l1_scales"][i] else
                           np.zeros_like(kept))
                continue
            out.append(_rescale(kept, x, mode, _F32(d), method))
        return out

    def _dare_linear(self, xs, p, seed):
        m = "dare_linear"
        taus = self._dare(xs, p, seed, m)
        return self._combine(taus, B.per_input(p, "weight", len(xs), m),
                             bool(B.scalar(p, "normalize", m)), float(B.scalar(p, "lambda", m)), m)

    def _dare_ties(self, xs, p, seed):
        return self._consensus(self._dare(xs, p, seed, "dare_ties"), p, "dare_ties")

    def _breadcrumbs_masks(self, xs, p, method):
        B.check_inputs(method, [x.shape for x in xs])
        dens = B.per_input(p, "density", len(xs), method)
        gams = B.per_input(p, "gamma", len(xs), method)
        out = []
        for x, d, g in zip(xs, dens, gams):
            top, kept = B.breadcrumbs_counts(d, g, x.size)
            mag = np.abs(x)
            mask = topk_mask(mag, top + kept)
            if top:
                mask &= ~topk_mask(mag, top)
            out.append(np.where(mask, x, _ZERO))
        return out

    def _breadcrumbs(self, xs, p, seed):
        m = "breadcrumbs"
        taus = self._breadcrumbs_masks(xs, p, m)
        return self._combine(taus, B.per_input(p, "weight", len(xs), m),
                             bool(B.scalar(p, "normalize", m)), float(B.scalar(p, "lambda", m)), m)

    def _breadcrumbs_ties(self, xs, p, seed):
        m = "breadcrumbs_ties"
        return self._consensus(self._breadcrumbs_masks(xs, p, m), p, m)

    def _della_masks(self, xs, p, seed, method):
        B.check_inputs(method, [x.shape for x in xs])
        dens = B.per_input(p, "density", len(xs), method)
        epss = B.per_input(p, "epsilon", len(xs), method)
        mode = str(B.scalar(p, "rescale", method))
        out = []
        for i, (x, d, e) in enumerate(zip(xs, dens, epss)):
            rows, n = B.rows_shape(x.shape)
            offset, step = B.della_line(d, e, n)
            if x.size == 0 or (offset >= 1.0 and step == 0.0):  # p = 1 everywhere
                out.append(x)
                continue
            if seed is None:
                raise ValueError(f"method {method} draws random numbers and needs a seed")
            xr = x.reshape(rows, n)
            r = _rank_ascending(np.abs(xr)).astype(np.float32)
            prob = np.minimum(offset + step * r, _F32(1.0))
            u = rnd.uniform(seed, i, x.shape).reshape(rows, n)
            keep = u < prob
            kept = np.where(keep, xr, _ZERO)
            safe_p = np.where(keep, prob, _F32(1.0))
            out.append(_rescale(kept, xr, mode, safe_p, method).reshape(x.shape))
        return out

    def _della(self, xs, p, seed):
        return self._consensus(self._della_masks(xs, p, seed, "della"), p, "della")

    def _della_linear(self, xs, p, seed):
        m = "della_linear"
        taus = self._della_masks(xs, p, seed, m)
        return self._combine(taus, B.per_input(p, "weight", len(xs), m),
                             bool(B.scalar(p, "normalize", m)), float(B.scalar(p, "lambda", m)), m)

    # others --------------------------------------------------------------------------------

    def _model_stock(self, xs, p, seed):
        m = "model_stock"
        B.check_inputs(m, [x.shape for x in xs], 2)
        n_in = len(xs)
        if bool(B.scalar(p, "filter_wise", m)) and xs[0].ndim >= 2:
            rows, n = B.rows_shape(xs[0].shape)
            xr = [x.reshape(rows, n) for x in xs]
            g = np.zeros((rows, n_in, n_in), dtype=np.float64)
            for i in range(n_in):
                for j in range(i, n_in):
                    g[:, i, j] = g[:, j, i] = _row_dot(xr[i], xr[j])
            t = B.model_stock_ratio(g)
            acc = xr[0]
            for x in xr[1:]:
                acc = acc + x
            return (acc * (t / n_in).astype(np.float32)[:, None]).reshape(xs[0].shape)
        return self._from_gram(m, xs, p)

    def _sce(self, xs, p, seed):
        m = "sce"
        B.check_inputs(m, [x.shape for x in xs])
        frac = float(B.scalar(p, "select_topk", m))
        k = B.keep_count(frac, xs[0].size)
        taus = list(xs)
        if k < xs[0].size:
            acc = xs[0]
            for x in xs[1:]:
                acc = acc + x
            mean = acc / _F32(len(xs))
            var = np.zeros_like(xs[0])
            for x in xs:
                dev = x - mean
                var = var + dev * dev
            mask = topk_mask(var, k)
            taus = [np.where(mask, x, _ZERO) for x in xs]
        energy = [_sum_f64(t * t) / max(t.size, 1) for t in taus]
        total = sum(energy)
        if total == 0.0:
            return np.zeros_like(xs[0])
        omega = [e / total for e in energy]
        merged = self._disjoint(taus, omega, "mass", False, True, m)
        lam = float(B.scalar(p, "lambda", m))
        return merged * lam if lam != 1.0 else merged

    def _nearswap(self, xs, p, seed):
        m = "nearswap"
        B.check_inputs(m, [x.shape for x in xs], 1, 1)
        t = _F32(float(B.scalar(p, "t", m)))
        tau = xs[0]
        w = np.clip(t / np.maximum(np.abs(tau), _F32(B.NEARSWAP_FLOOR)), _ZERO, _F32(1.0))
        return w * tau
