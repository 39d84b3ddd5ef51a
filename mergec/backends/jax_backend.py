"""The JAX backend (CPU or GPU).

Same semantics as :mod:`mergec.backends.reference` (its module docstring lists every method's
rules); this module is the only place in mergec that imports jax.

Kernels
-------
Every step is a ``jax.jit`` kernel defined once at module level, so XLA compiles it once per
(kernel, static parameters, shapes, dtypes) and every backend instance in the process shares
the compiled code. What changes from tensor to tensor (weights, ``t``, densities, ``lambda``,
kept counts, thresholds) is passed as traced arguments, so a ramp or a per-input density never
triggers a recompile; only strings and flags (``elect``, ``normalize``, ``rescale``,
row/column choice) are static. :func:`kernel_traces` counts how often each kernel was traced
(compiled).

Numbers
-------
* Compute is float32 (arrays are float32 on the device). The float64 steps of the contract
  (norms, dot products, L1 sums, the TIES vote) run in float64 inside the kernels: every call
  into this backend runs under ``jax.enable_x64`` (a thread-local context, so the process-wide
  setting is left alone), and every array the kernels make has an explicit dtype.
* Elementwise arithmetic is the reference's sequence of operations, one rounding per
  operation. XLA would fuse ``a * b + c`` into a fused multiply-add (one rounding, a different
  last bit) and turn a division by a scalar into a multiplication by its reciprocal;
  :func:`_rounded` and :func:`_div` stop both, so weighted sums (float32 and float64), the
  disjoint merge, the DARE rescale and the SCE variance are bit-identical to the reference on
  the CPU.
* Decisions (top-k, DELLA ranks) are made on the integer bit patterns of the magnitudes,
  which order non-negative floats exactly, so they never depend on how the device treats
  subnormal numbers. XLA's CPU runtime flushes subnormal float32 values (magnitude below
  1.18e-38) to zero in arithmetic; such values can come out as 0 where the reference keeps
  them (an absolute difference below 1.2e-38).
* Reductions accumulate in float64 in XLA's order, not numpy's, so norms and dot products may
  differ from the reference in the last bits of a float64; the results of slerp, nuslerp,
  multislerp, karcher, model_stock, sce and the l1 rescale agree within 1e-6 relative.
* Random numbers come from :mod:`mergec.ops.random` (numpy) and are moved to the device, so
  DARE and DELLA masks equal the reference's (and torch's) for the same seed, bit for bit.

Top-k
-----
Exactly ``k`` entries, by magnitude, ties by lower flat index (see :mod:`.base`). On a GPU the
mask comes from :func:`_topk_mask`: a bitwise search for the ``k``-th largest key ``(magnitude
bits, reversed flat index)``, one counting pass per key bit and no sort, with ``k`` a traced
argument (``jax.lax.top_k`` needs a static ``k``, which would compile a kernel per density and
tensor size). On the CPU, where numpy's selection is several times faster than XLA's passes,
the mask is computed on the host with the reference's selection (``host_select``); DELLA's
per-row ranks likewise (a stable sort on the device, numpy's on the CPU). Both paths give the
same masks; ``JaxBackend(host_select=False)`` forces the device path (the tests run both).
"""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mergec.ops import random as rnd

from . import base as B
from .reference import topk_mask as _host_topk_mask

__all__ = ["JaxBackend", "kernel_traces", "topk_mask"]

Array = jax.Array

_F32 = np.float32
_Z = np.int32(0)  # a traced zero for _rounded (a constant would be folded away)
_Z64 = np.int64(0)
_RESCALES = ("inverse", "l1", "none")
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


def _rows(x: Array) -> Array:
    return x.reshape(B.rows_shape(x.shape))


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


@_kernel("transpose")
def _lowrank(b, a, scale, transpose):
    d = jnp.matmul(b, a, precision=lax.Precision.HIGHEST) * scale
    return d.T if transpose else d


@_kernel()
def _gram(xs):
    """<x_i, x_j> for i <= j (row-major upper triangle), products in float32, sums in float64."""
    n = len(xs)
    return jnp.stack([_sum64(xs[i] * xs[j]) for i in range(n) for j in range(i, n)])


