"""Per-row ranks of float32 values without an argsort (DELLA's magnitude ranks).

The rank of entry ``i`` of a row is the number of entries that come before it in the
ascending order in which equal values are ordered by *descending* index (so of two equal
magnitudes the lower index ranks higher); NaN comes before every number (ranks lowest),
and ``-0.0`` equals ``0.0``. This is exactly what a stable descending argsort of the values
gives (``numpy.argsort(-x, kind="stable")``: NaN last, ties by index), turned into ranks.

Instead of an argsort with a stable comparison of floats, every entry gets one unique
unsigned 64-bit key: the float's order-preserving 32-bit pattern (NaN as the smallest) in
the high half and ``n - 1 - index`` in the low half. Keys are distinct, so a plain value
sort of the keys (numpy's vectorised sort of integers) orders the row exactly, and the
index comes back from the low half: entry ``n - 1 - (key & 0xffffffff)`` has the rank of
the key's position. With the compiled kernels (:mod:`mergec.ops.compiled`) a radix sort of
the 32-bit keys per row does the same, faster.
"""

from __future__ import annotations

import numpy as np

from mergec.ops import compiled

__all__ = ["rank_ascending", "order_keys"]

_LOW = np.uint64(0xFFFFFFFF)
_HALF = np.uint64(32)


def order_keys(x: np.ndarray) -> np.ndarray:
    """uint32 keys that order like the float32 values of ``x``: NaN (any sign) lowest as 0,
    ``-0.0`` the same as ``0.0``, then ``-inf < ... < +inf`` as 1 and up."""
    x = np.asarray(x, dtype=np.float32)
    bits = (x + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 = +0.0
    nan = np.isnan(x)
    if not bool(np.signbit(x).any()):  # magnitudes: the bit patterns order like the values
        keys = bits + np.uint32(1)
    else:
        neg = (bits >> np.uint32(31)).astype(bool)
        keys = np.where(neg, ~bits, bits | np.uint32(0x80000000)) + np.uint32(1)
    if bool(nan.any()):
        keys[nan] = 0
    return keys


def rank_ascending(rows: np.ndarray, dtype=np.int64) -> np.ndarray:
    """Ranks of a 2-D float32 array, per row (see the module's rule): 0 for the smallest,
    ``n - 1`` for the largest; of equal values the lower index ranks higher. ``dtype``:
    the ranks' type (float32 for DELLA's probabilities: the int64 ranks converted, written
    without the int64 array)."""
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise ValueError(f"rank_ascending takes a 2-D array, got shape {rows.shape}")
    m, n = rows.shape
    kern = compiled.kernels(rows.size)
    if kern is not None:
        return kern.rank_rows(rows, dtype)
    if n >= 1 << 32:  # the index does not fit the low half of a key
        return _argsort_ranks(rows).astype(dtype, copy=False)
    keys = order_keys(rows).astype(np.uint64) << _HALF
    keys |= np.arange(n - 1, -1, -1, dtype=np.uint64)  # n - 1 - index
    keys.sort(axis=-1)
    keys &= _LOW  # now n - 1 - (the index of the entry at each rank)
    where = (n - 1) - keys.view(np.int64)
    out = np.empty((m, n), dtype=dtype)
    np.put_along_axis(out, where, np.arange(n, dtype=np.int64).astype(dtype)[None, :], axis=-1)
    return out


def _argsort_ranks(rows: np.ndarray) -> np.ndarray:
    """The same ranks by a stable argsort (rows of 2**32 entries or more)."""
    order = np.argsort(-rows, axis=-1, kind="stable")  # descending, NaN last, ties by index
    n = rows.shape[-1]
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.arange(n)[None, :].repeat(rows.shape[0], 0), axis=-1)
    return (n - 1) - pos
