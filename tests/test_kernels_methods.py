"""Every merge kernel on every backend against an independent numpy computation.

The oracles below are written straight from the formulas in docs/methods (loops, float64,
full sorts; no code shared with mergec.backends). Only the random numbers are taken from
mergec.ops.random, which is the specification of the masks.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from mergec.backends import get_backend
from mergec.ops import random as rnd
from mergec.methods import REGISTRY, REQUIRED
from mergec.methods import run_method

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None


def _has_cuda() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return torch.cuda.is_available()


def _has_jax_gpu() -> bool:
    if not HAS_JAX:
        return False
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


BACKENDS = [
    pytest.param(("reference", "cpu"), id="reference"),
    pytest.param(("torch", "cpu"), id="torch", marks=pytest.mark.torch),
    pytest.param(("torch", "cuda"), id="torch-cuda", marks=[
        pytest.mark.torch, pytest.mark.skipif(not _has_cuda(), reason="no CUDA device")]),
    pytest.param(("jax", "cpu"), id="jax", marks=pytest.mark.jax),
    # top-k masks and DELLA ranks computed by the XLA kernels (the GPU path) on the cpu
    pytest.param(("jax", "cpu", {"host_select": False}), id="jax-xla-select",
                 marks=pytest.mark.jax),
    pytest.param(("jax", "gpu"), id="jax-gpu", marks=[
        pytest.mark.jax,
        pytest.mark.skipif(not _has_jax_gpu(), reason="no GPU device for jax")]),
]
SEED = 0x5EED_1234_ABCD


@pytest.fixture(params=BACKENDS)
def be(request):
    name, device, *kw = request.param
    if kw:
        from mergec.backends.jax_backend import JaxBackend

        return JaxBackend(device, **kw[0])
    return get_backend(name, device)


def params_for(name: str, n: int, **over):
    """All parameters, defaults filled in and per-input values expanded (as the compiler does)."""
    out = {}
    for p in REGISTRY[name].params:
        v = over.pop(p.name, p.default)
        if v is REQUIRED:
            raise AssertionError(f"{name}: give {p.name}")
        if p.per_input and not isinstance(v, (tuple, list)):
            v = (v,) * n
        out[p.name] = tuple(float(x) for x in v) if p.per_input else v
    out.update(over)  # extra keys (e.g. thresholds)
    return out


def run(be, name, xs, seed=None, **over):
    xs = [np.asarray(x, dtype=np.float32) for x in xs]
    p = params_for(name, len(xs), **over)
    y = run_method(be, name, [be.asarray(x) for x in xs], p, seed)
    return be.to_numpy(y, "float32")


def close(actual, expected, rtol=2e-6, atol=2e-6):
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol, atol=atol * scale)


def rand(shape, seed, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


# Oracles -----------------------------------------------------------------------------------


def o_count(frac, n):
    """round half up, as documented in mergec.backends.base."""
    return min(n, max(0, int(math.floor(frac * n + 0.5 + 1e-9))))


def o_order(x):
    """flat indices by magnitude, larger first, ties by lower index."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    return sorted(range(flat.size), key=lambda j: (-abs(flat[j]), j))


def o_topk(x, density):
    n = x.size
    k = n if density >= 1 else max(1, o_count(density, n))
    keep = set(o_order(x)[:k])
    flat = x.reshape(-1).astype(np.float64)
    return np.array([flat[j] if j in keep else 0.0 for j in range(n)]).reshape(x.shape)


def o_disjoint(taus, w, elect="mass", weighted_elect=False, normalize=True):
    taus = [np.asarray(t, dtype=np.float64).reshape(-1) for t in taus]
    out = np.zeros(taus[0].size)
    for j in range(out.size):
        vals = [t[j] for t in taus]
        if elect == "mass":
            vote = sum((wi if weighted_elect else 1.0) * v for wi, v in zip(w, vals))
        else:
            vote = sum(np.sign(v) for v in vals)
        g = np.sign(vote)
        num = den = 0.0
        for wi, v in zip(w, vals):
            if v != 0 and g != 0 and np.sign(v) == g:
                num += wi * v
                den += wi
        if normalize:
            out[j] = num / den if den != 0 else 0.0
        else:
            out[j] = num
    return out


