"""Exact k-th largest magnitudes by selection, never a full sort.

For non-negative float32 values the bit pattern (as uint32) orders like the value, NaN
above infinity. A histogram of the top bits of those patterns finds the bucket that holds
the k-th largest, and a count inside that one bucket finds the value: two passes that hold
one chunk at a time, so the same routine serves one tensor, a tensor in blocks of rows and
a whole model (TIES with ``trim="model"``).
"""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from mergec.ops import compiled

#: histogram buckets of a magnitude's bit pattern: its top 14 bits (sign, exponent and the
#: top 5 mantissa bits)
KEY_SHIFT = 18


def magnitude_bits(a: np.ndarray) -> np.ndarray:
    """The float32 bit patterns of |a|, which order like the magnitudes (NaN above
    infinity)."""
    return np.abs(a.astype(np.float32, copy=False)).ravel().view(np.uint32)


def bucket_pass(map_bits: Callable[[Callable], list], k: int) -> tuple[int, list]:
    """Where the k-th largest of some magnitude bit patterns lies, by two passes that hold
    one chunk at a time: a histogram of the top bits, then the entries of the one bucket
    that holds the k-th. `map_bits(fn)` applies `fn` to the bit patterns of every chunk,
    in order, and returns the results. Returns (how many entries lie above the bucket,
    the bucket's entries chunk by chunk)."""
    hist = np.sum(map_bits(histogram), axis=0)
    nb = hist.size
    above = np.cumsum(hist[::-1])
    pos = int(np.searchsorted(above, k))
    bucket = nb - 1 - pos
    return (int(above[pos - 1]) if pos > 0 else 0,
            map_bits(lambda b: bucket_entries(b, bucket)))


def histogram(bits: np.ndarray) -> np.ndarray:
    """Counts of the buckets (top bits) of magnitude bit patterns: ``numpy.bincount``, or
    the compiled kernel's one pass (:mod:`mergec.ops.compiled`) for large arrays."""
    kern = compiled.kernels(bits.size)
    if kern is not None:
        return kern.histogram(bits, KEY_SHIFT)
    return np.bincount(bits >> KEY_SHIFT, minlength=1 << (32 - KEY_SHIFT))


def bucket_entries(bits: np.ndarray, bucket: int) -> np.ndarray:
    """The bit patterns in one bucket, in order (compiled for large arrays, as
    :func:`histogram`)."""
    kern = compiled.kernels(bits.size)
    if kern is not None:
        return kern.bucket_entries(bits, KEY_SHIFT, bucket)
    return bits[(bits >> KEY_SHIFT) == bucket]


def kth_of(vals: np.ndarray, r: int):
    """The r-th largest of an array (1 <= r <= size), by selection: repeated values (the
    rule for real weights, on which ``numpy.partition`` is very slow) are counted — over
    the range of the values when they are unsigned integers (bit patterns) spanning a
    narrow range, else among the distinct values."""
    if vals.dtype.kind == "u" and vals.size:
        lo = vals.min()
        span = int(vals.max()) - int(lo) + 1
        if span <= min(1 << 22, max(16 * vals.size, 1 << 16)):  # a narrow range: count
            counts = np.bincount(vals - lo, minlength=span)
            at = int(np.searchsorted(np.cumsum(counts[::-1]), r))
            return vals.dtype.type(int(lo) + span - 1 - at)
    if vals.size <= 1 << 15:
        return np.partition(vals, vals.size - r)[vals.size - r]
    uniq, counts = np.unique(vals, return_counts=True)
    at = int(np.searchsorted(np.cumsum(counts[::-1]), r))
    return uniq[uniq.size - 1 - at]


def kth_largest(flat: np.ndarray, k: int):
    """The k-th largest value of a flat array (1 <= k <= size), by selection. For the bit
    patterns of magnitudes (uint32): with NumPy, a sample brackets the k-th, one pass
    counts the entries above the bracket and collects those inside it (as the TIES
    thresholds of :mod:`mergec.runtime.prepass`); where the compiled kernels run, or the
    sample misled, a histogram of the top bits finds the bucket and a count inside it the
    value."""
    n = flat.size
    if flat.dtype != np.uint32 or n < 1 << 16:
        return np.partition(flat, n - k)[n - k]
    if compiled.kernels(n) is None:  # NumPy: bracket the k-th from a sample first
        hi, lo = bracket(flat[::max(1, n // SAMPLE_SIZE)], k / n)
        above = int(np.count_nonzero(flat > hi))
        inside = flat[(flat >= lo) & (flat <= hi)]
        if above < k <= above + inside.size:
            return kth_of(inside, k - above)
    above, (inside,) = bucket_pass(lambda fn: [fn(flat)], k)
    return kth_of(inside, k - above)


#: entries in the sample that brackets a k-th largest
SAMPLE_SIZE = 1 << 16


def bracket(sample: np.ndarray, p: float) -> tuple:
    """(hi, lo): values that bracket the ``p`` quantile from the top (``p`` = k / n) of
    an array, from an evenly spread sample of it, with a margin of four standard
    deviations of the sample's count; the caller checks that the k-th lies inside."""
    smp = np.sort(sample)[::-1]  # descending
    m = smp.size
    margin = int(4 * (m * p * (1 - p)) ** 0.5) + 2
    r = int(p * m)
    hi = smp[r - margin] if r - margin >= 0 else np.iinfo(smp.dtype).max
    lo = smp[r + margin] if r + margin < m else np.iinfo(smp.dtype).min
    return smp.dtype.type(hi), smp.dtype.type(lo)


def exact_kth_largest(chunks: Callable[[], Iterable[np.ndarray]], k: int
                      ) -> tuple[float, int]:
    """The k-th largest magnitude over all the arrays `chunks()` yields (called twice,
    see :func:`bucket_pass`), and how many magnitudes are strictly larger. Memory: one
    chunk plus the bucket."""
    above, inside = bucket_pass(lambda fn: [fn(magnitude_bits(a)) for a in chunks()], k)
    vals = np.concatenate(inside)
    kth = kth_of(vals, k - above)
    larger = above + int(np.count_nonzero(vals > kth))
    return float(np.array([kth], dtype=np.uint32).view(np.float32)[0]), larger
