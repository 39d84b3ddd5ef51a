"""The backend contract: discovery, conversion in and out, weighted_sum."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from mergec.backends import auto_backend, BackendUnavailable, available_backends, get_backend
from mergec.backends import base as B
from mergec.methods import METHODS
from mergec.methods.breadcrumbs import breadcrumbs_counts
from mergec.methods.spec import count_of, keep_count
from mergec.methods import run_method
from mergec.runtime.interpreter import lowrank

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
    pytest.param(("jax", "gpu"), id="jax-gpu", marks=[
        pytest.mark.jax,
        pytest.mark.skipif(not _has_jax_gpu(), reason="no GPU device for jax")]),
]

@pytest.fixture(params=BACKENDS)
def be(request):
    return get_backend(*request.param)


def test_package_import_does_not_import_torch():
    code = ("import sys, mergec.backends as b; b.available_backends(); "
            "b.get_backend('reference'); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_root()))


@pytest.mark.jax
def test_jax_backend_imports_jax_only():
    code = ("import sys, mergec.backends as b; be = b.get_backend('jax'); "
            "assert be.name == 'jax' and 'jax' in sys.modules; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_root()))


def _root():
    from pathlib import Path
    return Path(__file__).resolve().parent.parent


def test_discovery():
    names = available_backends()
    assert "reference" in names
    assert ("torch" in names) == HAS_TORCH
    assert ("jax" in names) == HAS_JAX
    # auto: the NumPy backend on a CPU (the fastest there, with the executor's blocks and
    # worker processes); torch, else jax, for a GPU
    assert get_backend("auto").name == "reference"
    assert get_backend("auto", device="cpu").name == "reference"
    assert auto_backend("cuda") == ("torch" if HAS_TORCH else "jax" if HAS_JAX else
                                    "reference")
    assert get_backend("numpy").name == "reference"
    with pytest.raises(ValueError, match="unknown backend"):
        get_backend("tensorflow")
    with pytest.raises(BackendUnavailable, match="cpu only"):
        get_backend("reference", device="cuda")
    assert get_backend("reference", device="auto").name == "reference"
    for lib in ("torch", "jax"):
        if lib not in names:  # a missing library is a clear error that says what to install
            with pytest.raises(BackendUnavailable, match=rf"pip install 'mergec\[{lib}\]'"):
                get_backend(lib)


@pytest.mark.torch
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


@pytest.mark.jax
def test_jax_devices():
    from mergec.backends.jax_backend import JaxBackend

    assert JaxBackend().device.platform == "cpu"
    assert JaxBackend("cpu").host_select and not JaxBackend("cpu", host_select=False).host_select
    if _has_jax_gpu():
        assert JaxBackend("auto").device.platform == "gpu"
        assert JaxBackend("cuda").device.platform == "gpu"
        assert JaxBackend("gpu:0").device.platform == "gpu"
        assert not JaxBackend("gpu").host_select
    else:
        assert JaxBackend("auto").device.platform == "cpu"
        for dev in ("cuda", "gpu", "cuda:0", "gpu:1"):
            with pytest.raises(BackendUnavailable, match="device"):
                JaxBackend(dev)
    with pytest.raises(BackendUnavailable, match="device"):
        JaxBackend("tpu-ish")


@pytest.mark.jax
def test_jax_device_side_conversions():
    """Off the cpu, jax moves bf16/f16 to the device as they are and widens them there, and
    casts to bf16/f16 there before copying back; that path, run on the cpu, rounds the same."""
    from mergec.backends.jax_backend import JaxBackend

    be = JaxBackend("cpu")
    be.platform = "gpu"  # take the device-side branches of asarray and to_numpy
    ulp = 2.0**-7
    vals = np.array([1 + 0.5 * ulp, 1 + 1.5 * ulp, 1 + 0.5 * ulp + 2**-20, -(1 + 2.5 * ulp),
                     3.0e38, 1e-40, 0.0, -0.0, 65504.0, 1e-8, 70000.0], np.float32)
    for dtype in ("bfloat16", "float16", "float32", "float64"):
        with np.errstate(over="ignore"):
            want = vals.astype(B.storage_dtype(dtype))
        out = be.to_numpy(be.asarray(vals), dtype)
        assert out.dtype == want.dtype and out.flags.owndata and out.flags.writeable
        np.testing.assert_array_equal(out.view(np.uint8), want.view(np.uint8))
    for dtype in ("bfloat16", "float16"):
        b = np.random.default_rng(0).standard_normal(64).astype(B.storage_dtype(dtype))
        x = be.asarray(b)
        assert x.dtype == np.float32
        np.testing.assert_array_equal(be.to_numpy(x, dtype).view(np.uint16), b.view(np.uint16))


@pytest.mark.jax
def test_jax_x64_stays_local():
    import jax

    before = bool(jax.config.jax_enable_x64)
    be = get_backend("jax")
    x = be.asarray(np.arange(6, dtype=np.float32))
    run_method(be, "ties", [x, x], {"weight": (1.0, 2.0), "density": (0.5, 0.5), "trim": "tensor",
                               "elect": "mass", "weighted_elect": True, "normalize": True,
                               "lambda": 1.0}, None)
    assert x.dtype == np.float32
    assert bool(jax.config.jax_enable_x64) == before  # float64 was switched on locally only


def test_every_registry_method_has_a_kernel(be):
    assert isinstance(be, B.ArrayOps)
    assert all(callable(m.compute) for m in METHODS)


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
    out = be.to_numpy(run_method(be, "passthrough", [t], {"scale": 1.0}, None), "float32")
    out[0] = 99.0
    assert x[0] == 0.0
    ro = np.arange(4, dtype=np.float32)
    ro.setflags(write=False)
    np.testing.assert_array_equal(be.to_numpy(be.asarray(ro), "float32"), ro)


def test_lowrank_and_zeros(be):
    rng = np.random.default_rng(2)
    b, a = rng.standard_normal((6, 2)).astype(np.float32), rng.standard_normal((2, 5)).astype(
        np.float32)
    d = be.to_numpy(lowrank(be, be.asarray(b), be.asarray(a), 0.5, False), "float32")
    np.testing.assert_allclose(d, 0.5 * (b.astype(np.float64) @ a), rtol=1e-6, atol=1e-6)
    dt = be.to_numpy(lowrank(be, be.asarray(b), be.asarray(a), 0.5, True), "float32")
    np.testing.assert_array_equal(dt, d.T)
    z = be.to_numpy(be.zeros((3, 2)), "float32")
    assert z.shape == (3, 2) and z.dtype == np.float32 and not z.any()


def _on_cpu(be) -> bool:
    dev = be.device
    return dev == "cpu" or getattr(dev, "type", None) == "cpu" or \
        getattr(dev, "platform", None) == "cpu"


def test_weighted_sum_is_rounded_per_operation(be):
    """Each product and each sum is rounded to float32 (float64 in weighted_sum64) with no
    fused multiply-add, as in the reference, so weighted sums are bit-identical on every CPU
    backend."""
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(4096).astype(np.float32) for _ in range(3)]
    cs = [0.3, -0.7, 1.0 / 3.0]
    want = xs[0] * np.float32(cs[0]) + xs[1] * np.float32(cs[1]) + xs[2] * np.float32(cs[2])
    got = be.to_numpy(be.wsum([(be.asarray(x), c) for x, c in zip(xs, cs)]), "float32")
    want64 = xs[0].astype(np.float64) * cs[0]
    for x, c in zip(xs[1:], cs[1:]):
        want64 += x.astype(np.float64) * c
    s64 = be.wsum64([(be.asarray(x), c) for x, c in zip(xs, cs)])
    got64 = be.to_numpy(s64, "float64")
    got32 = be.to_numpy(be.to_float32(s64), "float32")
    if _on_cpu(be):
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got64, want64)
        np.testing.assert_array_equal(got32, want64.astype(np.float32))
    else:  # a GPU may round differently in the last bit
        np.testing.assert_allclose(got, want, rtol=3e-7, atol=1e-7)
        np.testing.assert_allclose(got64, want64, rtol=1e-15, atol=1e-15)


def test_weighted_sum(be):
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3)]
    cs = [1.0, -1.0, 0.25]
    out = be.to_numpy(be.wsum([(be.asarray(x), c) for x, c in zip(xs, cs)]), "float32")
    np.testing.assert_allclose(out, sum(c * x.astype(np.float64) for x, c in zip(xs, cs)),
                               rtol=1e-6, atol=1e-6)
    one = be.to_numpy(be.wsum([(be.asarray(xs[0]), 1.0)]), "float32")
    np.testing.assert_array_equal(one, xs[0])
    with pytest.raises(ValueError):
        be.wsum([])


def test_counting_rules():
    assert count_of(0.3, 10) == 3 and count_of(0.35, 10) == 4 and count_of(0.25, 10) == 3
    assert keep_count(1.0, 7) == 7 and keep_count(0.01, 7) == 1 and keep_count(0.5, 7) == 4
    for n in (1, 3, 10, 1000, 12345):
        for d in (0.1, 0.2, 0.3, 0.7, 0.9):
            if abs(d * n - round(d * n)) < 1e-9:
                assert keep_count(d, n) == round(d * n)
    assert breadcrumbs_counts(0.5, 0.01, 7) == (0, 4)
    assert breadcrumbs_counts(1.0, 0.0, 9) == (0, 9)
    assert breadcrumbs_counts(0.9, 0.9, 1) == (0, 1)
    assert breadcrumbs_counts(0.9, 0.2, 10) == (2, 8)


@pytest.mark.parametrize("shape", [(37, 19), (4, 3, 5), (11,), ()])
def test_row_partials_match_the_shared_rule(be, shape):
    """gram_rows / abs_rows, computed where the arrays are, give the per-row partials of
    the shared rule (float64 sums of the float32 products) exactly, and the whole-tensor
    gram / abs_sum64 are their totals: the same whether a pass sums them block by block."""
    rng = np.random.default_rng(7)
    xs = [(rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 3)).astype(np.float32)
          for _ in range(3)]
    dev = [be.asarray(x) for x in xs]
    rows = B.gram_partials(xs)
    got = be.gram_rows(dev)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_array_equal(got, rows)
    np.testing.assert_array_equal(be.abs_rows(dev[1]), B.abs_partials(xs[1]))
    np.testing.assert_array_equal(be.gram(dev), B.total([rows]))
    assert be.abs_sum64(dev[2]) == float(B.total([B.abs_partials(xs[2])]))
    if len(shape) >= 2:  # summed over two blocks of rows: the same totals
        cut = shape[0] // 3
        halves = [be.gram_rows([be.asarray(x[:cut]) for x in xs]),
                  be.gram_rows([be.asarray(x[cut:]) for x in xs])]
        np.testing.assert_array_equal(B.total(halves), be.gram(dev))