def o_slerp(a, b, t, eps=1e-8):
    v0 = np.asarray(a, np.float64).reshape(-1)
    v1 = np.asarray(b, np.float64).reshape(-1)
    n0, n1 = np.linalg.norm(v0), np.linalg.norm(v1)
    if n0 < eps or n1 < eps or n0 == 0 or n1 == 0:
        return ((1 - t) * v0 + t * v1).reshape(np.shape(a))
    d = float(np.dot(v0 / n0, v1 / n1))
    if abs(d) > 0.9995:
        return ((1 - t) * v0 + t * v1).reshape(np.shape(a))
    om = math.acos(max(-1.0, min(1.0, d)))
    r = (math.sin((1 - t) * om) * v0 + math.sin(t * om) * v1) / math.sin(om)
    return r.reshape(np.shape(a))


def o_log(m, u):
    c = max(-1.0, min(1.0, float(np.dot(m, u))))
    th = math.acos(c)
    if math.pi - th < 1e-6:
        return np.zeros_like(m)
    f = 1.0 if th < 1e-7 else th / math.sin(th)
    return f * (u - c * m)


def o_exp(m, v):
    nv = np.linalg.norm(v)
    if nv == 0:
        return m
    return math.cos(nv) * m + math.sin(nv) * v / nv


def o_spherical(xs, w, zero, iters, tol):
    vs = [np.asarray(x, np.float64).reshape(-1) for x in xs]
    w = np.asarray(w, np.float64)
    norms = [np.linalg.norm(v) for v in vs]
    valid = [nm > zero for nm in norms]
    lin = sum(wi * v for wi, v in zip(w, vs)) / w.sum()
    sw = sum(wi for wi, ok in zip(w, valid) if ok)
    if not any(valid) or sw == 0:
        return lin.reshape(np.shape(xs[0]))
    wn = [wi / sw if ok else 0.0 for wi, ok in zip(w, valid)]
    us = [v / nm if ok else np.zeros_like(v) for v, nm, ok in zip(vs, norms, valid)]
    m = sum(a * u for a, u in zip(wn, us))
    if np.linalg.norm(m) <= 1e-6 * sum(abs(a) for a in wn):
        return lin.reshape(np.shape(xs[0]))
    m = m / np.linalg.norm(m)
    for _ in range(iters):
        v = sum(a * o_log(m, u) for a, u, ok in zip(wn, us, valid) if ok)
        m = o_exp(m, v)
        m = m / np.linalg.norm(m)
        if np.linalg.norm(v) < tol:
            break
    scale = sum(wi * nm for wi, nm in zip(w, norms)) / w.sum()
    return (m * scale).reshape(np.shape(xs[0]))


def o_dare(x, i, density, rescale="inverse", seed=SEED):
    if density >= 1:
        return x.astype(np.float64)
    u = rnd.uniform(seed, i, x.shape)
    kept = np.where(u < np.float32(density), x.astype(np.float64), 0.0)
    if rescale == "inverse":
        return kept / density
    if rescale == "l1":
        s = np.abs(kept).sum()
        return kept * (np.abs(x.astype(np.float64)).sum() / s) if s else np.zeros_like(kept)
    return kept


def o_breadcrumbs(x, density, gamma):
    n = x.size
    top = min(o_count(gamma, n), n - 1)
    kept = n - top if density >= 1 else min(max(1, o_count(density, n)), n - top)
    keep = set(o_order(x)[top:top + kept])
    flat = x.reshape(-1).astype(np.float64)
    return np.array([flat[j] if j in keep else 0.0 for j in range(n)]).reshape(x.shape)


def o_della(x, i, density, eps, rescale="inverse", seed=SEED):
    shape = x.shape
    rows = x.reshape(-1, shape[-1]) if x.ndim >= 2 else x.reshape(1, -1)
    u = rnd.uniform(seed, i, shape).reshape(rows.shape)
    out = np.zeros(rows.shape)
    n = rows.shape[1]
    for r in range(rows.shape[0]):
        row = rows[r].astype(np.float64)
        desc = sorted(range(n), key=lambda j: (-abs(row[j]), j))
        for pos, j in enumerate(desc):
            rank = n - 1 - pos
            p = density if n == 1 else density - eps + 2 * eps * rank / (n - 1)
            p = min(p, 1.0)
            if u[r, j] < p:
                out[r, j] = row[j] / p if rescale == "inverse" else row[j]
    if rescale == "l1":
        s = np.abs(out).sum()
        out = out * (np.abs(x.astype(np.float64)).sum() / s) if s else out * 0
    return out.reshape(shape)


