"""Every backend agrees with the reference on random inputs for every method (random ones
too), and torch and jax agree with each other; random masks are identical on all of them."""

from __future__ import annotations

import importlib.util
import zlib

import numpy as np
import pytest

from mergec.backends import get_backend
from mergec.methods import METHODS, REQUIRED
from mergec.methods import run_method

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None

SHAPES = [(7,), (4, 5), (3, 4, 6), (), (64, 33)]


def _inputs(method, shape, seed):
    rng = np.random.default_rng(seed)
    n = method.min_inputs if method.max_inputs == method.min_inputs else max(3, method.min_inputs)
    common = rng.standard_normal(shape)
    xs = [(0.5 * common + rng.standard_normal(shape)).astype(np.float32) for _ in range(n)]
    if method.stats is not None:  # then one statistics tensor per input
        want = method.stats_shape(shape) if method.stats_shape is not None else shape
        if want is None:
            pytest.skip(f"{method.name} has no statistics for a tensor of shape {shape}")
        if method.stats == "gram":  # X^T X / rows: symmetric positive semi-definite
            xs += [(lambda a: (a.T @ a / a.shape[0]).astype(np.float32))(
                rng.standard_normal((2 * want[0] + 3, want[0]))) for _ in range(n)]
        else:  # a diagonal Fisher: non-negative
            xs += [np.abs(rng.standard_normal(want)).astype(np.float32) for _ in range(n)]
    return xs


def _params(method, n, rng):
    out = {}
    for p in method.params:
        v = p.default
        if v is REQUIRED or p.name in ("density", "epsilon", "gamma", "weight"):
            lo = p.min if p.min is not None else 0.0
            hi = p.max if p.max is not None else 1.0
            lo, hi = (0.05, 0.95) if p.name == "density" else (lo, min(hi, 0.49))
            if p.name == "weight":
                lo, hi = 0.2, 2.0
            if p.name == "t" and method.name == "nearswap":
                lo, hi = 0.05, 1.0
            v = (tuple(float(rng.uniform(lo, hi)) for _ in range(n)) if p.per_input
                 else float(rng.uniform(lo, hi)))
        elif p.per_input:
            v = (float(v),) * n
        out[p.name] = v
    return out


VARIANTS = {
    "ties": [{}, {"elect": "count"}, {"weighted_elect": True, "normalize": False}],
    "dare_linear": [{"rescale": "inverse"}, {"rescale": "l1"}, {"rescale": "none"}],
    "dare_ties": [{"rescale": "l1", "elect": "count"}, {"weighted_elect": True}],
    "della": [{"rescale": "inverse"}, {"rescale": "l1"}],
    "della_linear": [{"rescale": "none"}, {"normalize": True}],
    "nuslerp": [{"flatten": True}, {"flatten": False, "row_wise": True},
                {"flatten": False, "row_wise": False}],
    "model_stock": [{"filter_wise": False}, {"filter_wise": True}],
    "sce": [{"select_topk": 1.0}, {"select_topk": 0.3}],
}


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _has_jax_gpu() -> bool:
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not HAS_TORCH or not _has_cuda(), reason="no CUDA device"))]
JAX_DEVICES = [pytest.param("cpu", marks=pytest.mark.jax), pytest.param("gpu", marks=[
    pytest.mark.jax,
    pytest.mark.skipif(not HAS_JAX or not _has_jax_gpu(), reason="no GPU device for jax")])]


def _make(name, device):
    if name == "jax-xla-select":  # the device-side top-k and DELLA ranks, on the cpu too
        from mergec.backends.jax_backend import JaxBackend

        return JaxBackend(device, host_select=False)
    return get_backend(name, device=device)


def _cases(method, shape):
    """(inputs, params, seed, variant) of every variant of a method, the same on each call."""
    rng = np.random.default_rng(zlib.crc32(f"{method.name}{shape}".encode()))
    for k, variant in enumerate(VARIANTS.get(method.name, [{}])):
        xs = _inputs(method, shape, k)
        p = _params(method, len(xs) // (2 if method.stats is not None else 1), rng)
        p.update(variant)
        seed = int(rng.integers(0, 2**63)) if method.random else None
        yield xs, p, seed, variant


def _run(b, method, xs, p, seed):
    return b.to_numpy(run_method(b, method.name, [b.asarray(x) for x in xs], p, seed), "float32")


def _agree(backends, method, shape):
    for xs, p, seed, variant in _cases(method, shape):
        outs = [_run(b, method, xs, p, seed) for b in backends]
        scale = max(1e-30, float(np.abs(outs[0]).max(initial=0.0)))
        np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-6 * scale,
                                   err_msg=f"{method.name} {variant}")


@pytest.mark.torch
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_reference_and_torch_agree(method, shape, device):
    _agree([get_backend("reference"), get_backend("torch", device=device)], method, shape)


@pytest.mark.parametrize("name", ["jax", "jax-xla-select"])
@pytest.mark.parametrize("device", JAX_DEVICES)
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_reference_and_jax_agree(method, shape, device, name):
    _agree([get_backend("reference"), _make(name, device)], method, shape)


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_torch_and_jax_agree(method, shape):
    _agree([get_backend("torch"), get_backend("jax")], method, shape)


RANDOM_BACKENDS = [pytest.param(("reference", "cpu"), id="reference"),
                   pytest.param(("torch", "cpu"), id="torch", marks=pytest.mark.torch),
                   pytest.param(("jax", "cpu"), id="jax", marks=pytest.mark.jax),
                   pytest.param(("jax-xla-select", "cpu"), id="jax-xla-select",
                                marks=pytest.mark.jax)]


@pytest.mark.parametrize("backend", RANDOM_BACKENDS)
@pytest.mark.parametrize("method,extra", [("dare_linear", {}),
                                          ("della_linear", {"epsilon": 0.25})],
                         ids=["dare", "della"])
def test_random_masks_are_identical(backend, method, extra):
    """The kept entries of DARE and DELLA (rescale none) equal the reference's bit for bit."""
    from mergec.methods import REGISTRY

    m = REGISTRY[method]
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((33, 40)).astype(np.float32),
          np.round(rng.standard_normal((33, 40)) * 2).astype(np.float32)]  # many equal |x|
    over = {"density": 0.3, "rescale": "none", "normalize": False, **extra}
    be = _make(*backend)
    for seed in (1, 2**63 + 5):
        for x in xs:
            p = {q.name: over.get(q.name, q.default) for q in m.params}
            p = {k: ((float(v),) if not isinstance(v, (bool, str)) and k in _per_input(m) else v)
                 for k, v in p.items()}
            want = _run(get_backend("reference"), m, [x], p, seed)
            got = _run(be, m, [x], p, seed)
            assert 0 < np.count_nonzero(want) < x.size
            np.testing.assert_array_equal(got != 0, want != 0)
            np.testing.assert_array_equal(got, want)


def _per_input(m):
    return {q.name for q in m.params if q.per_input}
