"""The JAX backend (CPU or GPU): the array primitives in JAX.

The only module of mergec that imports jax.

Numbers
-------
* Compute is float32. The float64 steps (norms, dot products, L1 sums, the TIES vote) need
  JAX's 64-bit mode: every primitive runs under ``jax.enable_x64`` (a thread-local context,
  so the process-wide setting is left alone), and every array made here has an explicit
  dtype.
* Elementwise primitives run one at a time, so XLA cannot fuse ``a * b + c`` into a fused
  multiply-add (one rounding instead of numpy's two). Inside the jitted kernels
  (``wsum``, ``wsum64``, a division by a number) :func:`_rounded` and :func:`_div` stop both
  that fusion and the rewrite of a division by a number into a multiplication by its
  reciprocal, so weighted sums and every decision the methods make are bit-identical to the
  NumPy backend on the CPU. XLA's CPU runtime flushes subnormal float32 values to zero in
  arithmetic (a difference below 1.2e-38).
* Reductions accumulate in float64 in XLA's order, not numpy's, so norms and dot products
  may differ from the NumPy backend's in the last bits.
* Random numbers come from :mod:`mergec.ops.random` (numpy) and are moved to the device.

Top-k
-----
Exactly ``k`` entries, by magnitude, ties by lower flat index. On a GPU the mask comes from
:func:`_topk_mask`: a bitwise search for the ``k``-th largest key ``(magnitude bits, reversed
flat index)``, one counting pass per key bit and no sort, with ``k`` a traced argument. On the
CPU, where numpy's selection is several times faster than XLA's passes, masks and DELLA ranks
are computed on the host (``host_select``); both paths give the same masks, and
``JaxBackend(host_select=False)`` forces the device path (the tests run both).
"""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mergec.ops import random as rnd

from . import base as B
from .reference import rank_ascending as _host_rank
from .reference import topk_mask as _host_topk_mask

__all__ = ["JaxBackend", "kernel_traces", "topk_mask"]

Array = jax.Array

_F32 = np.float32
_Z = np.int32(0)  # a traced zero for _rounded (a constant would be folded away)
_Z64 = np.int64(0)
_CAST = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _x64() -> contextlib.AbstractContextManager:
    """Thread-local float64 support for the duration of a backend call."""
    ctx = getattr(jax, "enable_x64", None)
    if ctx is not None:
        return ctx(True)
    from jax.experimental import enable_x64  # older jax

    return enable_x64()