def o_model_stock(taus, filter_wise=False):
    taus = [np.asarray(t, np.float64) for t in taus]
    n = len(taus)
    if filter_wise and taus[0].ndim >= 2:
        rows = [t.reshape(-1, t.shape[-1]) for t in taus]
        out = np.zeros(rows[0].shape)
        for r in range(rows[0].shape[0]):
            out[r] = o_model_stock([rw[r] for rw in rows])
        return out.reshape(taus[0].shape)
    cs = []
    for i in range(n):
        for j in range(i + 1, n):
            a, b = taus[i].reshape(-1), taus[j].reshape(-1)
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            cs.append(float(a @ b) / (na * nb) if na > 0 and nb > 0 else 0.0)
    c = sum(cs) / len(cs)
    den = 1 + (n - 1) * c
    t = n * c / den if den > 1e-6 else 0.0
    return t * sum(taus) / n


def o_sce(taus, select_topk=1.0, lam=1.0):
    taus = [np.asarray(t, np.float64) for t in taus]
    size = taus[0].size
    k = size if select_topk >= 1 else max(1, o_count(select_topk, size))
    if k < size:
        flat = [t.reshape(-1) for t in taus]
        var = np.array([np.var([f[j] for f in flat]) for j in range(size)])
        order = sorted(range(size), key=lambda j: (-var[j], j))
        keep = np.zeros(size, bool)
        keep[order[:k]] = True
        taus = [np.where(keep, f, 0.0).reshape(taus[0].shape) for f in flat]
    e = [float((t ** 2).mean()) for t in taus]
    if sum(e) == 0:
        return np.zeros(taus[0].shape)
    om = [x / sum(e) for x in e]
    return lam * o_disjoint(taus, om).reshape(taus[0].shape)


# linear family -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7,), (4, 5), (), (2, 3, 2)])
def test_linear(be, shape):
    xs = [rand(shape, s) for s in range(3)]
    w = (0.5, 2.0, -0.25)
    exp = sum(wi * x.astype(np.float64) for wi, x in zip(w, xs))
    close(run(be, "linear", xs, weight=w), exp / sum(w))
    close(run(be, "linear", xs, weight=w, normalize=False), exp)


def test_linear_zero_weight_sum_raises(be):
    xs = [rand((5,), 0), rand((5,), 1)]
    with pytest.raises(ValueError, match="sum to 0"):
        run(be, "linear", xs, weight=(1.0, -1.0))


def test_linear_identical_inputs(be):
    x = rand((4, 5), 3)
    close(run(be, "linear", [x, x, x], weight=(0.2, 0.3, 0.7)), x, rtol=1e-6, atol=0)


def test_task_arithmetic(be):
    xs = [rand((4, 5), s) for s in range(3)]
    w = (1.0, 0.5, 2.0)
    exp = 0.7 * sum(wi * x.astype(np.float64) for wi, x in zip(w, xs))
    close(run(be, "task_arithmetic", xs, weight=w, **{"lambda": 0.7}), exp)
    close(run(be, "task_arithmetic", xs, weight=w, normalize=True, **{"lambda": 0.7}),
          exp / sum(w))


def test_passthrough(be):
    x = rand((3, 4), 1)
    close(run(be, "passthrough", [x], scale=-2.5), -2.5 * x.astype(np.float64))
    np.testing.assert_array_equal(run(be, "passthrough", [x]), x)


def test_nearswap(be):
    tau = np.array([0.0, 0.05, -0.1, 0.3, -2.0, 1e-9, 0.2], dtype=np.float32)
    t = 0.2
    w = np.clip(t / np.maximum(np.abs(tau.astype(np.float64)), 1e-6), 0, 1)
    close(run(be, "nearswap", [tau], t=t), w * tau)


