"""Reference and torch backends agree on random inputs for every method (random ones too)."""

from __future__ import annotations

import importlib.util
import zlib

import numpy as np
import pytest

from mergec.backends import get_backend
from mergec.ops.registry import METHODS, REQUIRED

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="torch not installed")

SHAPES = [(7,), (4, 5), (3, 4, 6), (), (64, 33)]


def _inputs(method, shape, seed):
    rng = np.random.default_rng(seed)
    n = method.min_inputs if method.max_inputs == method.min_inputs else max(3, method.min_inputs)
    common = rng.standard_normal(shape)
    return [(0.5 * common + rng.standard_normal(shape)).astype(np.float32) for _ in range(n)]


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


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or not _has_cuda(), reason="no CUDA device"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_reference_and_torch_agree(method, shape, device):
    ref, tb = get_backend("reference"), get_backend("torch", device=device)
    rng = np.random.default_rng(zlib.crc32(f"{method.name}{shape}".encode()))
    for k, variant in enumerate(VARIANTS.get(method.name, [{}])):
        xs = _inputs(method, shape, k)
        p = _params(method, len(xs), rng)
        p.update(variant)
        seed = int(rng.integers(0, 2**63)) if method.random else None
        outs = [b.to_numpy(b.method(method.name, [b.asarray(x) for x in xs], p, seed), "float32")
                for b in (ref, tb)]
        scale = max(1e-30, float(np.abs(outs[0]).max(initial=0.0)))
        np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-6 * scale,
                                   err_msg=f"{method.name} {variant}")