@_kernel()
def _row_gram(xs):
    """Per-row <x_i, x_j> for i <= j: float64 of shape (rows, pairs)."""
    rs = [_rows(x) for x in xs]
    n = len(rs)
    return jnp.stack([_sum64(rs[i] * rs[j], axis=-1) for i in range(n) for j in range(i, n)],
                     axis=-1)


@_kernel("cols")
def _pair_row_dots(a, b, cols):
    """|a|^2, |b|^2, <a, b> over the last axis (over axis -2 with ``cols``), in float64."""
    if cols:
        a, b = jnp.swapaxes(a, -1, -2), jnp.swapaxes(b, -1, -2)
    return jnp.stack([_sum64(a * a, -1), _sum64(b * b, -1), _sum64(a * b, -1)])


@_kernel("cols")
def _row_slerp(a, b, c0, c1, z, cols):
    if cols:
        a, b = jnp.swapaxes(a, -1, -2), jnp.swapaxes(b, -1, -2)
    out = _rounded(c0[..., None] * a, z) + _rounded(c1[..., None] * b, z)
    return jnp.swapaxes(out, -1, -2) if cols else out


@_kernel()
def _rows_sum_scale(xs, coef):
    acc = _rows(xs[0])
    for x in xs[1:]:
        acc = acc + _rows(x)
    return (acc * coef[:, None]).reshape(xs[0].shape)


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


@_kernel()
def _keep(x, mask):
    return jnp.where(mask, x, jnp.float32(0))


@_kernel()
def _keep_band(x, hi, lo):
    return jnp.where(hi & ~lo, x, jnp.float32(0))


@_kernel()
def _drop(x, lo):
    return jnp.where(lo, jnp.float32(0), x)


@_kernel()
def _keep_at_least(x, thr_bits):
    return jnp.where(_mag_bits(x) >= thr_bits, x, jnp.float32(0))


def _rescale(kept, orig, mode, inverse_of, z):
    if mode == "inverse":
        return _div(kept, inverse_of, z) if inverse_of.ndim == 0 else kept / inverse_of
    if mode == "l1":
        s_kept = _sum64(jnp.abs(kept))
        s_orig = _sum64(jnp.abs(orig))
        ratio = (s_orig / jnp.where(s_kept == 0, 1.0, s_kept)).astype(jnp.float32)
        return jnp.where(s_kept == 0, jnp.zeros_like(kept), kept * ratio)
    return kept  # "none"


@_kernel("mode")
def _dare_keep(x, mask, density, z, mode):
    return _rescale(jnp.where(mask, x, jnp.float32(0)), x, mode, density, z)


@_kernel()
def _della_prob(x, table_desc):
    """Keep probabilities: per row, the entry at position j of the descending magnitude order
    (ties by lower index) gets ``table_desc[j]`` (its rank is n - 1 - j)."""
    rows, n = B.rows_shape(x.shape)
    bits = _mag_bits(x.reshape(rows, n))
    idx = lax.broadcasted_iota(jnp.int32, (rows, n), 1)
    _, order = lax.sort((-bits, idx), dimension=1, num_keys=2)
    prob = jnp.zeros((rows, n), jnp.float32)
    row = lax.broadcasted_iota(jnp.int32, (rows, n), 0)
    return prob.at[row, order].set(jnp.broadcast_to(table_desc, (rows, n)),
                                   unique_indices=True)


@_kernel("mode")
def _della_keep(x, prob, u, z, mode):
    xr = _rows(x)
    keep = u.reshape(xr.shape) < prob
    kept = jnp.where(keep, xr, jnp.float32(0))
    safe_p = jnp.where(keep, prob, jnp.float32(1))
    return _rescale(kept, xr, mode, safe_p, z).reshape(x.shape)


