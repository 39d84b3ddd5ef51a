"""The TIES threshold of a tensor computed in row blocks: exactly the whole tensor's top-k
(ties by lowest flat index), whether the sample brackets the k-th magnitude or misleads
and the histogram fallback has to find it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from mergec.methods.spec import keep_count
from mergec.backends.reference import topk_mask
from mergec.runtime.prepass import SAMPLE_BLOCKS, Blocks, ties_trims
from mergec.runtime.schedule import row_blocks


def masks_from_trims(x: np.ndarray, rows_list, trim) -> np.ndarray:
    """The keep mask the executor builds, block by block, from (threshold, allowance)."""
    thr, allow = trim  # thr: the float32 bit pattern of the k-th magnitude
    out = []
    for b, (r0, r1) in enumerate(rows_list):
        bits = np.abs(x[r0:r1]).view(np.uint32)
        m = bits > thr
        eq = np.flatnonzero(bits == thr)[:allow[b]]
        m.reshape(-1)[eq] = True
        out.append(m)
    return np.concatenate(out)


def run(xs: list[np.ndarray], densities, rows_per_block: int, calls: list | None = None):
    n_rows = xs[0].shape[0]
    rows_list = row_blocks(n_rows, rows_per_block)
    node = SimpleNamespace(numel=xs[0].size, shape=xs[0].shape)

    def args_of(b, rows):
        if calls is not None:
            calls.append(b)
        return [x[rows[0]:rows[1]] for x in xs]

    trims = ties_trims(node, {"density": tuple(densities)}, Blocks(rows_list, None), args_of)
    return rows_list, trims


def cases():
    rng = np.random.default_rng(7)
    plain = rng.standard_normal((256, 48)).astype(np.float32)
    # few distinct magnitudes: thousands of entries equal to the threshold
    quantized = (np.round(rng.standard_normal((256, 48)) * 4) / 4).astype(np.float32)
    # the sampled blocks hold the largest magnitudes: the sample puts the bracket too high
    misleading = rng.standard_normal((256, 48)).astype(np.float32)
    n_blocks = 32
    picked = {round(j * (n_blocks - 1) / (SAMPLE_BLOCKS - 1)) for j in range(SAMPLE_BLOCKS)}
    for b in picked:
        misleading[b * 8:(b + 1) * 8] *= 1000
    zeros = np.zeros((256, 48), dtype=np.float32)
    zeros[3, 5] = 1.0
    nan = plain.copy()
    nan[::37, 3] = np.nan
    nan[5::41, 7] = np.inf
    return {"plain": plain, "quantized": quantized, "misleading": misleading,
            "mostly zero": zeros, "nan and inf": nan}


@pytest.mark.parametrize("name", list(cases()))
@pytest.mark.parametrize("density", [0.01, 0.3, 0.5, 0.97])
@pytest.mark.parametrize("rows_per_block", [8, 100, 256])
def test_blocks_keep_exactly_the_whole_tensor_top_k(name, density, rows_per_block):
    x = cases()[name]
    rows_list, (trim,) = run([x], [density], rows_per_block)
    want = topk_mask(np.abs(x), keep_count(density, x.size))
    got = masks_from_trims(x, rows_list, trim)
    assert np.array_equal(got, want)
    assert got.sum() == keep_count(density, x.size)


def test_a_misleading_sample_falls_back_to_the_histogram_and_stays_exact():
    x = cases()["misleading"]
    calls: list = []
    rows_list, (trim,) = run([x], [0.5], 8, calls)
    # sample (8 blocks) + bracket pass (32) + histogram (32) + bucket (32)
    assert len(calls) == SAMPLE_BLOCKS + 3 * 32
    assert np.array_equal(masks_from_trims(x, rows_list, trim),
                          topk_mask(np.abs(x), keep_count(0.5, x.size)))
    calls.clear()
    run([cases()["plain"]], [0.5], 8, calls)
    assert len(calls) == SAMPLE_BLOCKS + 32  # a good sample: one pass after it


def test_density_one_keeps_everything_without_a_pass():
    x = cases()["plain"]
    calls: list = []
    _, trims = run([x, x], [1.0, 1.0], 8, calls)
    assert trims == [None, None] and calls == []


@pytest.mark.parametrize("kind", ["normal", "repeated", "half zero", "nan and inf"])
@pytest.mark.parametrize("n", [1000, 70_000, 200_003])
def test_whole_tensor_top_k_matches_a_stable_sort(kind, n):
    """topk_mask (histogram of the bit patterns, then a selection in one bucket) keeps
    what a stable descending sort keeps: the k largest, lower index first among equals."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    if kind == "repeated":
        x = (np.round(x * 3) / 3).astype(np.float32)
    elif kind == "half zero":
        x[rng.random(n) < 0.5] = 0
    elif kind == "nan and inf":
        x[:7] = np.nan
        x[7:11] = np.inf
    mag = np.abs(x)
    key = np.where(np.isnan(mag), np.inf, mag).astype(np.float64)
    # NaN first (above every number), then larger magnitude first, then lower index
    rank = np.lexsort((np.arange(n), -key, (~np.isnan(mag)).astype(np.int8)))
    for k in (1, n // 3, n // 2, n - 1):
        want = np.zeros(n, dtype=bool)
        want[rank[:k]] = True
        assert np.array_equal(topk_mask(mag, k), want), k
