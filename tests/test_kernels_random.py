"""mergec.ops.random: counter-based, backend-independent random numbers."""

from __future__ import annotations

import numpy as np
import pytest

from mergec.ops import random as rnd


def test_uniform_range_dtype_and_determinism():
    u = rnd.uniform(123, 0, (50, 40))
    assert u.dtype == np.float32 and u.shape == (50, 40)
    assert (u >= 0).all() and (u < 1).all()
    np.testing.assert_array_equal(u, rnd.uniform(123, 0, (50, 40)))
    assert 0.45 < float(u.mean()) < 0.55
    # 24-bit grid: every value is k / 2**24 exactly
    k = u.astype(np.float64) * 2**24
    np.testing.assert_array_equal(k, np.round(k))


def test_uniform_is_the_flat_sequence():
    # the shape only arranges the flat sequence (row-major)
    np.testing.assert_array_equal(rnd.uniform(5, 1, (6, 7)).reshape(-1), rnd.uniform(5, 1, 42))
    np.testing.assert_array_equal(rnd.uniform(5, 1, (42,))[:10], rnd.uniform(5, 1, 10))
    assert rnd.uniform(5, 1, ()).shape == ()


def test_seeds_and_streams_differ():
    a = rnd.uniform(1, 0, 1000)
    assert not np.array_equal(a, rnd.uniform(2, 0, 1000))
    assert not np.array_equal(a, rnd.uniform(1, 1, 1000))
    m1 = rnd.keep_mask(1, 0, (30, 30), 0.5)
    m2 = rnd.keep_mask(2, 0, (30, 30), 0.5)
    assert m1.dtype == bool and not np.array_equal(m1, m2)
    assert rnd.keep_mask(1, 0, (4,), 1.0).all()


def test_large_seeds():
    big = 2**64 - 1
    assert rnd.uniform(big, 0, 3).shape == (3,)
    np.testing.assert_array_equal(rnd.uniform(-1, 0, 3), rnd.uniform(big, 0, 3))


@pytest.mark.parametrize("shape", [(10, 7), (9, 4, 3), (13,), (5, 1), (3, 0)])
def test_uniform_rows_equals_slice(shape):
    full = rnd.uniform(77, 3, shape)
    rows = shape[0]
    for a in range(rows + 1):
        for b in range(a, rows + 1):
            np.testing.assert_array_equal(rnd.uniform_rows(77, 3, shape, a, b), full[a:b])


def test_uniform_rows_bounds():
    with pytest.raises(ValueError):
        rnd.uniform_rows(1, 0, (4, 4), 2, 5)
    np.testing.assert_array_equal(rnd.uniform_rows(1, 0, (), 0, 1), rnd.uniform(1, 0, ()))


def test_derive_seed():
    s = rnd.derive_seed(42, "merged", "model.layers.0.mlp.up_proj.weight")
    assert 0 <= s < 2**64
    assert s == rnd.derive_seed(42, "merged", "model.layers.0.mlp.up_proj.weight")
    assert s != rnd.derive_seed(43, "merged", "model.layers.0.mlp.up_proj.weight")
    assert s != rnd.derive_seed(42, "merged", "model.layers.1.mlp.up_proj.weight")
    assert rnd.derive_seed(0, "ab", "c") != rnd.derive_seed(0, "a", "bc")
    assert rnd.derive_seed(0) != rnd.derive_seed(0, "")


def test_golden_values():
    # seeds and numbers are a stable format: a change here changes every random merge
    assert rnd.derive_seed(0, "out", "w") == 15598760070455679385
    assert [int(x * 2**24) for x in rnd.uniform(7, 2, 4)] == [6149663, 6709073, 14227052,
                                                              11300397]


def test_blocking_does_not_change_the_numbers(monkeypatch):
    whole = rnd.uniform(9, 4, (37, 11))
    masks = [rnd.keep_mask(9, 4, (37, 11), d) for d in (0.3, 0.9)]
    monkeypatch.setattr(rnd, "_CHUNK", 8)  # many blocks, drawn on threads
    np.testing.assert_array_equal(rnd.uniform(9, 4, (37, 11)), whole)
    np.testing.assert_array_equal(rnd.uniform_rows(9, 4, (37, 11), 5, 30), whole[5:30])
    for d, m in zip((0.3, 0.9), masks):
        np.testing.assert_array_equal(rnd.keep_mask(9, 4, (37, 11), d), m)


@pytest.mark.parametrize("density", [1e-9, 2.0**-24, 3 * 2.0**-25, 0.1, 0.3, 0.5, 0.7,
                                     1 - 2.0**-24, 0.99999999, 1.0])
def test_keep_mask_equals_uniform_compare(density):
    u = rnd.uniform(11, 0, 20000)
    np.testing.assert_array_equal(rnd.keep_mask(11, 0, 20000, density), u < np.float32(density))


def test_keep_mask_at_the_boundary(monkeypatch):
    # words whose value sits right at, just below and just above each threshold
    dens = [2.0**-24, 3 * 2.0**-25, 0.1, 0.5, 0.3, 1 - 2.0**-24]
    ms = []
    for d in dens:
        c = int(np.ceil(float(np.float32(d)) * 2**24))
        ms += [max(c - 2, 0), max(c - 1, 0), c, min(c + 1, 2**24 - 1)]
    words = np.array([(m << 40) | low for m in ms for low in (0, 2**40 - 1)], dtype=np.uint64)
    monkeypatch.setattr(rnd, "_words", lambda seed, stream, start, n: words[start:start + n])
    monkeypatch.setenv("MERGEC_NO_JIT", "1")  # the words above go through the NumPy path
    u = rnd.uniform(0, 0, words.size)
    np.testing.assert_array_equal(u.astype(np.float64) * 2**24,
                                  np.repeat(np.array(ms, dtype=np.float64), 2))
    for d in dens:
        np.testing.assert_array_equal(rnd.keep_mask(0, 0, words.size, d), u < np.float32(d))
