"""Property tests (hypothesis) of the merge kernels on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mergec.backends import get_backend
from mergec.methods import REGISTRY
from mergec.methods import run_method

BACKEND_NAMES = ["reference", pytest.param("torch", marks=pytest.mark.torch),
                 pytest.param("jax", marks=pytest.mark.jax)]
BACKENDS: dict = {}  # name -> backend, made on first use (torch and jax may be missing)
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

shapes = st.sampled_from([(1,), (5,), (3, 4), (2, 2, 3)])


def grid_arrays(shape, n):
    """n arrays of multiples of 1/4 in [-2, 2]: sums are exact, so results are order-free."""
    size = int(np.prod(shape))
    return st.lists(st.lists(st.integers(-8, 8), min_size=size, max_size=size),
                    min_size=n, max_size=n).map(
        lambda rows: [(np.array(r, np.float32) / 4).reshape(shape) for r in rows])


def float_arrays(shape, n):
    size = int(np.prod(shape))
    elem = st.floats(-10, 10, allow_nan=False, width=32)
    return st.lists(st.lists(elem, min_size=size, max_size=size), min_size=n, max_size=n).map(
        lambda rows: [np.array(r, np.float32).reshape(shape) for r in rows])


def run(backend, name, xs, params, seed=None):
    if backend not in BACKENDS:
        BACKENDS[backend] = get_backend(backend)
    b = BACKENDS[backend]
    full = {}
    for p in REGISTRY[name].params:
        v = params.get(p.name, p.default)
        if p.per_input:
            v = tuple(float(x) for x in v) if isinstance(v, (list, tuple)) else (v,) * len(xs)
        full[p.name] = v
    return b.to_numpy(run_method(b, name, [b.asarray(x) for x in xs], full, seed), "float32")


SYMMETRIC = {
    # method: (extra fixed params, per-input params drawn, exact grid inputs?)
    "linear": ({}, ("weight",), False),
    "task_arithmetic": ({"lambda": 0.5}, ("weight",), False),
    "ties": ({"elect": "mass"}, ("weight", "density"), True),
    "ties_count": ({"elect": "count", "weighted_elect": True}, ("weight", "density"), True),
    "breadcrumbs": ({}, ("weight", "density", "gamma"), True),
    "breadcrumbs_ties": ({}, ("weight", "density", "gamma"), True),
    "multislerp": ({}, ("weight",), False),
    "karcher": ({"max_iter": 20}, ("weight",), False),
    "model_stock": ({"filter_wise": True}, (), False),
    "sce": ({"select_topk": 0.5}, (), True),
}
#: exact inputs, but weights computed from them (not exact): compare with a tolerance
INEXACT_WEIGHTS = {"sce"}


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("key", sorted(SYMMETRIC))
@SETTINGS
@given(data=st.data())
def test_permutation_invariance(backend, key, data):
    name = "ties" if key == "ties_count" else key
    extra, per, grid = SYMMETRIC[key]
    shape = data.draw(shapes)
    n = data.draw(st.sampled_from([2, 4]) if key == "sce" else st.integers(2, 4))
    xs = data.draw(grid_arrays(shape, n) if grid else float_arrays(shape, n))
    if name in ("multislerp", "karcher"):  # keep the mean direction well defined
        xs = [x + 10.0 for x in xs]
    params = dict(extra)
    for p in per:
        if p == "weight" and grid:  # quarter multiples: weighted sums stay exact
            params[p] = [data.draw(st.integers(1, 8)) / 4 for _ in range(n)]
            continue
        lo, hi = {"weight": (0.25, 2.0), "density": (0.1, 1.0), "gamma": (0.0, 0.3)}[p]
        params[p] = [data.draw(st.floats(lo, hi)) for _ in range(n)]
    perm = data.draw(st.permutations(range(n)))
    pparams = {k: ([v[i] for i in perm] if k in per else v) for k, v in params.items()}
    a = run(backend, name, xs, params)
    b = run(backend, name, [xs[i] for i in perm], pparams)
    if grid and key not in INEXACT_WEIGHTS:
        np.testing.assert_array_equal(a, b)
    else:
        scale = max(1.0, float(np.abs(a).max()))
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@SETTINGS
@given(data=st.data())
def test_identical_inputs_return_the_input(backend, data):
    shape = data.draw(shapes)
    x = data.draw(float_arrays(shape, 1))[0]
    n = data.draw(st.integers(1, 4))
    w = [data.draw(st.floats(0.1, 3.0)) for _ in range(n)]
    tol = dict(rtol=1e-5, atol=1e-6 * max(1.0, float(np.abs(x).max())))
    np.testing.assert_allclose(run(backend, "linear", [x] * n, {"weight": w}), x, **tol)
    np.testing.assert_allclose(
        run(backend, "ties", [x] * n, {"weight": w, "density": [1.0] * n}), x, **tol)
    if n >= 2:
        np.testing.assert_allclose(run(backend, "model_stock", [x] * n, {}), x, **tol)
        np.testing.assert_allclose(run(backend, "karcher", [x] * n, {"weight": w}), x, **tol)
        np.testing.assert_allclose(run(backend, "multislerp", [x] * n, {"weight": w}), x, **tol)
        np.testing.assert_allclose(run(backend, "slerp", [x, x], {"t": w[0] / 3.0 % 1.0}), x,
                                   **tol)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@SETTINGS
@given(data=st.data())
def test_slerp_reversal(backend, data):
    shape = data.draw(shapes)
    a, b = data.draw(float_arrays(shape, 2))
    t = data.draw(st.floats(0.0, 1.0))
    x = run(backend, "slerp", [a, b], {"t": t})
    y = run(backend, "slerp", [b, a], {"t": 1.0 - t})
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(x).max())))


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@SETTINGS
@given(data=st.data())
def test_topk_keeps_exactly_k(backend, data):
    shape = data.draw(shapes)
    x = data.draw(grid_arrays(shape, 1))[0] + 3.0  # no zeros, many equal magnitudes
    d = data.draw(st.floats(0.05, 1.0))
    out = run(backend, "ties", [x], {"density": [d]})
    n = x.size
    k = n if d >= 1 else max(1, int(np.floor(d * n + 0.5 + 1e-9)))
    assert np.count_nonzero(out) == min(k, n)
    kept = np.abs(out[out != 0])
    dropped = np.abs(x[out == 0])
    if kept.size and dropped.size:
        assert kept.min() >= dropped.max()