# spherical ---------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_slerp(be, t):
    a, b = rand((4, 5), 1), rand((4, 5), 2)
    close(run(be, "slerp", [a, b], t=t), o_slerp(a, b, t))


def test_slerp_endpoints_exact(be):
    a, b = rand((7,), 1), rand((7,), 2)
    np.testing.assert_array_equal(run(be, "slerp", [a, b], t=0.0), a)
    close(run(be, "slerp", [a, b], t=1.0), b, rtol=1e-6, atol=0)


def test_slerp_parallel_and_antiparallel(be):
    a = rand((7,), 4)
    for b in (2.0 * a, -a, -3.0 * a):
        out = run(be, "slerp", [a, b], t=0.25)
        assert np.isfinite(out).all()
        close(out, 0.75 * a.astype(np.float64) + 0.25 * b)  # lerp by the threshold rule


def test_slerp_zero_vector(be):
    a, z = rand((7,), 4), np.zeros(7, np.float32)
    out = run(be, "slerp", [a, z], t=0.4)
    assert np.isfinite(out).all()
    close(out, 0.6 * a.astype(np.float64))
    np.testing.assert_array_equal(run(be, "slerp", [z, z], t=0.4), z)


def test_slerp_identical(be):
    a = rand((4, 5), 9)
    close(run(be, "slerp", [a, a], t=0.37), a, rtol=1e-6, atol=0)


@pytest.mark.parametrize("flatten,row_wise", [(True, False), (False, True), (False, False)])
def test_nuslerp(be, flatten, row_wise):
    a, b = rand((4, 5), 1), rand((4, 5), 2)
    b[1] = -2 * a[1]  # one antiparallel row
    w = (1.0, 3.0)
    t = 3.0 / 4.0
    if flatten:
        exp = o_slerp(a, b, t)
    elif row_wise:
        exp = np.stack([o_slerp(a[r], b[r], t) for r in range(4)])
    else:
        exp = np.stack([o_slerp(a[:, c], b[:, c], t) for c in range(5)], axis=1)
    close(run(be, "nuslerp", [a, b], weight=w, flatten=flatten, row_wise=row_wise), exp)


def test_nuslerp_3d_rows_and_columns(be):
    a, b = rand((2, 3, 4), 5), rand((2, 3, 4), 6)
    rows = np.stack([[o_slerp(a[i, j], b[i, j], 0.5) for j in range(3)] for i in range(2)])
    cols = np.stack([np.stack([o_slerp(a[i, :, c], b[i, :, c], 0.5) for c in range(4)], -1)
                     for i in range(2)])
    close(run(be, "nuslerp", [a, b], flatten=False, row_wise=True), rows)
    close(run(be, "nuslerp", [a, b], flatten=False, row_wise=False), cols)
    v0, v1 = rand((7,), 1), rand((7,), 2)  # 1-D: no rows, whole vector
    close(run(be, "nuslerp", [v0, v1], flatten=False, row_wise=False), o_slerp(v0, v1, 0.5))


@pytest.mark.parametrize("n", [2, 3])
def test_multislerp(be, n):
    xs = [rand((4, 5), s) + 0.5 for s in range(n)]
    w = (1.0, 2.0, 0.5)[:n]
    close(run(be, "multislerp", xs, weight=w), o_spherical(xs, w, 1e-8, 1, 0.0), rtol=1e-5,
          atol=1e-6)


@pytest.mark.parametrize("max_iter", [1, 10, 50])
def test_karcher(be, max_iter):
    xs = [rand((7,), s) + 0.3 for s in range(4)]
    w = (1.0, 1.0, 2.0, 0.5)
    close(run(be, "karcher", xs, weight=w, max_iter=max_iter, tol=1e-9),
          o_spherical(xs, w, 1e-8, max_iter, 1e-9), rtol=1e-5, atol=1e-6)


def test_karcher_is_a_fixed_point(be):
    xs = [rand((6,), s) + 0.5 for s in range(3)]
    out = run(be, "karcher", xs, max_iter=200, tol=1e-12).astype(np.float64)
    m = out / np.linalg.norm(out)
    us = [x / np.linalg.norm(x) for x in xs]
    assert np.linalg.norm(sum(o_log(m, u) for u in us)) < 1e-5
    close(np.linalg.norm(out), np.mean([np.linalg.norm(x.astype(np.float64)) for x in xs]))


