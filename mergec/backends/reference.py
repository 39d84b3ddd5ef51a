"""The NumPy backend: the array primitives in plain numpy, CPU only.

The default backend on a CPU and the yardstick for the others. Arrays are float32
``numpy.ndarray``; Python numbers combine with them as float32 (numpy's rules for Python
scalars). Reductions accumulate in float64 (:func:`mergec.backends.base.total`). Top-k
masks come from a selection over the magnitudes' bit patterns (:mod:`mergec.ops.select`),
random numbers from :mod:`mergec.ops.random`. ``disjoint_merge`` is the TIES election and
disjoint merge of :func:`mergec.methods.consensus.disjoint` fused into reused buffers (the
same numbers; numpy's masked operations run element by element).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mergec.ops import random as rnd
from mergec.ops import rank as ops_rank
from mergec.ops.select import kth_largest

from . import base as B

Array = np.ndarray
_F32 = np.float32
_ZERO = np.float32(0.0)
#: entries per chunk of the entry-by-entry kernels that make temporaries (weighted sums,
#: :meth:`ReferenceBackend.disjoint_merge`) on a large array
CHUNK = 1 << 18


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


def rank_ascending(mag_rows: Array) -> Array:
    """Per row rank of the magnitude, 0 smallest; equal values: the lower index ranks higher
    (by a sort of unique integer keys, :func:`mergec.ops.rank.rank_ascending`)."""
    return ops_rank.rank_ascending(mag_rows)


def _f32(x) -> Array:
    return np.asarray(x, dtype=np.float32)


def _wsum32(terms) -> Array:
    x0, c0 = terms[0]
    acc = x0 * float(c0)
    for x, c in terms[1:]:
        acc = acc + x * float(c)
    return _f32(acc)


def _wsum64(terms) -> Array:
    acc = np.asarray(terms[0][0], dtype=np.float64) * float(terms[0][1])
    for x, c in terms[1:]:
        acc += np.asarray(x, dtype=np.float64) * float(c)
    return acc


def _by_chunks(fn, terms, dtype) -> Array:
    """``fn(terms)`` — an entry-by-entry weighted sum of arrays of one shape — in flat
    chunks of :data:`CHUNK` entries when the arrays are large: the same numbers, with
    temporaries that stay in the processor's cache instead of whole-array passes."""
    xs = [x for x, _ in terms]
    x0 = xs[0]
    if (not isinstance(x0, np.ndarray) or x0.size <= CHUNK
            or any(not isinstance(x, np.ndarray) or x.shape != x0.shape for x in xs)):
        return fn(terms)
    flat = [np.ascontiguousarray(x).reshape(-1) for x in xs]
    out = np.empty(x0.size, dtype=dtype)
    for s in range(0, x0.size, CHUNK):
        e = min(s + CHUNK, x0.size)
        out[s:e] = fn([(f[s:e], c) for f, (_, c) in zip(flat, terms)])
    return out.reshape(x0.shape)


