"""Backend-independent random numbers for the random merge methods (DARE, DELLA).

Every random draw in mergec is made here, in numpy, and handed to the backend as an array.
That way a mask is the same on every backend (numpy reference, torch on CPU or GPU, JAX) for
the same seed, and it does not depend on execution order, thread count or device.

The generator is counter based: ``numpy.random.Philox`` (Philox-4x64-10) keyed by
``(seed, stream)``, where ``seed`` is the 64-bit per-tensor seed the compiler derives with
:func:`derive_seed` and ``stream`` is the index of the input the numbers are for.

Layout of the numbers (this is a stable format; changing it changes every random merge):

* the generator is read as a sequence of raw 64-bit words, ``random_raw`` order;
* value ``j`` (row-major flat index ``j`` of the tensor) is raw word ``j``;
* a word ``r`` becomes the float32 ``(r >> 40) * 2**-24``, which is exact and lies in
  ``[0, 1)`` (24 random bits, the full float32 mantissa).

Because Philox produces four words per counter step, the words of any flat range
``[a, b)`` can be produced without the ones before it: advance the counter by ``a // 4``
(``Philox.advance``) and discard ``a % 4`` words. :func:`uniform_rows` does that for a block
of rows, so a future row-chunked executor draws exactly the numbers the whole-tensor draw
would have given for those rows. The same property lets a large draw be cut into blocks that
are generated in parallel threads (``_fill``); the numbers never depend on the blocking.

Two implementations make the same words. NumPy's ``Philox.random_raw`` is the reference and
the fallback; a compiled kernel (:mod:`mergec.ops.philox_jit`, with numba: ``pip install
'mergec[fast]'``) computes the words and turns them into the mask or the floats in one pass,
about three times faster and without the 8-byte intermediate words. It is loaded (numba
imported, its cached machine code read: a few tenths of a second) on the first draw of at
least :data:`JIT_MIN_VALUES` values, checked against NumPy on a short draw, and used for
every draw from then on; when numba is missing, fails or disagrees, NumPy is used.
``MERGEC_NO_JIT=1`` in the environment forces NumPy.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from mergec.lazy import lazy_module

np = lazy_module("numpy")  # the IR imports derive_seed; numpy loads when words are drawn

__all__ = ["derive_seed", "uniform", "uniform_rows", "keep_mask"]

_MASK64 = (1 << 64) - 1
_WORDS_PER_STEP = 4  # Philox-4x64 gives four 64-bit words per counter increment
_SCALE = 2.0**-24  # 24 random bits -> [0, 1) in float32
_CHUNK = 1 << 21  # values per block of a large draw (a multiple of _WORDS_PER_STEP)

#: the smallest draw that loads the compiled kernel (smaller ones use it once it is loaded)
JIT_MIN_VALUES = 1 << 20

_jit: list = []  # [the kernel module, or None where it is unavailable], once tried


def derive_seed(seed: int, *names: str) -> int:
    """A stable 64-bit seed from a recipe seed and names (e.g. output name, tensor name).

    blake2b (8-byte digest) of the seed, as 8 little-endian bytes of ``seed mod 2**64``,
    followed by each name as UTF-8 with its length prepended (so ``("ab", "c")`` and
    ``("a", "bc")`` give different seeds). The same arguments give the same seed on every
    platform and Python version.
    """
    h = hashlib.blake2b(digest_size=8, person=b"mergec-seed")
    h.update(struct.pack("<Q", int(seed) & _MASK64))
    for name in names:
        data = str(name).encode("utf-8")
        h.update(struct.pack("<Q", len(data)))
        h.update(data)
    return int.from_bytes(h.digest(), "little")


def _shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def _generator(seed: int, stream: int) -> np.random.Philox:
    if stream < 0:
        raise ValueError(f"random stream must be >= 0, got {stream}")
    return np.random.Philox(key=np.array([int(seed) & _MASK64, int(stream) & _MASK64],
                                         dtype=np.uint64))


def _chunks(count: int) -> list[tuple[int, int]]:
    """(offset into the output, length) blocks of at most ``_CHUNK`` values."""
    return [(off, min(_CHUNK, count - off)) for off in range(0, count, _CHUNK)]


def _words(seed: int, stream: int, start: int, count: int) -> np.ndarray:
    """Raw words ``[start, start + count)`` of the (seed, stream) sequence."""
    bg = _generator(seed, stream)
    steps, skip = divmod(start, _WORDS_PER_STEP)
    if steps:
        bg.advance(steps)
    return bg.random_raw(count + skip)[skip:]


def compiled_kernels(count: int = JIT_MIN_VALUES):
    """The compiled kernel module for a draw of ``count`` values, or None: NumPy is used
    (forced by ``MERGEC_NO_JIT``, numba not installed or failing, or a draw too small to be
    worth loading numba for while it is not loaded yet)."""
    if os.environ.get("MERGEC_NO_JIT", "") not in ("", "0"):
        return None
    if not _jit:
        if count < JIT_MIN_VALUES:
            return None
        _jit.append(_load_kernels())
    return _jit[0]


def _load_kernels():
    """mergec.ops.philox_jit, once it has reproduced NumPy's words (as masks and as floats,
    across counter blocks, at an offset that is not a multiple of four); None otherwise."""
    try:
        from mergec.ops import philox_jit  # optional, heavy: numba, only for large draws
        seed, stream, start, n = 0x9E3779B97F4A7C15, 3, 4 * 1000 + 3, 37
        words = _words(seed, stream, start, n)
        limit = 1 << 63
        mask = philox_jit.fill_mask(seed, stream, start, limit, np.empty(n, dtype=bool))
        unit = philox_jit.fill_uniform(seed, stream, start, np.empty(n, dtype=np.float32))
        ref = np.empty(n, dtype=np.float32)
        _to_unit(words, ref)
        if (np.array_equal(mask, words < np.uint64(limit))
                and np.array_equal(unit.view(np.uint32), ref.view(np.uint32))):
            return philox_jit
    except Exception:  # noqa: BLE001 - not installed, cannot compile: NumPy does the work
        pass
    return None


def _fill(seed: int, stream: int, start: int, count: int, out: np.ndarray,
          convert: Callable[[np.ndarray, np.ndarray], None],
          compiled: Callable[[object, int, np.ndarray], None]) -> np.ndarray:
    """Fill ``out[:count]`` with ``convert(words, out)`` of values ``[start, start + count)``,
    or with ``compiled(kernels, first value, out)`` where the compiled kernel is available.

    Large draws are cut into blocks, each generated by its own Philox advanced to the block's
    first value, on a thread pool (the compiled kernel releases the GIL); the numbers do not
    depend on the blocking.
    """
    if stream < 0:
        raise ValueError(f"random stream must be >= 0, got {stream}")
    seed, stream = int(seed) & _MASK64, int(stream) & _MASK64
    kern = compiled_kernels(count)

    def block(piece: tuple[int, int]) -> None:
        off, n = piece
        if kern is not None:
            compiled(kern, start + off, out[off:off + n])
        else:
            convert(_words(seed, stream, start + off, n), out[off:off + n])

    pieces = _chunks(count)
    if len(pieces) <= 1:
        for piece in pieces:
            block(piece)
    else:
        with ThreadPoolExecutor(max_workers=min(len(pieces), _threads())) as pool:
            list(pool.map(block, pieces))
    return out


def _threads() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def _to_unit(words: np.ndarray, out: np.ndarray) -> None:
    np.multiply((words >> np.uint64(40)).astype(np.float32), np.float32(_SCALE), out=out)


def _draw(seed: int, stream: int, start: int, count: int) -> np.ndarray:
    """Flat values ``[start, start + count)`` of the (seed, stream) sequence as float32."""
    def compiled(kern, first: int, out: np.ndarray) -> None:
        kern.fill_uniform(int(seed) & _MASK64, stream, first, out)

    return _fill(seed, stream, start, max(count, 0), np.empty(max(count, 0), np.float32),
                 _to_unit, compiled)


def uniform(seed: int, stream: int, shape: int | Sequence[int]) -> np.ndarray:
    """float32 uniform numbers in ``[0, 1)`` of ``shape`` for ``(seed, stream)``."""
    shp = _shape(shape)
    n = math.prod(shp)
    return _draw(seed, stream, 0, n).reshape(shp)


def uniform_rows(seed: int, stream: int, shape: int | Sequence[int],
                 row_start: int, row_stop: int) -> np.ndarray:
    """Rows ``[row_start, row_stop)`` (along the first axis) of ``uniform(seed, stream, shape)``.

    Bit-identical to ``uniform(seed, stream, shape)[row_start:row_stop]`` but draws only the
    numbers of those rows (the generator is advanced past the earlier rows). For a 0-d shape
    the single value counts as one row.
    """
    shp = _shape(shape)
    if len(shp) == 0:
        rows, row_shape = 1, ()
    else:
        rows, row_shape = shp[0], shp[1:]
    if not (0 <= row_start <= row_stop <= rows):
        raise ValueError(f"row range [{row_start}, {row_stop}) outside 0..{rows}")
    row_len = math.prod(row_shape)
    out = _draw(seed, stream, row_start * row_len, (row_stop - row_start) * row_len)
    if len(shp) == 0:
        return out.reshape(()) if row_stop - row_start == 1 else out.reshape((0,))
    return out.reshape((row_stop - row_start,) + tuple(row_shape))


def keep_mask(seed: int, stream: int, shape: int | Sequence[int], density: float) -> np.ndarray:
    """DARE keep mask: ``uniform(seed, stream, shape) < float32(density)`` (bool array).

    The comparison is made against the density rounded to float32, the way every backend
    compares, so a mask never depends on where it was computed. It is evaluated on the raw
    words without making the floats: with ``m = word >> 40`` the value is ``m / 2**24``, and
    ``m / 2**24 < f`` exactly when ``word < ceil(f * 2**24) << 40``. density >= 1 keeps all.
    """
    shp = _shape(shape)
    if float(np.float32(density)) >= 1.0:
        return np.ones(shp, dtype=bool)
    return _mask(seed, stream, 0, math.prod(shp), density).reshape(shp)


def _mask(seed: int, stream: int, start: int, count: int, density: float) -> np.ndarray:
    """Flat keep mask of values ``[start, start + count)``: word < ``ceil(f 2**24) << 40``
    with ``f = float32(density)`` (< 1)."""
    f = float(np.float32(density))
    limit = math.ceil(f * 2.0**24) << 40 if f > 0 else 0

    def convert(words: np.ndarray, out: np.ndarray) -> None:
        np.less(words, np.uint64(limit), out=out)

    def compiled(kern, first: int, out: np.ndarray) -> None:
        kern.fill_mask(int(seed) & _MASK64, stream, first, limit, out)

    return _fill(seed, stream, start, count, np.empty(count, dtype=bool), convert, compiled)


def keep_mask_rows(seed: int, stream: int, shape: Sequence[int], density: float,
                   row_start: int, row_stop: int) -> np.ndarray:
    """Rows [row_start, row_stop) of ``keep_mask(seed, stream, shape, density)``, drawing
    only those values (for tensors computed a block of rows at a time)."""
    shp = _shape(shape)
    per_row = math.prod(shp[1:])
    rows = (row_stop - row_start,) + tuple(shp[1:])
    if float(np.float32(density)) >= 1.0:
        return np.ones(rows, dtype=bool)
    return _mask(seed, stream, row_start * per_row, math.prod(rows), density).reshape(rows)