@pytest.mark.parametrize("name", ["multislerp", "karcher"])
def test_spherical_identical_and_zero(be, name):
    x = rand((4, 5), 1)
    close(run(be, name, [x, x, x]), x, rtol=1e-5, atol=1e-6)
    z = np.zeros((4, 5), np.float32)
    out = run(be, name, [x, z])  # zero vector: no direction, its norm 0 counts in the mean
    close(out, 0.5 * x.astype(np.float64), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(run(be, name, [z, z]), z)
    out = run(be, name, [x, -x])  # opposite: mean direction undefined -> linear mean
    assert np.isfinite(out).all()
    close(out, np.zeros_like(x), atol=1e-6)


# TIES --------------------------------------------------------------------------------------


def test_topk_counts_and_ties(be):
    # 10 entries, 4 share the largest magnitude: density 0.3 keeps 3 of them, lowest indices
    x = np.array([1, -5, 5, 2, -5, 0.5, 5, -3, 0.1, 0], dtype=np.float32)
    out = run(be, "ties", [x], density=0.3)
    np.testing.assert_array_equal(out, [0, -5, 5, 0, -5, 0, 0, 0, 0, 0])
    assert np.count_nonzero(out) == 3
    # all equal: exactly k kept, the first k
    y = np.full(10, -2.0, np.float32)
    np.testing.assert_array_equal(np.nonzero(run(be, "ties", [y], density=0.35))[0], [0, 1, 2, 3])
    # rounding: 0.25 * 10 = 2.5 -> 3; 0.01 * 7 -> at least one
    z = np.arange(1, 11, dtype=np.float32)
    np.testing.assert_array_equal(np.nonzero(run(be, "ties", [z], density=0.25))[0], [7, 8, 9])
    np.testing.assert_array_equal(np.nonzero(run(be, "ties", [z[:7]], density=0.01))[0], [6])


def test_density_one_returns_input(be):
    x = rand((4, 5), 2)
    for name in ("ties", "dare_ties", "dare_linear", "breadcrumbs_ties", "breadcrumbs"):
        extra = {"gamma": 0.0} if name.startswith("breadcrumbs") else {}
        np.testing.assert_array_equal(run(be, name, [x], seed=SEED, density=1.0, **extra), x)
    np.testing.assert_array_equal(run(be, "della", [x], seed=SEED, density=1.0, epsilon=0.0), x)


@pytest.mark.parametrize("elect", ["mass", "count"])
@pytest.mark.parametrize("weighted_elect", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
def test_ties(be, elect, weighted_elect, normalize):
    xs = [rand((4, 5), s) for s in range(3)]
    d = (0.5, 0.3, 0.8)
    w = (1.0, 0.5, 2.0)
    taus = [o_topk(x, di) for x, di in zip(xs, d)]
    exp = 0.9 * o_disjoint(taus, w, elect, weighted_elect, normalize)
    out = run(be, "ties", xs, density=d, weight=w, elect=elect, weighted_elect=weighted_elect,
              normalize=normalize, **{"lambda": 0.9})
    close(out, exp.reshape(4, 5))


def test_ties_sign_ties_and_zeros(be):
    a = np.array([1.0, 2.0, 0.0, -3.0, 1.0], np.float32)
    b = np.array([-1.0, 1.0, 0.0, 3.0, 0.0], np.float32)
    # entry 0: 1 + -1 = 0 -> elected sign 0 -> 0; entry 2: all zero -> 0; entry 3 likewise
    out = run(be, "ties", [a, b], density=1.0)
    np.testing.assert_array_equal(out, [0.0, 1.5, 0.0, 0.0, 1.0])
    # count election: entry 1 has 2 positive votes; entry 4 one vote (zeros never vote)
    out = run(be, "ties", [a, b], density=1.0, elect="count")
    np.testing.assert_array_equal(out, [0.0, 1.5, 0.0, 0.0, 1.0])
    out = run(be, "ties", [a, b], density=1.0, normalize=False)
    np.testing.assert_array_equal(out, [0.0, 3.0, 0.0, 0.0, 1.0])


def test_ties_zero_agreeing_weight_sum(be):
    a = np.array([1.0, 2.0, -1.0], np.float32)
    b = np.array([2.0, 1.0, -3.0], np.float32)
    out = run(be, "ties", [a, b], density=1.0, weight=(1.0, -1.0))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.0])
    close(out, o_disjoint([a, b], (1.0, -1.0)).reshape(3))


