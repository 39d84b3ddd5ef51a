"""The backend contract: discovery, conversion in and out, weighted_sum."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from mergec.backends import BackendUnavailable, available_backends, get_backend
from mergec.backends import base as B
from mergec.ops.registry import METHODS

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _has_cuda() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return torch.cuda.is_available()


BACKENDS = [
    pytest.param(("reference", "cpu"), id="reference"),
    pytest.param(("torch", "cpu"), id="torch",
                 marks=pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")),
    pytest.param(("torch", "cuda"), id="torch-cuda",
                 marks=pytest.mark.skipif(not _has_cuda(), reason="no CUDA device")),
]

@pytest.fixture(params=BACKENDS)
def be(request):
    return get_backend(*request.param)


def test_package_import_does_not_import_torch():
    code = ("import sys, mergec.backends as b; b.available_backends(); "
            "b.get_backend('reference'); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_root()))


def _root():
    from pathlib import Path
    return Path(__file__).resolve().parent.parent


def test_discovery():
    names = available_backends()
    assert "reference" in names
    assert ("torch" in names) == HAS_TORCH
    auto = get_backend("auto")
    assert auto.name == ("torch" if HAS_TORCH else "reference")
    assert get_backend("numpy").name == "reference"
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("tensorflow")
    with pytest.raises(BackendUnavailable, match="cpu only"):
        get_backend("reference", device="cuda")
    assert get_backend("reference", device="auto").name == "reference"
    if "jax" not in names:
        with pytest.raises(BackendUnavailable):
            get_backend("jax")


@pytest.mark.skipif(not HAS_TORCH, reason="no torch")
def test_torch_devices():
    import torch

    from mergec.backends.torch_backend import TorchBackend

    assert TorchBackend("auto").device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert TorchBackend("gpu").device.type == "cuda"
    else:
        for dev in ("cuda", "gpu", "cuda:0"):
            with pytest.raises(BackendUnavailable):
                TorchBackend(dev)


def test_every_registry_method_has_a_kernel(be):
    assert {m.name for m in METHODS} <= be.method_names
    assert isinstance(be, B.Backend)


def test_bf16_round_trip_nearest_even(be):
    # bf16 keeps 8 significant bits: 1 + k/128. Values exactly half way between two bf16
    # numbers round to the one with an even last bit.
    one = 1.0
    ulp = 2.0**-7
    vals = np.array([
        one + 0.5 * ulp,        # tie -> 1.0 (even)
        one + 1.5 * ulp,        # tie -> 1 + 2 ulp (even)
        one + 0.5 * ulp + 2**-20,  # above the tie -> 1 + ulp
        -(one + 2.5 * ulp),     # tie -> -(1 + 2 ulp)
        3.0e38, 1e-40, 0.0, -0.0,
    ], dtype=np.float32)
    expected = np.array([one, one + 2 * ulp, one + ulp, -(one + 2 * ulp)], dtype=np.float64)
    out = be.to_numpy(be.asarray(vals), "bfloat16")
    assert out.dtype == np.dtype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(out[:4].astype(np.float64), expected)
    np.testing.assert_array_equal(out, vals.astype(ml_dtypes.bfloat16))
    # bf16 in -> float32 compute -> bf16 out is exact
    b = np.random.default_rng(0).standard_normal(64).astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(be.to_numpy(be.asarray(b), "bfloat16").view(np.uint16),
                                  b.view(np.uint16))


def test_other_dtypes(be):
    x = np.array([1.0, 1.0 + 2**-11, 1.0 + 3 * 2**-11, 65504.0, 1e-8], np.float32)
    f16 = be.to_numpy(be.asarray(x), "float16")
    assert f16.dtype == np.float16
    np.testing.assert_array_equal(f16, x.astype(np.float16))
    assert f16[1] == 1.0 and f16[2] == np.float16(1.0 + 4 * 2**-11)  # nearest even
    f64 = be.to_numpy(be.asarray(x), "float64")
    assert f64.dtype == np.float64
    np.testing.assert_array_equal(f64, x.astype(np.float64))
    np.testing.assert_array_equal(be.to_numpy(be.asarray(x.astype(np.float16)), "float32"),
                                  x.astype(np.float16).astype(np.float32))
    with pytest.raises(ValueError, match="dtype"):
        be.to_numpy(be.asarray(x), "int8")


def test_no_aliasing(be):
    x = np.arange(6, dtype=np.float32)
    t = be.asarray(x)
    out = be.to_numpy(be.method("passthrough", [t], {"scale": 1.0}, None), "float32")
    out[0] = 99.0
    assert x[0] == 0.0
    ro = np.arange(4, dtype=np.float32)
    ro.setflags(write=False)
    np.testing.assert_array_equal(be.to_numpy(be.asarray(ro), "float32"), ro)


def test_weighted_sum(be):
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3)]
    cs = [1.0, -1.0, 0.25]
    out = be.to_numpy(be.weighted_sum([(be.asarray(x), c) for x, c in zip(xs, cs)]), "float32")
    np.testing.assert_allclose(out, sum(c * x.astype(np.float64) for x, c in zip(xs, cs)),
                               rtol=1e-6, atol=1e-6)
    one = be.to_numpy(be.weighted_sum([(be.asarray(xs[0]), 1.0)]), "float32")
    np.testing.assert_array_equal(one, xs[0])
    with pytest.raises(ValueError):
        be.weighted_sum([])


def test_counting_rules():
    assert B.count_of(0.3, 10) == 3 and B.count_of(0.35, 10) == 4 and B.count_of(0.25, 10) == 3
    assert B.keep_count(1.0, 7) == 7 and B.keep_count(0.01, 7) == 1 and B.keep_count(0.5, 7) == 4
    for n in (1, 3, 10, 1000, 12345):
        for d in (0.1, 0.2, 0.3, 0.7, 0.9):
            if abs(d * n - round(d * n)) < 1e-9:
                assert B.keep_count(d, n) == round(d * n)
    assert B.breadcrumbs_counts(0.5, 0.01, 7) == (0, 4)
    assert B.breadcrumbs_counts(1.0, 0.0, 9) == (0, 9)
    assert B.breadcrumbs_counts(0.9, 0.9, 1) == (0, 1)
    assert B.breadcrumbs_counts(0.9, 0.2, 10) == (2, 8)