@_kernel("elect", "normalize")
def _disjoint(taus, w, vote_w, lam, z, elect, normalize):
    """TIES sign election (float64 vote, in input order) and disjoint merge, times lambda."""
    vote = jnp.zeros(taus[0].shape, jnp.float64)
    for i, tau in enumerate(taus):
        if elect == "mass":
            vote = vote + tau.astype(jnp.float64) * vote_w[i]  # exact products
        else:
            vote = vote + jnp.sign(tau).astype(jnp.float64)
    gamma = jnp.sign(vote).astype(jnp.float32)
    zero = jnp.float32(0)
    num = jnp.zeros(taus[0].shape, jnp.float32)
    den = jnp.zeros(taus[0].shape, jnp.float32)
    for i, tau in enumerate(taus):
        agree = (jnp.sign(tau) == gamma) & (gamma != 0)
        num = num + jnp.where(agree, _rounded(tau * w[i], z), zero)
        den = den + jnp.where(agree, w[i], zero)
    if normalize:
        ok = den != 0
        num = jnp.where(ok, num / jnp.where(ok, den, jnp.float32(1)), zero)
    return num * lam


@_kernel()
def _sce_var(xs, count, z):
    acc = xs[0]
    for x in xs[1:]:
        acc = acc + x
    mean = _div(acc, count, z)
    var = jnp.zeros(xs[0].shape, jnp.float32)
    for x in xs:
        dev = x - mean
        var = var + _rounded(dev * dev, z)
    return var


@_kernel()
def _energies(taus):
    return jnp.stack([_sum64(t * t) for t in taus])


@_kernel()
def _nearswap(tau, t, floor):
    w = jnp.clip(t / jnp.maximum(jnp.abs(tau), floor), jnp.float32(0), jnp.float32(1))
    return w * tau


# Host helpers ------------------------------------------------------------------------------


def _host_rank(mag_rows: np.ndarray) -> np.ndarray:
    """Per row rank of the magnitude, 0 smallest; equal values: the lower index ranks higher
    (the reference's ranking)."""
    order = np.argsort(-mag_rows, axis=-1, kind="stable")
    n = mag_rows.shape[-1]
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.arange(n)[None, :].repeat(mag_rows.shape[0], 0), axis=-1)
    return (n - 1) - pos