def test_ties_all_zero(be):
    z = np.zeros((4, 5), np.float32)
    for name in ("ties", "dare_ties", "breadcrumbs_ties", "della", "sce", "model_stock"):
        out = run(be, name, [z, z], seed=SEED, density=0.5) if name not in ("sce", "model_stock") \
            else run(be, name, [z, z])
        np.testing.assert_array_equal(out, z)


def test_ties_trim_model(be):
    xs = [rand((4, 5), s) for s in range(2)]
    thr = (0.5, 1.0)
    taus = [np.where(np.abs(x) >= t, x, 0) for x, t in zip(xs, thr)]
    out = run(be, "ties", xs, trim="model", thresholds=thr)
    close(out, o_disjoint(taus, (1.0, 1.0)).reshape(4, 5))
    with pytest.raises(ValueError, match="thresholds"):
        run(be, "ties", xs, trim="model")


def test_ties_identical_inputs(be):
    x = rand((4, 5), 7)
    close(run(be, "ties", [x, x, x], density=1.0, weight=(0.3, 1.0, 2.0)), x, rtol=1e-6, atol=0)
    close(run(be, "ties", [x, x], density=0.4), o_topk(x, 0.4), rtol=1e-6, atol=0)


# DARE --------------------------------------------------------------------------------------


@pytest.mark.parametrize("rescale", ["inverse", "l1", "none"])
def test_dare_linear(be, rescale):
    xs = [rand((4, 5), s) for s in range(3)]
    d = (0.5, 0.2, 1.0)
    w = (1.0, 0.5, 2.0)
    taus = [o_dare(x, i, di, rescale) for i, (x, di) in enumerate(zip(xs, d))]
    exp = 0.8 * sum(wi * t for wi, t in zip(w, taus))
    close(run(be, "dare_linear", xs, seed=SEED, density=d, weight=w, rescale=rescale,
              **{"lambda": 0.8}), exp)


@pytest.mark.parametrize("rescale", ["inverse", "l1"])
def test_dare_ties(be, rescale):
    xs = [rand((4, 5), s) for s in range(3)]
    taus = [o_dare(x, i, 0.6, rescale) for i, x in enumerate(xs)]
    close(run(be, "dare_ties", xs, seed=SEED, density=0.6, rescale=rescale),
          o_disjoint(taus, (1, 1, 1)).reshape(4, 5))


def test_dare_all_dropped_l1(be):
    x = rand((3,), 1)
    # find a seed where nothing is kept at density 0.05
    seed = next(s for s in range(1000) if not (rnd.uniform(s, 0, (3,)) < np.float32(0.05)).any())
    out = run(be, "dare_linear", [x], seed=seed, density=0.05, rescale="l1")
    np.testing.assert_array_equal(out, np.zeros(3, np.float32))


def test_dare_mask_depends_on_seed_and_stream(be):
    x = np.ones((8, 8), np.float32)
    a = run(be, "dare_linear", [x], seed=1, density=0.5, rescale="none")
    b = run(be, "dare_linear", [x], seed=2, density=0.5, rescale="none")
    c = run(be, "dare_linear", [x], seed=1, density=0.5, rescale="none")
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    assert 16 < np.count_nonzero(a) < 48


def test_random_needs_seed(be):
    with pytest.raises(ValueError, match="seed"):
        run(be, "dare_linear", [rand((5,), 0)], seed=None, density=0.5)


# breadcrumbs -------------------------------------------------------------------------------


@pytest.mark.parametrize("density,gamma", [(0.5, 0.1), (0.8, 0.05), (0.3, 0.0), (1.0, 0.2),
                                           (0.1, 0.01)])
