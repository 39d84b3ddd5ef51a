"""Compiled kernels (needs numba): Philox-4x64-10 words for :mod:`mergec.ops.random` and
per-row ranks for :mod:`mergec.ops.rank`.

The Philox kernels produce the raw words of ``numpy.random.Philox(key=[seed, stream])`` in
``random_raw`` order and turn them straight into the output (a keep mask, or float32
uniforms) without the 8-byte intermediate array the NumPy path makes: word ``j`` comes from
the counter block ``j // 4 + 1`` (numpy increments the counter before each block), lane
``j % 4``. :func:`mergec.ops.random` checks the words bit for bit against numpy.

The rank kernel sorts each row by a radix sort of the 32-bit order keys of its floats (see
:mod:`mergec.ops.rank`), starting from the entries in descending index order (a stable sort
keeps that order among equal keys), one byte per pass, skipping a byte all keys share.

This module imports numba at the top; :mod:`mergec.ops.compiled` imports it only when
enough work is asked for and falls back to NumPy when it is missing, fails or disagrees
with NumPy (:func:`self_check`). The machine
code is cached on disk (``$MERGEC_CACHE_DIR/numba``, else ``~/.cache/mergec/numba``, the
directory of the parser tables), so only the first run on a machine pays for compiling.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import caching
from numba.extending import intrinsic

__all__ = ["fill_mask", "fill_uniform", "rank_rows", "histogram", "bucket_entries", "cache_dir", "self_check"]

# Philox-4x64 round multipliers and Weyl key increments (Salmon et al. 2011, Random123)
_M0 = np.uint64(0xD2E7470EE14C6C93)
_M1 = np.uint64(0xCA5A826395121157)
_W0 = np.uint64(0x9E3779B97F4A7C15)
_W1 = np.uint64(0xBB67AE8584CAA73B)
_SHIFT = np.uint64(40)
_SCALE = np.float32(2.0**-24)
_ONE = np.uint64(1)
_FOUR = np.uint64(4)


def cache_dir() -> str:
    """Where compiled kernels are kept: ``$MERGEC_CACHE_DIR/numba``, else
    ``$XDG_CACHE_HOME/mergec/numba`` or ``~/.cache/mergec/numba``."""
    env = os.environ.get("MERGEC_CACHE_DIR")
    if env:
        base = env
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(xdg, "mergec")
    return os.path.join(base, "numba")


class _Locator(caching.UserProvidedCacheLocator):
    """numba's locator for a user cache directory, pointed at mergec's cache directory
    (numba's own NUMBA_CACHE_DIR is left to the user's other code)."""

    def __init__(self, py_func, py_file):
        super().__init__(py_func, py_file)
        self._cache_path = os.path.join(cache_dir(), self.get_suitable_cache_subpath(py_file))

    @classmethod
    def from_function(cls, py_func, py_file):
        if not os.path.exists(py_file):
            return None
        self = cls(py_func, py_file)
        try:
            self.ensure_cache_path()
        except OSError:  # no writable cache: compile in memory each run
            return None
        return self


class _CacheImpl(caching.CompileResultCacheImpl):
    _locator_classes = [_Locator]


class _Cache(caching.FunctionCache):
    _impl_class = _CacheImpl


def _jit(fn):
    """``numba.njit(nogil=True)`` with its machine code cached in :func:`cache_dir` (where
    that fails, e.g. no writable directory, the kernel is compiled on first use instead)."""
    disp = numba.njit(nogil=True)(fn)
    try:
        disp._cache = _Cache(fn)  # what njit(cache=True) does, with mergec's locator
    except Exception:  # noqa: BLE001 - caching is an optimisation only
        pass
    return disp


@intrinsic
def _mulhilo(typingctx, a, b):
    """(high, low) 64-bit halves of the 128-bit product of two uint64 (one machine multiply
    on 64-bit targets)."""
    sig = types.UniTuple(types.uint64, 2)(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        wide = ir.IntType(128)
        prod = builder.mul(builder.zext(args[0], wide), builder.zext(args[1], wide))
        lo = builder.trunc(prod, ir.IntType(64))
        hi = builder.trunc(builder.lshr(prod, ir.Constant(wide, 64)), ir.IntType(64))
        return context.make_tuple(builder, signature.return_type, [hi, lo])

    return sig, codegen


@numba.njit(inline="always")
def _block(c0, c1, k0, k1):
    """The four words of Philox-4x64-10 for the counter (c0, c1, 0, 0) and key (k0, k1)."""
    c2 = np.uint64(0)
    c3 = np.uint64(0)
    for r in range(10):
        if r:
            k0 = k0 + _W0
            k1 = k1 + _W1
        h0, l0 = _mulhilo(_M0, c0)
        h1, l1 = _mulhilo(_M1, c2)
        c0 = h1 ^ c1 ^ k0
        c1 = l1
        c2 = h0 ^ c3 ^ k1
        c3 = l0
    return c0, c1, c2, c3


@numba.njit(inline="always")
def _counter(start):
    """(low, high) 64-bit limbs of the counter block holding word ``start`` (an int64, so the
    high limb starts at 0), and its lane."""
    return np.uint64(start) // _FOUR + _ONE, np.uint64(0), np.int64(np.uint64(start) % _FOUR)


@_jit
def _fill_mask(k0, k1, start, limit, out):
    """out[i] = word(start + i) < limit."""
    n = out.size
    c0, c1, lane = _counter(start)
    i = 0
    while i < n:
        w0, w1, w2, w3 = _block(c0, c1, k0, k1)
        if lane == 0 and i + 4 <= n:
            out[i] = w0 < limit
            out[i + 1] = w1 < limit
            out[i + 2] = w2 < limit
            out[i + 3] = w3 < limit
            i += 4
        else:
            ws = (w0, w1, w2, w3)
            while lane < 4 and i < n:
                out[i] = ws[lane] < limit
                i += 1
                lane += 1
        lane = 0
        c0 = c0 + _ONE
        if c0 == np.uint64(0):
            c1 = c1 + _ONE
    return out


@_jit
def _fill_uniform(k0, k1, start, out):
    """out[i] = float32(word(start + i) >> 40) * 2**-24."""
    n = out.size
    c0, c1, lane = _counter(start)
    i = 0
    while i < n:
        w0, w1, w2, w3 = _block(c0, c1, k0, k1)
        if lane == 0 and i + 4 <= n:
            out[i] = np.float32(w0 >> _SHIFT) * _SCALE
            out[i + 1] = np.float32(w1 >> _SHIFT) * _SCALE
            out[i + 2] = np.float32(w2 >> _SHIFT) * _SCALE
            out[i + 3] = np.float32(w3 >> _SHIFT) * _SCALE
            i += 4
        else:
            ws = (w0, w1, w2, w3)
            while lane < 4 and i < n:
                out[i] = np.float32(ws[lane] >> _SHIFT) * _SCALE
                i += 1
                lane += 1
        lane = 0
        c0 = c0 + _ONE
        if c0 == np.uint64(0):
            c1 = c1 + _ONE
    return out


def fill_mask(seed: int, stream: int, start: int, limit: int, out: np.ndarray) -> np.ndarray:
    """``out[i] = word(start + i) < limit`` for the (seed, stream) sequence; ``out`` a flat
    bool array. Releases the GIL."""
    return _fill_mask(np.uint64(seed), np.uint64(stream), np.int64(start), np.uint64(limit), out)


def fill_uniform(seed: int, stream: int, start: int, out: np.ndarray) -> np.ndarray:
    """``out[i] = (word(start + i) >> 40) * 2**-24`` as float32; ``out`` flat float32."""
    return _fill_uniform(np.uint64(seed), np.uint64(stream), np.int64(start), out)


@numba.njit(inline="always")
def _order_key(b):
    """The order key of a float32 bit pattern (see mergec.ops.rank.order_keys): NaN 0,
    -0.0 as 0.0, then the floats in order from 1."""
    if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint32(0)
    if b == np.uint32(0x80000000):
        b = np.uint32(0)
    if b >> np.uint32(31):
        return ~b + np.uint32(1)
    return (b | np.uint32(0x80000000)) + np.uint32(1)


@_jit
def _rank_rows(bits, out):
    m, n = bits.shape
    keys = np.empty(n, np.uint32)
    idx = np.empty(n, np.int32)
    tmp = np.empty(n, np.int32)
    count = np.empty((4, 256), np.int32)
    for r in range(m):
        count[:, :] = 0
        for i in range(n):  # the four byte histograms in one pass
            k = _order_key(bits[r, i])
            keys[i] = k
            idx[i] = n - 1 - i
            count[0, k & 255] += 1
            count[1, (k >> 8) & 255] += 1
            count[2, (k >> 16) & 255] += 1
            count[3, k >> 24] += 1
        for p in range(4):
            shift = 8 * p
            if count[p, (keys[0] >> shift) & 255] == n:  # every key has this byte: order unchanged
                continue
            total = 0
            for d in range(256):
                c = count[p, d]
                count[p, d] = total
                total += c
            for i in range(n):
                j = idx[i]
                d = (keys[j] >> shift) & 255
                tmp[count[p, d]] = j
                count[p, d] += 1
            idx, tmp = tmp, idx
        row = out[r]
        for i in range(n):
            row[idx[i]] = i
    return out


def rank_rows(x: np.ndarray, dtype=np.int64) -> np.ndarray:
    """Ranks per row of a 2-D float32 array, by the order keys of
    :func:`mergec.ops.rank.order_keys`: the position of each entry in the ascending order
    of keys, equal keys by descending index; as ``dtype`` (int64 or float32: converted as
    ``astype`` converts). Releases the GIL."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    if bits.shape[0] == 0 or bits.shape[1] == 0:
        return np.zeros(bits.shape, dtype=dtype)
    return _rank_rows(bits, np.empty(bits.shape, dtype=dtype))