def _in_x64(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _x64():
            return fn(*args, **kwargs)
    return wrapper


# Kernels -----------------------------------------------------------------------------------

_TRACES: collections.Counter[str] = collections.Counter()


def _kernel(*static: str):
    """jax.jit with the given static argument names; counts its traces in _TRACES."""
    def deco(fn):
        name = fn.__name__.lstrip("_")

        @functools.wraps(fn)
        def traced(*args, **kwargs):
            _TRACES[name] += 1  # runs only while jax traces, i.e. once per compilation
            return fn(*args, **kwargs)

        return jax.jit(traced, static_argnames=static)
    return deco


def kernel_traces() -> dict[str, int]:
    """How many times each kernel has been traced (compiled) in this process."""
    return dict(_TRACES)


def _c_order(a: np.ndarray) -> np.ndarray:
    """`a` in C order, keeping its shape (np.ascontiguousarray turns a 0-d array into 1-d)."""
    return a if a.flags.c_contiguous else np.array(a, order="C")


def _rounded(p: Array, z: Array) -> Array:
    """``p`` with its float32 rounding made final: ``p`` reaches the next operation through an
    integer xor with the traced zero ``z``, so XLA cannot fuse the multiply that made ``p`` into
    a following add (a fused multiply-add rounds once, the reference twice)."""
    return lax.bitcast_convert_type(lax.bitcast_convert_type(p, jnp.int32) ^ z, jnp.float32)


def _rounded64(p: Array, z: Array) -> Array:
    """:func:`_rounded` for float64 values (``z`` an int64 zero)."""
    return lax.bitcast_convert_type(lax.bitcast_convert_type(p, jnp.int64) ^ z, jnp.float64)


def _div(x: Array, d: Array, z: Array) -> Array:
    """``x / d`` for a scalar ``d`` as a true division of every entry. XLA rewrites a division
    by a scalar into a multiplication by its reciprocal (which differs in the last bit); the
    divisor here is made per entry (its bits xor those of ``x`` masked by the traced zero ``z``),
    which the rewrite does not see through."""
    xb = lax.bitcast_convert_type(x, jnp.int32)
    db = lax.bitcast_convert_type(d, jnp.int32) ^ (xb & z)
    return x / lax.bitcast_convert_type(db, jnp.float32)


def _sum64(x: Array, axis=None) -> Array:
    return jnp.sum(x.astype(jnp.float64), axis=axis)


def _mag_bits(x: Array) -> Array:
    """Bit patterns of |x| as int32: ordered like the magnitudes (NaN above infinity)."""
    return lax.bitcast_convert_type(x, jnp.int32) & np.int32(0x7FFFFFFF)


@_kernel()
def _to_f32(x):
    return x.astype(jnp.float32)


@_kernel("dtype")
def _cast(x, dtype):
    return x.astype(_CAST[dtype])  # round to nearest even


@_kernel()
def _wsum(xs, cs, z):
    acc = _rounded(xs[0] * cs[0], z)
    for i in range(1, len(xs)):
        acc = acc + _rounded(xs[i] * cs[i], z)
    return acc


@_kernel()
def _wsum64(xs, cs, z):
    acc = _rounded64(xs[0].astype(jnp.float64) * cs[0], z)
    for i in range(1, len(xs)):
        acc = acc + _rounded64(xs[i].astype(jnp.float64) * cs[i], z)
    return acc


@_kernel()
def _gram_rows(xs):
    """Per row (first axis; one row for 0-D and 1-D), <x_i, x_j>: shape (rows, n, n),
    products in float32, sums in float64."""
    rows = [x.reshape(x.shape[0] if x.ndim >= 2 else 1, -1) for x in xs]
    n = len(rows)
    parts = {(i, j): _sum64(rows[i] * rows[j], 1) for i in range(n) for j in range(i, n)}
    return jnp.stack([jnp.stack([parts[min(i, j), max(i, j)] for j in range(n)], axis=-1)
                      for i in range(n)], axis=-2)


@_kernel()
def _topk_mask(x, k):
    """Mask of the ``k`` (traced, 0 < k < n) largest |x|, ties by lower flat index.

    Each entry has the key ``(bits(|x|), n - 1 - index)``: distinct keys ordered like the
    top-k order. The k-th largest key is found bit by bit from the top (one counting pass per
    bit: 31 magnitude bits and ceil(log2 n) index bits); the mask is ``key >= that key``.
    """
    n = x.size
    lbits = max(1, (n - 1).bit_length())
    itype = jnp.int32 if n < 2**31 else jnp.int64
    bits = _mag_bits(x.reshape(-1))
    ridx = (n - 1) - lax.iota(itype, n)
    low = (1 << lbits) - 1

    def at_least(t):  # key >= t, t an int64 key
        tb = (t >> lbits).astype(jnp.int32)
        ti = (t & low).astype(itype)
        return (bits > tb) | ((bits == tb) & (ridx >= ti))

    def step(i, t):
        cand = t | (jnp.int64(1) << (30 + lbits - i).astype(jnp.int64))
        count = jnp.sum(at_least(cand), dtype=itype)
        return jnp.where(count >= k, cand, t)

    thr = lax.fori_loop(0, 31 + lbits, step, jnp.int64(0))
    return at_least(thr).reshape(x.shape)


def _gpus() -> list:
    try:
        return list(jax.devices("gpu"))
    except RuntimeError:
        return []


def _resolve_device(device: str):
    d = str(device).strip().lower()
    if d == "auto":
        gpus = _gpus()
        return gpus[0] if gpus else jax.devices("cpu")[0]
    if d == "cpu":
        return jax.devices("cpu")[0]
    kind, _, index = d.partition(":")
    if kind in ("gpu", "cuda"):
        gpus = _gpus()
        if not gpus:
            raise B.BackendUnavailable(
                f"jax backend: device {device!r} asked for, but this JAX has no GPU (CUDA) "
                f"device; install a GPU build (pip install 'jax[cuda12]') or use the cpu")
        try:
            i = int(index) if index else 0
        except ValueError:
            raise B.BackendUnavailable(f"jax backend: unknown device {device!r}") from None
        if not 0 <= i < len(gpus):
            raise B.BackendUnavailable(f"jax backend: device {device!r} asked for, but there "
                                       f"are {len(gpus)} GPU devices")
        return gpus[i]
    raise B.BackendUnavailable(f"jax backend: unknown device {device!r}; use cpu, gpu (cuda), "
                               f"gpu:N or auto")


def topk_mask(x: Array, k: int, host_select: bool = False) -> Array:
    """bool mask of the ``k`` largest ``|x|`` (flat), ties by lowest flat index."""
    n = x.size
    dev = next(iter(x.devices()))
    if k >= n or k <= 0:
        return jax.device_put(np.full(x.shape, k > 0, dtype=bool), dev)
    with _x64():
        if host_select:
            mag = np.abs(np.asarray(jax.device_get(x)))
            return jax.device_put(_host_topk_mask(mag, int(k)), dev)
        return _topk_mask(x, np.int64(k))


@_kernel()
def _div_scalar(x, d, z):
    return _div(x, d, z)


def _x64_methods(cls):
    """Every public method of the class runs under ``jax.enable_x64``."""
    for name, fn in list(vars(cls).items()):
        if callable(fn) and not name.startswith("_"):
            setattr(cls, name, _in_x64(fn))
    return cls


def _is_num(b) -> bool:
    return isinstance(b, (int, float)) and not isinstance(b, bool)


@_x64_methods
class JaxBackend:
    """JAX backend; ``device`` is "cpu", "gpu" (alias "cuda"), "gpu:N"/"cuda:N" or "auto"
    (the first GPU if JAX has one, else the cpu).

    ``host_select``: compute top-k masks and DELLA ranks with numpy on the host (default: on
    the cpu only, where it is faster); the device path gives the same masks.
    """

    name = "jax"

    def __init__(self, device: str = "cpu", host_select: bool | None = None) -> None:
        self.device = _resolve_device(device)
        self.platform = self.device.platform
        self.host_select = (self.platform == "cpu") if host_select is None else bool(host_select)

    def __repr__(self) -> str:
        return f"JaxBackend(device={self.device!r}, host_select={self.host_select})"

    def _put(self, a: np.ndarray) -> Array:
        return jax.device_put(a, self.device)

    def _f32num(self, b):
        return np.float32(b) if _is_num(b) else b

    # conversion and shape ------------------------------------------------------------------

    def asarray(self, a: np.ndarray) -> Array:
        a = np.asarray(a)
        if self.platform != "cpu" and a.dtype in (B.storage_dtype("bfloat16"),
                                                  np.dtype(np.float16)):
            # half the bytes over the bus; the conversion to float32 is exact
            return _to_f32(self._put(_c_order(a)))
        if self.platform != "cpu" and a.dtype == np.float32:
            return self._put(_c_order(a))
        # a private float32 copy (bf16/f16 exact, f64 rounded to nearest even)
        return self._put(np.array(a, dtype=np.float32, copy=True))

    def to_numpy(self, x: Array, dtype: str) -> np.ndarray:
        target = B.storage_dtype(dtype)  # raises the error message for unknown names
        if self.platform != "cpu" and dtype in _CAST:
            # cast on the device (round to nearest even), half the bytes back
            return np.array(jax.device_get(_cast(x, dtype=dtype)), copy=True)
        return _c_order(np.asarray(jax.device_get(x))).astype(target)  # astype copies; RNE

    def host(self, a: np.ndarray) -> Array:
        return self._put(_c_order(np.asarray(a)))

    def to_float32(self, x: Array) -> Array:
        if not isinstance(x, jax.Array):
            return self.asarray(np.asarray(x))
        return x if x.dtype == jnp.float32 else _to_f32(x)  # round to nearest even

    def to_float64(self, x: Array) -> Array:
        return x.astype(jnp.float64)

    def copy(self, x: Array) -> Array:
        return jnp.array(x, copy=True)

    def zeros(self, shape: tuple[int, ...]) -> Array:
        return self._put(np.zeros(tuple(shape), dtype=np.float32))

    def zeros_like(self, x: Array) -> Array:
        return jnp.zeros(x.shape, dtype=x.dtype, device=self.device)

    def shape(self, x: Array) -> tuple[int, ...]:
        return tuple(x.shape)

    def size(self, x: Array) -> int:
        return int(x.size)

    def reshape(self, x: Array, shape: tuple[int, ...]) -> Array:
        return jnp.reshape(x, shape)

    def swapaxes(self, x: Array) -> Array:
        return jnp.swapaxes(x, -1, -2)

    def transpose(self, x: Array) -> Array:
        return jnp.transpose(x)

    def take(self, x: Array, axis: int, start: int, stop: int) -> Array:
        return lax.slice_in_dim(x, start, stop, axis=axis)

    def concat(self, xs, axis: int) -> Array:
        return jnp.concatenate(list(xs), axis=axis)

    # arithmetic ----------------------------------------------------------------------------

    def wsum(self, terms: Sequence[tuple[Array, float]]) -> Array:
        if not terms:
            raise ValueError("weighted_sum of no terms")
        return _wsum(tuple(self.to_float32(x) for x, _ in terms),
                     np.array([float(c) for _, c in terms], dtype=np.float32), _Z)

    def wsum64(self, terms: Sequence[tuple[Array, float]]) -> Array:
        if not terms:
            raise ValueError("weighted_sum64 of no terms")
        return _wsum64(tuple(x for x, _ in terms),
                       np.array([float(c) for _, c in terms], dtype=np.float64), _Z64)

    def _scalar_for(self, a, b):
        """A Python number in the dtype of the array it meets."""
        if _is_num(b) and hasattr(a, "dtype"):
            return np.asarray(b, dtype=a.dtype)
        return b

    def add(self, a, b):
        return jnp.add(self._scalar_for(b, a), self._scalar_for(a, b))

    def sub(self, a, b):
        return jnp.subtract(self._scalar_for(b, a), self._scalar_for(a, b))

    def mul(self, a, b):
        return jnp.multiply(self._scalar_for(b, a), self._scalar_for(a, b))

    def div(self, a, b):
        if _is_num(b) and a.dtype == jnp.float32:
            return _div_scalar(a, np.float32(b), _Z)
        return jnp.true_divide(self._scalar_for(b, a), self._scalar_for(a, b))

    def abs(self, x):
        return jnp.abs(x)

    def sign(self, x):
        return jnp.sign(x)

    def minimum(self, a, b):
        return jnp.minimum(self._scalar_for(b, a), self._scalar_for(a, b))

    def maximum(self, a, b):
        return jnp.maximum(self._scalar_for(b, a), self._scalar_for(a, b))

    def clip(self, x, lo: float, hi: float):
        return jnp.clip(x, np.float32(lo), np.float32(hi))

    def scale_rows(self, x, coef: np.ndarray):
        return self._put(np.ascontiguousarray(coef, dtype=np.float32))[..., None] * x

    # comparison and selection --------------------------------------------------------------

    def gt(self, a, b):
        return jnp.greater(a, self._scalar_for(a, b))

    def lt(self, a, b):
        return jnp.less(a, self._scalar_for(a, b))

    def ge(self, a, b):
        return jnp.greater_equal(a, self._scalar_for(a, b))

    def ne(self, a, b):
        return jnp.not_equal(a, self._scalar_for(a, b))

    def and_(self, a, b):
        return jnp.logical_and(a, b)

    def or_(self, a, b):
        return jnp.logical_or(a, b)

    def not_(self, a):
        return jnp.logical_not(a)

    def where(self, mask, a, b):
        a = np.float32(a) if _is_num(a) else a
        b = np.float32(b) if _is_num(b) else b
        return jnp.where(mask, a, b)

    def keep(self, x, mask):
        return jnp.where(mask, x, jnp.zeros((), dtype=x.dtype))

    # reductions ----------------------------------------------------------------------------

    def sum64(self, x) -> float:
        return float(jax.device_get(_sum64(x)))

    def abs_sum64(self, x) -> float:
        return float(B.total([self.abs_rows(x)]))

    def gram(self, xs) -> np.ndarray:
        return B.total([self.gram_rows(xs)])

    def gram_rows(self, xs) -> np.ndarray:
        """Per-row partial inner products (float64 sums of the float32 products), computed
        on the device; one (rows, n, n) array crosses to the host."""
        return np.asarray(jax.device_get(_gram_rows(tuple(xs))), dtype=np.float64)

    def abs_rows(self, x) -> np.ndarray:
        rows = x.shape[0] if x.ndim >= 2 else 1
        part = jnp.sum(jnp.abs(x.reshape(rows, -1).astype(jnp.float64)), axis=1)
        return np.asarray(jax.device_get(part), dtype=np.float64)

    def row_dots(self, a, b) -> np.ndarray:
        return np.asarray(jax.device_get(_sum64(a * b, -1)), dtype=np.float64)

    # ranking, randomness, linear algebra ---------------------------------------------------

    def topk_mask(self, mag, k: int):
        return topk_mask(mag, int(k), host_select=self.host_select)

    def rank_ascending(self, rows):
        if self.host_select:
            host = np.asarray(jax.device_get(rows))
            return self._put(_host_rank(host).astype(np.float32))
        order = jnp.argsort(-rows, axis=-1, stable=True)  # descending, ties by index
        pos = jnp.argsort(order, axis=-1, stable=True)
        return ((rows.shape[-1] - 1) - pos).astype(jnp.float32)

    def keep_mask(self, seed: int, stream: int, shape, density: float):
        return self._put(rnd.keep_mask(seed, stream, tuple(shape), density))

    def uniform(self, seed: int, stream: int, shape):
        return self._put(rnd.uniform(seed, stream, tuple(shape)))

    def matmul(self, a, b):
        return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)

    def svd(self, x):
        u, s, vt = jnp.linalg.svd(x.astype(jnp.float64), full_matrices=False)
        return u, s, vt

    def solve(self, a, b):
        return jnp.linalg.solve(a.astype(jnp.float64), b.astype(jnp.float64))