def test_breadcrumbs(be, density, gamma):
    xs = [rand((4, 5), s) for s in range(2)]
    w = (1.0, 0.5)
    taus = [o_breadcrumbs(x, density, gamma) for x in xs]
    close(run(be, "breadcrumbs", xs, density=density, gamma=gamma, weight=w, **{"lambda": 2.0}),
          2.0 * sum(wi * t for wi, t in zip(w, taus)))
    close(run(be, "breadcrumbs_ties", xs, density=density, gamma=gamma, weight=w),
          o_disjoint(taus, w).reshape(4, 5))


def test_breadcrumbs_small_tensor(be):
    # 7 entries < 1/gamma: the top count rounds to 0, only the bottom is dropped
    x = np.array([3.0, -1.0, 0.5, -7.0, 2.0, 0.25, 4.0], np.float32)
    out = run(be, "breadcrumbs", [x], density=0.5, gamma=0.01)
    np.testing.assert_array_equal(out, [3.0, 0, 0, -7.0, 2.0, 0, 4.0])  # round(3.5) = 4 kept
    out = run(be, "breadcrumbs", [x], density=0.5, gamma=0.2)  # top 1 dropped, 4 kept
    np.testing.assert_array_equal(out, [3.0, -1.0, 0, 0, 2.0, 0, 4.0])
    one = np.array([5.0], np.float32)
    np.testing.assert_array_equal(run(be, "breadcrumbs", [one], density=0.5, gamma=0.9), one)


# DELLA -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7,), (4, 5), (2, 2, 3)])
@pytest.mark.parametrize("rescale", ["inverse", "l1", "none"])
def test_della_linear(be, shape, rescale):
    xs = [rand(shape, s) for s in range(2)]
    d, e = (0.5, 0.3), (0.15, 0.3)
    taus = [o_della(x, i, di, ei, rescale) for i, (x, di, ei) in enumerate(zip(xs, d, e))]
    close(run(be, "della_linear", xs, seed=SEED, density=d, epsilon=e, rescale=rescale),
          sum(taus))


def test_della(be):
    xs = [rand((4, 5), s) for s in range(3)]
    taus = [o_della(x, i, 0.6, 0.2) for i, x in enumerate(xs)]
    close(run(be, "della", xs, seed=SEED, density=0.6, epsilon=0.2, **{"lambda": 0.5}),
          0.5 * o_disjoint(taus, (1, 1, 1)).reshape(4, 5))


def test_della_low_density_never_divides_by_zero(be):
    x = rand((4, 5), 3)
    out = run(be, "della_linear", [x], seed=SEED, density=0.1, epsilon=0.3)  # p <= 0 for low ranks
    assert np.isfinite(out).all()
    close(out, o_della(x, 0, 0.1, 0.3))


def test_della_ties_in_magnitude(be):
    x = np.full((2, 6), 0.5, np.float32)
    close(run(be, "della_linear", [x], seed=SEED, density=0.5, epsilon=0.4),
          o_della(x, 0, 0.5, 0.4))


# model_stock, sce --------------------------------------------------------------------------


@pytest.mark.parametrize("filter_wise", [False, True])
@pytest.mark.parametrize("n", [2, 3])
def test_model_stock(be, filter_wise, n):
    common = rand((4, 5), 100)
    xs = [common + rand((4, 5), s) * 0.7 for s in range(n)]
    close(run(be, "model_stock", xs, filter_wise=filter_wise), o_model_stock(xs, filter_wise))


def test_model_stock_identical_and_degenerate(be):
    x = rand((4, 5), 1)
    close(run(be, "model_stock", [x, x, x]), x, rtol=1e-6, atol=0)
    out = run(be, "model_stock", [x, -x])  # cos = -1: denominator 0 -> t = 0
    np.testing.assert_array_equal(out, np.zeros_like(x))
    y = x.copy()
    y[2] = 0
    close(run(be, "model_stock", [x, y], filter_wise=True), o_model_stock([x, y], True))


@pytest.mark.parametrize("select_topk", [1.0, 0.5, 0.2])
def test_sce(be, select_topk):
    xs = [rand((4, 5), s) for s in range(3)]
    close(run(be, "sce", xs, select_topk=select_topk, **{"lambda": 1.5}),
          o_sce(xs, select_topk, 1.5))


def test_sce_identical(be):
    x = rand((4, 5), 1)
    close(run(be, "sce", [x, x]), x, rtol=1e-6, atol=0)