@_jit
def _histogram(bits, shift, out):
    for i in range(bits.size):
        out[bits[i] >> shift] += 1
    return out


def histogram(bits: np.ndarray, shift: int) -> np.ndarray:
    """``numpy.bincount(bits >> shift, minlength=2**(32 - shift))`` of flat uint32 bit
    patterns, in one pass. Releases the GIL."""
    out = np.zeros(1 << (32 - shift), dtype=np.int64)
    return _histogram(np.ascontiguousarray(bits, dtype=np.uint32).reshape(-1), np.uint32(shift),
                      out)


@_jit
def _bucket_entries(bits, shift, bucket):
    n = 0
    for i in range(bits.size):
        if bits[i] >> shift == bucket:
            n += 1
    out = np.empty(n, np.uint32)
    j = 0
    for i in range(bits.size):
        if bits[i] >> shift == bucket:
            out[j] = bits[i]
            j += 1
    return out


def bucket_entries(bits: np.ndarray, shift: int, bucket: int) -> np.ndarray:
    """``bits[(bits >> shift) == bucket]`` of flat uint32 bit patterns, in order."""
    return _bucket_entries(np.ascontiguousarray(bits, dtype=np.uint32).reshape(-1),
                           np.uint32(shift), np.uint32(bucket))


def self_check() -> bool:
    """Do the compiled kernels reproduce NumPy? (Philox words against
    ``numpy.random.Philox.random_raw`` across counter blocks from an offset that is not a
    multiple of four, as masks and as floats; ranks against a stable argsort; a histogram
    and a bucket's entries against numpy.)"""
    seed, stream, start, n = 0x9E3779B97F4A7C15, 3, 4 * 1000 + 3, 37
    bg = np.random.Philox(key=np.array([seed, stream], dtype=np.uint64))
    words = bg.random_raw(start + n)[start:]
    limit = 1 << 63
    mask = fill_mask(seed, stream, start, limit, np.empty(n, dtype=bool))
    unit = fill_uniform(seed, stream, start, np.empty(n, dtype=np.float32))
    want = (words >> _SHIFT).astype(np.float32) * _SCALE
    vals = np.array([[5, 1, 5, 0, -0.0, np.nan, 300, -7, np.inf, 1e-40, 5, -np.inf, np.nan]],
                    dtype=np.float32)
    order = np.argsort(-vals, axis=-1, kind="stable")  # descending, NaN last, ties by index
    ranks = np.empty_like(order)
    ranks[0, order[0]] = np.arange(vals.shape[1] - 1, -1, -1)
    bits = (words >> np.uint64(32)).astype(np.uint32)
    hist = np.bincount(bits >> np.uint32(18), minlength=1 << 14)
    top = int(bits[5] >> np.uint32(18))
    return (np.array_equal(histogram(bits, 18), hist)
            and np.array_equal(bucket_entries(bits, 18, top),
                               bits[(bits >> np.uint32(18)) == top])
            and np.array_equal(mask, words < np.uint64(limit))
            and np.array_equal(unit.view(np.uint32), want.view(np.uint32))
            and np.array_equal(rank_rows(vals), ranks))
