"""The array primitives every mergec backend provides, and the summation rule they share.

A backend is a small set of array operations over its own array type ``T`` — no method
logic: every merge method is written once over these primitives (:mod:`mergec.methods`).
The primitives, by kind (numbers ``b`` may be arrays or Python floats; float32 arrays
compute in float32, one rounding per operation, in the order written, so that every
backend reaches the same decisions; float64 arrays compute in float64):

* conversion: ``asarray(numpy) -> T`` (a private float32 copy), ``to_numpy(x, dtype)`` (one
  rounding to a storage dtype: float32, float16, bfloat16, float64; the result owns its
  memory), ``host(numpy)`` (a bool or float32 host array on the device as it is),
  ``to_float32``, ``to_float64``, ``copy``, ``zeros(shape)``, ``zeros_like``, ``shape``,
  ``size``, ``reshape``, ``swapaxes`` (the last two axes), ``transpose`` (a 2-D matrix),
  ``take(x, axis, start, stop)`` (a slice along one axis), ``concat(xs, axis)``;
* arithmetic: ``wsum(terms)`` (``sum c_i x_i`` in float32), ``wsum64(terms)`` (accumulated
  and returned in float64), ``add``, ``sub``, ``mul``, ``div`` (a true division, also by a
  scalar), ``abs``, ``sign``, ``minimum``, ``maximum``, ``clip``, ``scale_rows(x, c)`` (row
  ``r`` times ``c[r]``, ``c`` a host float32 array of ``shape[:-1]``);
* comparison and selection: ``gt``, ``lt``, ``ge``, ``ne``, ``and_``, ``or_``, ``not_``,
  ``where(mask, a, b)``, ``keep(x, mask)`` (``where(mask, x, +0.0)``);
* reductions, to host float64: ``sum64(x)``, ``abs_sum64(x)`` (the L1 norm), ``gram(xs)`` (the
  inner products of whole tensors), ``row_dots(a, b)`` (per row of the last axis); whole-tensor
  sums follow :func:`total`, so they do not depend on how a tensor is split; their per-row
  partials ``gram_rows(xs)`` and ``abs_rows(x)`` (:func:`gram_partials`, :func:`abs_partials`)
  are computed where the arrays are, and only they cross to the host (the passes over a
  tensor in blocks sum them);
* ranking: ``topk_mask(mag, k)`` (exactly the ``k`` largest, ties by lower flat index, by
  selection, never a full sort), ``rank_ascending(rows)`` (per row, 0 smallest, equal values:
  the lower index ranks higher; float32);
* randomness (:mod:`mergec.ops.random`, the same bits on every backend):
  ``keep_mask(seed, stream, shape, density)``, ``uniform(seed, stream, shape)``;
* linear algebra: ``matmul(a, b)`` (in the inputs' dtype), ``svd(x) -> (u, s, vt)`` (thin,
  computed and returned in float64), ``solve(a, b)`` (``a^-1 b`` for a square, non-singular
  ``a``, computed and returned in float64).

A backend may add a fused form of a hot step (the NumPy backend's ``disjoint_merge``) under
the same contract; the shared code uses it when present, and a test holds it to the shared
code bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from mergec.io.dtypes import MERGE_DTYPES, numpy_dtype
from mergec.lazy import lazy_module

# `mergec plan` asks which backend a build would get without computing anything
np = lazy_module("numpy")

__all__ = [
    "ArrayOps", "BackendUnavailable", "STORAGE_DTYPES", "storage_dtype",
    "gram_partials", "abs_partials", "total", "gram64", "abs_sum64", "keep",
]

T = TypeVar("T")
Number = Any  # a backend array or a Python float


@runtime_checkable
class ArrayOps(Protocol[T]):
    """The primitives of a backend (see the module docstring for their rules)."""

    name: str
    device: Any

    # conversion and shape
    def asarray(self, a: np.ndarray) -> T: ...
    def to_numpy(self, x: T, dtype: str) -> np.ndarray: ...
    def host(self, a: np.ndarray) -> T: ...
    def to_float32(self, x: T) -> T: ...
    def to_float64(self, x: T) -> T: ...
    def copy(self, x: T) -> T: ...
    def zeros(self, shape: tuple[int, ...]) -> T: ...
    def zeros_like(self, x: T) -> T: ...
    def shape(self, x: T) -> tuple[int, ...]: ...
    def size(self, x: T) -> int: ...
    def reshape(self, x: T, shape: tuple[int, ...]) -> T: ...
    def swapaxes(self, x: T) -> T: ...
    def transpose(self, x: T) -> T: ...
    def take(self, x: T, axis: int, start: int, stop: int) -> T: ...
    def concat(self, xs: Sequence[T], axis: int) -> T: ...

    # arithmetic
    def wsum(self, terms: Sequence[tuple[T, float]]) -> T: ...
    def wsum64(self, terms: Sequence[tuple[T, float]]) -> T: ...
    def add(self, a: Number, b: Number) -> T: ...
    def sub(self, a: Number, b: Number) -> T: ...
    def mul(self, a: Number, b: Number) -> T: ...
    def div(self, a: Number, b: Number) -> T: ...
    def abs(self, x: T) -> T: ...
    def sign(self, x: T) -> T: ...
    def minimum(self, a: Number, b: Number) -> T: ...
    def maximum(self, a: Number, b: Number) -> T: ...
    def clip(self, x: T, lo: float, hi: float) -> T: ...
    def scale_rows(self, x: T, coef: np.ndarray) -> T: ...

    # comparison and selection
    def gt(self, a: Number, b: Number) -> T: ...
    def lt(self, a: Number, b: Number) -> T: ...
    def ge(self, a: Number, b: Number) -> T: ...
    def ne(self, a: Number, b: Number) -> T: ...
    def and_(self, a: T, b: T) -> T: ...
    def or_(self, a: T, b: T) -> T: ...
    def not_(self, a: T) -> T: ...
    def where(self, mask: T, a: Number, b: Number) -> T: ...
    def keep(self, x: T, mask: T) -> T: ...

    # reductions (to the host, float64)
    def sum64(self, x: T) -> float: ...
    def abs_sum64(self, x: T) -> float: ...
    def gram(self, xs: Sequence[T]) -> np.ndarray: ...
    def gram_rows(self, xs: Sequence[T]) -> np.ndarray: ...
    def abs_rows(self, x: T) -> np.ndarray: ...
    def row_dots(self, a: T, b: T) -> np.ndarray: ...

    # ranking, randomness, linear algebra
    def topk_mask(self, mag: T, k: int) -> T: ...
    def rank_ascending(self, rows: T) -> T: ...
    def keep_mask(self, seed: int, stream: int, shape: tuple[int, ...], density: float) -> T: ...
    def uniform(self, seed: int, stream: int, shape: tuple[int, ...]) -> T: ...
    def matmul(self, a: T, b: T) -> T: ...
    def svd(self, x: T) -> tuple[T, T, T]: ...
    def solve(self, a: T, b: T) -> T: ...


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run here (its library or device is missing)."""


#: the dtypes a backend converts merged tensors to: the ones mergec merges and writes
STORAGE_DTYPES = MERGE_DTYPES


def storage_dtype(name: str) -> np.dtype:
    """numpy dtype of a canonical storage dtype name (one of ``STORAGE_DTYPES``)."""
    if name not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {name!r}; expected one of "
                         f"{', '.join(STORAGE_DTYPES)}")
    return numpy_dtype(name)


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