@pytest.mark.torch
@pytest.mark.parametrize("host_select", [True, False])
def test_torch_topk_selection_paths(host_select):
    import torch

    from mergec.backends.reference import topk_mask as ref_topk
    from mergec.backends.torch_backend import topk_mask

    rng = np.random.default_rng(4)
    for n in (1, 2, 7, 30):
        x = np.abs(np.round(rng.standard_normal(n) * 2) / 2).astype(np.float32)  # many ties
        for k in range(n + 1):
            got = topk_mask(torch.from_numpy(x), k, host_select=host_select).numpy()
            np.testing.assert_array_equal(got, ref_topk(x, k))
            keep = set(o_order(x)[:k])
            np.testing.assert_array_equal(np.nonzero(got)[0], sorted(keep))


@pytest.mark.jax
@pytest.mark.parametrize("host_select", [True, False])
def test_jax_topk_selection_paths(host_select):
    import jax

    from mergec.backends.jax_backend import topk_mask
    from mergec.backends.reference import topk_mask as ref_topk

    rng = np.random.default_rng(4)
    for n in (1, 2, 7, 30):
        x = (np.round(rng.standard_normal(n) * 2) / 2).astype(np.float32)  # many ties, signs
        for k in range(n + 1):
            got = np.asarray(topk_mask(jax.numpy.asarray(x), k, host_select=host_select))
            np.testing.assert_array_equal(got, ref_topk(np.abs(x), k))
            keep = set(o_order(x)[:k])
            np.testing.assert_array_equal(np.nonzero(got)[0], sorted(keep))
    # 2-D, every entry equal, -0.0 and 0.0, subnormals, infinities
    y = np.array([[0.0, -0.0, 1e-45, -1e-45], [3e-39, np.inf, -np.inf, 2.0]], np.float32)
    for k in range(y.size + 1):
        got = np.asarray(topk_mask(jax.numpy.asarray(y), k, host_select=host_select))
        np.testing.assert_array_equal(got, ref_topk(np.abs(y), k))
    z = np.full((3, 5), -0.75, np.float32)
    for k in (1, 7, 14):
        got = np.asarray(topk_mask(jax.numpy.asarray(z), k, host_select=host_select))
        np.testing.assert_array_equal(got.reshape(-1), np.arange(15) < k)


@pytest.mark.jax
def test_jax_kernels_compile_once_per_shape():
    """Weights, t, densities, lambda and k are traced: new values reuse the compiled kernels."""
    from mergec.backends.jax_backend import JaxBackend, kernel_traces

    be = JaxBackend("cpu", host_select=False)
    xs = [rand((6, 7), s) for s in range(3)]

    def traces():
        return sum(kernel_traces().values())

    run(be, "ties", xs, density=(0.5, 0.3, 0.8), weight=(1.0, 0.5, 2.0), **{"lambda": 0.9})
    run(be, "slerp", xs[:2], t=0.3)
    run(be, "della", xs, seed=SEED, density=0.6, epsilon=0.2)
    before = traces()
    for d, w, lam in ((0.2, 3.0, 1.0), (0.9, -1.5, 0.25)):
        run(be, "ties", xs, density=(d, d / 2, 0.7), weight=(w, 1.0, 0.5), **{"lambda": lam})
        run(be, "slerp", xs[:2], t=d)
        run(be, "della", xs, seed=SEED + 1, density=d, epsilon=0.05)
    assert traces() == before
    run(be, "ties", [rand((5, 7), s) for s in range(3)])  # a new shape compiles
    assert traces() > before


# errors ------------------------------------------------------------------------------------


def test_unknown_method(be):
    with pytest.raises(ValueError, match="fisher"):
        run_method(be, "fisher", [be.asarray(np.zeros(3, np.float32))], {}, None)


def test_arity_and_shapes(be):
    a = be.asarray(np.zeros(3, np.float32))
    b = be.asarray(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="exactly 2"):
        run_method(be, "slerp", [a], {"t": 0.5, "epsilon": 1e-8}, None)
    with pytest.raises(ValueError, match="shapes"):
        run_method(be, "linear", [a, b], {"weight": (1.0, 1.0), "normalize": True}, None)
