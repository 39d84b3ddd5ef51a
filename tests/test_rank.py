"""Per-row magnitude ranks (DELLA) without an argsort: the NumPy key sort and the compiled
radix sort give exactly the ranks of a stable descending argsort, ties and all."""

from __future__ import annotations

import numpy as np
import pytest

from mergec.backends import reference
from mergec.ops import compiled
from mergec.ops import rank as ops_rank


def argsort_ranks(x: np.ndarray) -> np.ndarray:
    """The definition: the position in a stable descending sort (NaN last, ties by lower
    index first), counted from the end."""
    order = np.argsort(-x, axis=-1, kind="stable")
    n = x.shape[-1]
    ranks = np.empty(x.shape, dtype=np.int64)
    for r in range(x.shape[0]):
        ranks[r, order[r]] = np.arange(n - 1, -1, -1)
    return ranks


def adversarial(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for m, n in ((1, 1), (3, 1), (1, 2), (5, 7), (4, 64), (2, 257), (0, 5), (6, 0), (9, 1000)):
        g = rng.standard_normal((m, n)).astype(np.float32)
        few = rng.integers(0, 3, (m, n)).astype(np.float32) * np.float32(0.25)  # many ties
        bf16 = (g.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32) * 1e-3
        zeros = np.where(rng.random((m, n)) < 0.5, np.float32(0.0), np.float32(-0.0))
        mixed = np.where(rng.random((m, n)) < 0.3, zeros, few * np.sign(g))
        tiny = (rng.integers(0, 4, (m, n)).astype(np.uint32)).view(np.float32)  # subnormals
        out += [np.abs(g), np.abs(few), np.abs(bf16), zeros, np.abs(zeros), mixed, g, few - 0.25,
                tiny, np.abs(mixed)]
        special = np.abs(few).copy()
        if special.size:
            flat = special.reshape(-1)
            flat[rng.integers(0, flat.size, max(1, flat.size // 5))] = np.inf
            flat[rng.integers(0, flat.size, max(1, flat.size // 7))] = np.float32(3.4e38)
            out.append(special)
            nan = g.copy()
            nan.reshape(-1)[rng.integers(0, flat.size, max(1, flat.size // 6))] = np.nan
            nan.reshape(-1)[rng.integers(0, flat.size, max(1, flat.size // 9))] = -np.inf
            out += [nan, np.abs(nan)]
    return out


CASES = [a for s in range(3) for a in adversarial(s)]


@pytest.fixture(params=["numpy", "compiled"])
def path(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setenv("MERGEC_NO_JIT", "1")
        assert compiled.kernels(1 << 40) is None
    else:
        pytest.importorskip("numba")
        monkeypatch.delenv("MERGEC_NO_JIT", raising=False)
        monkeypatch.setattr(compiled, "JIT_MIN_VALUES", 0)
        assert compiled.kernels(0) is not None
    return request.param


def test_ranks_equal_the_stable_argsort(path):
    for x in CASES:
        got = ops_rank.rank_ascending(x)
        assert got.dtype == np.int64 and got.shape == x.shape
        np.testing.assert_array_equal(got, argsort_ranks(x), err_msg=f"{x!r}")
        np.testing.assert_array_equal(reference.rank_ascending(x), got)
        as_f32 = ops_rank.rank_ascending(x, np.float32)
        assert as_f32.dtype == np.float32
        np.testing.assert_array_equal(as_f32.view(np.uint32),
                                      got.astype(np.float32).view(np.uint32))


def test_ranks_spelled_out(path):
    x = np.array([[0.5, 0.0, 0.5, -0.0, np.nan, 2.0, 0.5, np.nan],
                  [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    # row 0 ascending: NaN(7) NaN(4) 0(3) 0(1) 0.5(6) 0.5(2) 0.5(0) 2(5)
    # row 1: all equal, the lower index ranks higher
    np.testing.assert_array_equal(ops_rank.rank_ascending(x),
                                  [[6, 3, 5, 2, 1, 7, 4, 0], [7, 6, 5, 4, 3, 2, 1, 0]])


def test_order_keys_order_like_the_floats():
    vals = np.array([np.nan, -np.inf, -3.0, -1e-45, -0.0, 0.0, 1e-45, 1.0, 3.4e38, np.inf],
                    dtype=np.float32)
    keys = ops_rank.order_keys(vals)
    assert keys[0] == 0 and keys[4] == keys[5]
    assert np.all(np.diff(np.delete(keys, 4).astype(np.int64)) > 0)
    np.testing.assert_array_equal(ops_rank.order_keys(np.abs(vals[1:])),
                                  np.abs(vals[1:]).view(np.uint32) + 1)


def test_large_rows_on_both_paths(path):
    rng = np.random.default_rng(7)
    x = np.abs(rng.standard_normal((300, 769)).astype(np.float32))
    x = (x.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)  # bf16: many ties
    np.testing.assert_array_equal(ops_rank.rank_ascending(x), argsort_ranks(x))
    np.testing.assert_array_equal(reference.ReferenceBackend().rank_ascending(x),
                                  argsort_ranks(x).astype(np.float32))


def test_not_two_dimensional_is_refused():
    with pytest.raises(ValueError, match="2-D"):
        ops_rank.rank_ascending(np.zeros(4, dtype=np.float32))


# --- the magnitude histogram of top-k selection (TIES, breadcrumbs, SCE) ---------------------

from mergec.backends.reference import topk_mask  # noqa: E402
from mergec.ops import select  # noqa: E402


def sorted_topk(mag: np.ndarray, k: int) -> np.ndarray:
    """The definition: the first k of a stable sort by descending magnitude."""
    flat = mag.reshape(-1)
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[:max(k, 0)]] = True
    return mask.reshape(mag.shape)


def magnitudes(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 70_000  # above the size where selection replaces numpy.partition
    g = rng.standard_normal(n).astype(np.float32)
    bf16 = np.abs((g.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)) * 1e-3
    few = rng.integers(0, 4, n).astype(np.float32)
    zeros = np.zeros(n, dtype=np.float32)
    tiny = rng.integers(0, 3, n).astype(np.uint32).view(np.float32)
    inf = np.abs(g).copy()
    inf[rng.integers(0, n, 50)] = np.inf
    return [np.abs(g).reshape(350, 200), bf16, few, zeros, tiny, inf, np.abs(g) + 0.0]


def test_histogram_and_bucket_equal_numpys(path):
    for x in magnitudes(0):
        bits = select.magnitude_bits(x)
        hist = np.bincount(bits >> 18, minlength=1 << 14)
        np.testing.assert_array_equal(select.histogram(bits), hist)
        for bucket in (0, int(np.argmax(hist)), (1 << 14) - 1, int(bits[-1] >> 18)):
            np.testing.assert_array_equal(select.bucket_entries(bits, bucket),
                                          bits[(bits >> 18) == bucket])


@pytest.mark.parametrize("seed", [0, 1])
def test_topk_masks_equal_a_stable_sort(path, seed):
    for x in magnitudes(seed):
        n = x.size
        for k in (1, 2, n // 10, n // 2, n - 1, n, 0):
            np.testing.assert_array_equal(topk_mask(x, k), sorted_topk(x, k))
        bits = select.magnitude_bits(x)
        for k in (1, n // 3, n):
            want = np.sort(bits)[::-1][k - 1]
            assert select.kth_largest(bits, k) == want
            chunks = lambda: [x.reshape(-1)[:n // 3], x.reshape(-1)[n // 3:]]  # noqa: E731
            kth, larger = select.exact_kth_largest(chunks, k)
            assert np.float32(kth).view(np.uint32) == want
            assert larger == int(np.count_nonzero(bits > want))


def test_a_misleading_sample_falls_back_to_the_histogram(path):
    n = 140_000  # the sample takes every second entry: all the large ones
    x = np.where(np.arange(n) % 2 == 0, np.float32(1.0), np.float32(0.5))
    x[1::4] = np.float32(0.25)
    for k in (n // 4, n // 2 + 7, 3 * n // 4, n - 3):
        np.testing.assert_array_equal(topk_mask(x, k), sorted_topk(x, k))
        bits = select.magnitude_bits(x)
        assert select.kth_largest(bits, k) == np.sort(bits)[::-1][k - 1]
    hi, lo = select.bracket(select.magnitude_bits(x)[::2], 0.75)
    assert hi == lo == np.float32(1.0).view(np.uint32)  # the bracket the sample gives