class ReferenceBackend:
    """NumPy backend (CPU only)."""

    name = "reference"

    def __init__(self, device: str = "cpu") -> None:
        if device not in ("cpu", "auto"):
            raise B.BackendUnavailable(f"the reference backend runs on the cpu only, "
                                       f"not on {device!r}")
        self.device = "cpu"

    # conversion and shape ------------------------------------------------------------------

    def asarray(self, a: np.ndarray) -> Array:
        return np.array(a, dtype=np.float32, copy=True)

    def to_numpy(self, x: Array, dtype: str) -> np.ndarray:
        x = np.asarray(x)
        x = x if x.flags.c_contiguous else np.array(x, order="C")
        # astype copies; RNE. A value beyond the dtype's range becomes infinity, which the
        # interpreter reports (E421) or writes by choice: no warning on the terminal here
        with np.errstate(over="ignore", invalid="ignore"):
            return x.astype(B.storage_dtype(dtype))

    def host(self, a: np.ndarray) -> Array:
        return np.asarray(a)

    def to_float32(self, x: Array) -> Array:
        if x.dtype == np.float32:
            return x
        with np.errstate(over="ignore", invalid="ignore"):  # overflow: E421 or by choice
            return x.astype(np.float32)

    def to_float64(self, x: Array) -> Array:
        return np.asarray(x, dtype=np.float64)

    def copy(self, x: Array) -> Array:
        return x.copy()

    def zeros(self, shape: tuple[int, ...]) -> Array:
        return np.zeros(tuple(shape), dtype=np.float32)

    def zeros_like(self, x: Array) -> Array:
        return np.zeros_like(x)

    def shape(self, x: Array) -> tuple[int, ...]:
        return tuple(x.shape)

    def size(self, x: Array) -> int:
        return int(x.size)

    def reshape(self, x: Array, shape: tuple[int, ...]) -> Array:
        return x.reshape(shape)

    def swapaxes(self, x: Array) -> Array:
        return np.swapaxes(x, -1, -2)

    def transpose(self, x: Array) -> Array:
        return np.ascontiguousarray(x.T)

    def take(self, x: Array, axis: int, start: int, stop: int) -> Array:
        return np.take(x, np.arange(start, stop), axis=axis)

    def concat(self, xs, axis: int) -> Array:
        return np.concatenate(list(xs), axis=axis)

    # arithmetic ----------------------------------------------------------------------------

    def wsum(self, terms: Sequence[tuple[Array, float]]) -> Array:
        if not terms:
            raise ValueError("weighted_sum of no terms")
        return _by_chunks(_wsum32, terms, np.float32)

    def wsum64(self, terms: Sequence[tuple[Array, float]]) -> Array:
        if not terms:
            raise ValueError("weighted_sum64 of no terms")
        return _by_chunks(_wsum64, terms, np.float64)

    def add(self, a, b):
        return np.add(a, b)

    def sub(self, a, b):
        return np.subtract(a, b)

    def mul(self, a, b):
        return np.multiply(a, b)

    def div(self, a, b):
        return np.true_divide(a, b)

    def abs(self, x):
        return np.abs(x)

    def sign(self, x):
        return np.sign(x)

    def minimum(self, a, b):
        return np.minimum(a, b)

    def maximum(self, a, b):
        return np.maximum(a, b)

    def clip(self, x, lo: float, hi: float):
        return np.clip(x, _F32(lo), _F32(hi))

    def scale_rows(self, x, coef: np.ndarray):
        return _f32(coef)[..., None] * x

    # comparison and selection --------------------------------------------------------------

    def gt(self, a, b):
        return np.greater(a, b)

    def lt(self, a, b):
        return np.less(a, b)

    def ge(self, a, b):
        return np.greater_equal(a, b)

    def ne(self, a, b):
        return np.not_equal(a, b)

    def and_(self, a, b):
        return np.logical_and(a, b)

    def or_(self, a, b):
        return np.logical_or(a, b)

    def not_(self, a):
        return np.logical_not(a)

    def where(self, mask, a, b):
        a = _F32(a) if isinstance(a, float) else a
        b = _F32(b) if isinstance(b, float) else b
        return np.where(mask, a, b)

    def keep(self, x, mask):
        return B.keep(x, mask)

    # reductions ----------------------------------------------------------------------------

    def sum64(self, x) -> float:
        return float(np.sum(x, dtype=np.float64))

    def abs_sum64(self, x) -> float:
        return B.abs_sum64(x)

    def gram(self, xs) -> np.ndarray:
        return B.gram64(xs)

    def gram_rows(self, xs) -> np.ndarray:
        return B.gram_partials(xs)

    def abs_rows(self, x) -> np.ndarray:
        return B.abs_partials(x)

    def row_dots(self, a, b) -> np.ndarray:
        return np.sum(a * b, axis=-1, dtype=np.float64)

    # ranking, randomness, linear algebra ---------------------------------------------------

    def topk_mask(self, mag, k: int):
        return topk_mask(mag, k)

    def rank_ascending(self, rows):
        return ops_rank.rank_ascending(rows, np.float32)

    def keep_mask(self, seed: int, stream: int, shape, density: float):
        return rnd.keep_mask(seed, stream, tuple(shape), density)

    def uniform(self, seed: int, stream: int, shape):
        return rnd.uniform(seed, stream, tuple(shape))

    def matmul(self, a, b):
        return np.matmul(a, b)

    def svd(self, x):
        return tuple(np.linalg.svd(np.asarray(x, dtype=np.float64), full_matrices=False))

    def solve(self, a, b):
        return np.linalg.solve(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))

    # fused ---------------------------------------------------------------------------------

    def disjoint_merge(self, taus, weights, elect: str, weighted_elect: bool,
                       normalize: bool) -> Array:
        """:func:`mergec.methods.consensus.disjoint` with whole-array operations into
        reused buffers (no masked ufuncs, which numpy runs element by element). It is
        entry by entry, so a large array is done in flat chunks of :data:`CHUNK`
        entries: the same numbers, with temporaries of a chunk's size (the float64 vote
        alone would be twice the array) that stay in the processor's cache."""
        n = taus[0].size
        if n <= CHUNK:
            return self._disjoint(taus, weights, elect, weighted_elect, normalize)
        flat = [np.ascontiguousarray(t, dtype=np.float32).reshape(-1) for t in taus]
        out = np.empty(n, dtype=np.float32)
        for s in range(0, n, CHUNK):
            e = min(s + CHUNK, n)
            out[s:e] = self._disjoint([f[s:e] for f in flat], weights, elect,
                                      weighted_elect, normalize)
        return out.reshape(taus[0].shape)

    @staticmethod
    def _disjoint(taus, weights, elect: str, weighted_elect: bool, normalize: bool) -> Array:
        shape = taus[0].shape
        vote = np.zeros(shape, dtype=np.float64)
        tmp = np.empty(shape, dtype=np.float64)
        for tau, w in zip(taus, weights):
            if elect == "mass":
                np.multiply(tau, float(_F32(w)) if weighted_elect else 1.0, out=tmp,
                            dtype=np.float64)
            else:
                np.sign(tau, out=tmp, dtype=np.float64)
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
            num += B.keep(part, agree, out=part)     # + 0 where it does not agree
            np.multiply(agree, _F32(w), out=part)   # w where it agrees, else 0
            den += part
        if not normalize:
            return num
        ok = np.not_equal(den, _ZERO, out=agree)
        den += ~ok                                  # 1 where nothing agrees
        np.divide(num, den, out=num)
        return B.keep(num, ok, out=num)