def _della_table(offset: np.float32, step: np.float32, n: int) -> np.ndarray:
    """``min(offset + step * rank, 1)`` for rank 0..n-1, in float32 as the reference does."""
    r = np.arange(n).astype(np.float32)
    return np.minimum(offset + step * r, _F32(1.0))


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
        self._kernels = B.kernel_table(self)

    def __repr__(self) -> str:
        return f"JaxBackend(device={self.device!r}, host_select={self.host_select})"

    # contract ------------------------------------------------------------------------------

    @property
    def method_names(self) -> frozenset[str]:
        return frozenset(self._kernels)

    def _put(self, a: np.ndarray) -> Array:
        return jax.device_put(a, self.device)

    @_in_x64
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

    @_in_x64
    def to_numpy(self, x: Array, dtype: str) -> np.ndarray:
        target = B.storage_dtype(dtype)  # raises the error message for unknown names
        if self.platform != "cpu" and dtype in _CAST:
            # cast on the device (round to nearest even), half the bytes back
            return np.array(jax.device_get(_cast(x, dtype=dtype)), copy=True)
        return np.asarray(jax.device_get(x)).astype(target)  # astype copies; RNE

    @_in_x64
    def weighted_sum(self, terms: Sequence[tuple[Array, float]]) -> Array:
        if not terms:
            raise ValueError("weighted_sum of no terms")
        return self._wsum([x for x, _ in terms], [c for _, c in terms])

    @_in_x64
    def weighted_sum64(self, terms: Sequence[tuple[Array, float]]) -> Array:
        if not terms:
            raise ValueError("weighted_sum64 of no terms")
        return _wsum64(tuple(x for x, _ in terms),
                       np.array([float(c) for _, c in terms], dtype=np.float64), _Z64)

    @_in_x64
    def to_float32(self, x: Array) -> Array:
        return x if x.dtype == jnp.float32 else _to_f32(x)  # round to nearest even

    def _wsum(self, xs: Sequence[Array], cs: Sequence[float]) -> Array:
        return _wsum(tuple(xs), np.array([float(c) for c in cs], dtype=np.float32), _Z)

    @_in_x64
    def lowrank(self, b: Array, a: Array, scale: float, transpose: bool) -> Array:
        return _lowrank(self._f32(b), self._f32(a), _F32(scale), transpose=bool(transpose))

    @_in_x64
    def zeros(self, shape: tuple[int, ...]) -> Array:
        return self._put(np.zeros(tuple(shape), dtype=np.float32))

    @_in_x64
    def method(self, name: str, inputs: Sequence[Array], params: Mapping[str, Any],
               seed: int | None) -> Array:
        kernel = self._kernels.get(name)
        if kernel is None:
            raise NotImplementedError(f"the {self.name} backend has no kernel for method {name}")
        return kernel([self._f32(x) for x in inputs], params, seed)

    def _f32(self, x: Array) -> Array:
        if not isinstance(x, jax.Array):
            return self.asarray(np.asarray(x))
        return x if x.dtype == jnp.float32 else _to_f32(x)

    # shared steps --------------------------------------------------------------------------

    def _mask(self, x: Array, k: int) -> Array | None:
        """Top-k mask by |x| for 0 < k; None when every entry is kept (k >= n)."""
        if k >= x.size:
            return None
        return topk_mask(x, k, host_select=self.host_select)

    def _gram(self, xs: Sequence[Array]) -> np.ndarray:
        n = len(xs)
        vals = np.asarray(jax.device_get(_gram(tuple(xs))), dtype=np.float64)
        g = np.zeros((n, n), dtype=np.float64)
        it = iter(vals)
        for i in range(n):
            for j in range(i, n):
                g[i, j] = g[j, i] = next(it)
        return g

    # linear family -------------------------------------------------------------------------

    def _combine(self, xs, weights, normalize, scale, method):
        total = B.sum_of_weights(weights, method) if normalize else 1.0
        return self._wsum(xs, [scale * w / total for w in weights])

    def _linear(self, xs, p, seed):
        B.check_inputs("linear", [tuple(x.shape) for x in xs])
        w = B.per_input(p, "weight", len(xs), "linear")
        return self._combine(xs, w, bool(B.scalar(p, "normalize", "linear")), 1.0, "linear")

    def _task_arithmetic(self, xs, p, seed):
        m = "task_arithmetic"
        B.check_inputs(m, [tuple(x.shape) for x in xs])
        w = B.per_input(p, "weight", len(xs), m)
        return self._combine(xs, w, bool(B.scalar(p, "normalize", m)),
                             float(B.scalar(p, "lambda", m)), m)

    def _passthrough(self, xs, p, seed):
        B.check_inputs("passthrough", [tuple(x.shape) for x in xs], 1, 1)
        scale = float(B.scalar(p, "scale", "passthrough"))
        return self._wsum(xs, [scale]) if scale != 1.0 else xs[0]  # arrays are immutable

    # spherical -----------------------------------------------------------------------------

    def _slerp(self, xs, p, seed):
        B.check_inputs("slerp", [tuple(x.shape) for x in xs], 2, 2)
        return self._slerp_whole(xs[0], xs[1], float(B.scalar(p, "t", "slerp")),
                                 float(B.scalar(p, "epsilon", "slerp")))

    def _slerp_whole(self, a, b, t, eps):
        g = self._gram([a, b])
        c0, c1 = B.slerp_coefficients(g[0, 0], g[1, 1], g[0, 1], t, eps)
        return self._wsum([a, b], [float(c0[0]), float(c1[0])])

    def _nuslerp(self, xs, p, seed):
        m = "nuslerp"
        B.check_inputs(m, [tuple(x.shape) for x in xs], 2, 2)
        w = B.per_input(p, "weight", 2, m)
        if w[0] + w[1] == 0.0:
            raise ValueError(f"method {m}: the two weights sum to 0 (weights {list(w)})")
        t = w[1] / (w[0] + w[1])
        eps = float(B.scalar(p, "epsilon", m))
        a, b = xs
        if bool(B.scalar(p, "flatten", m)) or a.ndim < 2:
            return self._slerp_whole(a, b, t, eps)
        cols = not bool(B.scalar(p, "row_wise", m))
        g = np.asarray(jax.device_get(_pair_row_dots(a, b, cols=cols)), dtype=np.float64)
        c0, c1 = B.slerp_coefficients(g[0], g[1], g[2], t, eps)
        return _row_slerp(a, b, self._put(c0.astype(np.float32)),
                          self._put(c1.astype(np.float32)), _Z, cols=cols)

    def _spherical(self, xs, p, method, zero_norm, max_iter, tol):
        B.check_inputs(method, [tuple(x.shape) for x in xs], 2)
        w = B.per_input(p, "weight", len(xs), method)
        coef = B.spherical_mean_coefficients(self._gram(xs), w, zero_norm, max_iter, tol, method)
        return self._wsum(xs, [float(c) for c in coef])

    def _multislerp(self, xs, p, seed):
        return self._spherical(xs, p, "multislerp", float(B.scalar(p, "epsilon", "multislerp")),
                               1, 0.0)

    def _karcher(self, xs, p, seed):
        return self._spherical(xs, p, "karcher", B.ZERO_NORM,
                               int(B.scalar(p, "max_iter", "karcher")),
                               float(B.scalar(p, "tol", "karcher")))

    # sparsify + consensus ------------------------------------------------------------------

    def _disjoint(self, taus, weights, elect, weighted_elect, normalize, lam, method):
        if elect not in ("mass", "count"):
            raise ValueError(f"method {method}: unknown elect {elect!r}")
        w32 = np.array([float(x) for x in weights], dtype=np.float32)
        vote_w = (w32.astype(np.float64) if weighted_elect
                  else np.ones(len(taus), dtype=np.float64))
        return _disjoint(tuple(taus), w32, vote_w, _F32(lam), _Z, elect=elect,
                         normalize=bool(normalize))

    def _consensus(self, taus, p, method):
        w = B.per_input(p, "weight", len(taus), method)
        return self._disjoint(taus, w, str(B.scalar(p, "elect", method)),
                              bool(B.scalar(p, "weighted_elect", method)),
                              bool(B.scalar(p, "normalize", method)),
                              float(B.scalar(p, "lambda", method)), method)

    def _ties(self, xs, p, seed):
        m = "ties"
        B.check_inputs(m, [tuple(x.shape) for x in xs])
        trim = str(B.scalar(p, "trim", m))
        if "masks" in p:  # trim masks made by the executor for a block of rows
            taus = [_keep(x, self._put(np.asarray(k, dtype=bool))) for x, k in zip(xs, p["masks"])]
        elif trim == "tensor":
            dens = B.per_input(p, "density", len(xs), m)
            taus = []
            for x, d in zip(xs, dens):
                mask = self._mask(x, B.keep_count(d, x.size))
                taus.append(x if mask is None else _keep(x, mask))
        elif trim == "model":
            if "thresholds" not in p:
                raise ValueError("method ties with trim=\"model\" needs the per-input parameter "
                                 "'thresholds' (magnitudes computed over the whole model)")
            thr = B.per_input(p, "thresholds", len(xs), m)
            # |x| >= t on bit patterns (t <= 0 keeps everything)
            keys = [np.int32(np.float32(t).view(np.int32)) if t > 0 else np.int32(0)
                    for t in thr]
            taus = [_keep_at_least(x, key) for x, key in zip(xs, keys)]
        else:
            raise ValueError(f"method ties: unknown trim {trim!r}")
        return self._consensus(taus, p, m)

    def _dare(self, xs, p, seed, method):
        B.check_inputs(method, [tuple(x.shape) for x in xs])
        dens = B.per_input(p, "density", len(xs), method)
        mode = str(B.scalar(p, "rescale", method))
        out = []
        for i, (x, d) in enumerate(zip(xs, dens)):
            if d >= 1.0:
                out.append(x)
                continue
            if seed is None:
                raise ValueError(f"method {method} draws random numbers and needs a seed")
            if mode not in _RESCALES:
                raise ValueError(f"method {method}: unknown rescale {mode!r}")
            mask = self._put(np.asarray(p["masks"][i], dtype=bool) if "masks" in p else
                             rnd.keep_mask(seed, i, tuple(x.shape), d))
            if mode == "l1" and "l1_scales" in p:  # the whole tensor's L1 ratio, for a block
                sc = p["l1_scales"][i]
                out.append(jnp.where(mask, x, jnp.float32(0)) * jnp.float32(sc) if sc else
                           jnp.zeros_like(x))
                continue
            out.append(_dare_keep(x, mask, _F32(d), _Z, mode=mode))
        return out

    def _dare_linear(self, xs, p, seed):
        m = "dare_linear"
        taus = self._dare(xs, p, seed, m)
        return self._combine(taus, B.per_input(p, "weight", len(xs), m),
                             bool(B.scalar(p, "normalize", m)), float(B.scalar(p, "lambda", m)), m)

    def _dare_ties(self, xs, p, seed):
        return self._consensus(self._dare(xs, p, seed, "dare_ties"), p, "dare_ties")

    def _breadcrumbs_masks(self, xs, p, method):
        B.check_inputs(method, [tuple(x.shape) for x in xs])
        dens = B.per_input(p, "density", len(xs), method)
        gams = B.per_input(p, "gamma", len(xs), method)
        out = []
        for x, d, g in zip(xs, dens, gams):
            top, kept = B.breadcrumbs_counts(d, g, x.size)
            hi = self._mask(x, top + kept)
            lo = self._mask(x, top) if top else None
            if lo is None:
                out.append(x if hi is None else _keep(x, hi))
            else:
                out.append(_drop(x, lo) if hi is None else _keep_band(x, hi, lo))
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
        B.check_inputs(method, [tuple(x.shape) for x in xs])
        dens = B.per_input(p, "density", len(xs), method)
        epss = B.per_input(p, "epsilon", len(xs), method)
        mode = str(B.scalar(p, "rescale", method))
        out = []
        for i, (x, d, e) in enumerate(zip(xs, dens, epss)):
            shape = tuple(x.shape)
            rows, n = B.rows_shape(shape)
            offset, step = B.della_line(d, e, n)
            if x.size == 0 or (offset >= 1.0 and step == 0.0):  # p = 1 everywhere
                out.append(x)
                continue
            if seed is None:
                raise ValueError(f"method {method} draws random numbers and needs a seed")
            if mode not in _RESCALES:
                raise ValueError(f"method {method}: unknown rescale {mode!r}")
            table = _della_table(offset, step, n)
            if self.host_select:
                rank = _host_rank(np.abs(np.asarray(jax.device_get(x))).reshape(rows, n))
                prob = self._put(table[rank])
            else:
                prob = _della_prob(x, self._put(np.ascontiguousarray(table[::-1])))
            u = self._put(rnd.uniform(seed, i, shape))
            out.append(_della_keep(x, prob, u, _Z, mode=mode))
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
        B.check_inputs(m, [tuple(x.shape) for x in xs], 2)
        n_in = len(xs)
        if bool(B.scalar(p, "filter_wise", m)) and xs[0].ndim >= 2:
            pairs = np.asarray(jax.device_get(_row_gram(tuple(xs))), dtype=np.float64)
            g = np.zeros((pairs.shape[0], n_in, n_in), dtype=np.float64)
            k = 0
            for i in range(n_in):
                for j in range(i, n_in):
                    g[:, i, j] = g[:, j, i] = pairs[:, k]
                    k += 1
            t = B.model_stock_ratio(g)
            return _rows_sum_scale(tuple(xs), self._put((t / n_in).astype(np.float32)))
        t = float(B.model_stock_ratio(self._gram(xs)[None])[0])
        return self._wsum(xs, [t / n_in] * n_in)

    def _sce(self, xs, p, seed):
        m = "sce"
        B.check_inputs(m, [tuple(x.shape) for x in xs])
        frac = float(B.scalar(p, "select_topk", m))
        size = xs[0].size
        k = B.keep_count(frac, size)
        taus = list(xs)
        if k < size:
            var = _sce_var(tuple(xs), _F32(len(xs)), _Z)
            mask = self._mask(var, k)
            taus = [_keep(x, mask) for x in xs]
        sums = np.asarray(jax.device_get(_energies(tuple(taus))), dtype=np.float64)
        energy = [float(s) / max(size, 1) for s in sums]
        total = sum(energy)
        if total == 0.0:
            return self._put(np.zeros(tuple(xs[0].shape), dtype=np.float32))
        omega = [e / total for e in energy]
        return self._disjoint(taus, omega, "mass", False, True,
                              float(B.scalar(p, "lambda", m)), m)

    def _nearswap(self, xs, p, seed):
        m = "nearswap"
        B.check_inputs(m, [tuple(x.shape) for x in xs], 1, 1)
        t = _F32(float(B.scalar(p, "t", m)))
        return _nearswap(xs[0], t, _F32(B.NEARSWAP_FLOOR))
