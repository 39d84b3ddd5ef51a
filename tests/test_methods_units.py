"""Methods as units: every method is declared and implemented once over the backends'
array primitives; the primitives agree across backends; a backend's fused fast path
equals the shared code bit for bit."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from mergec.backends import get_backend
from mergec.backends.base import ArrayOps
from mergec.methods import METHODS, MODULES, REGISTRY
from mergec.methods import consensus

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["reference", pytest.param("torch", marks=pytest.mark.torch),
            pytest.param("jax", marks=pytest.mark.jax)]


@pytest.fixture(params=BACKENDS)
def be(request):
    return get_backend(request.param, "cpu")


def test_every_method_is_declared_once_with_an_implementation():
    names = [m.name for m in METHODS]
    assert len(names) == len(set(names))
    for m in METHODS:
        assert callable(m.compute), m.name
        assert m.split({p.name: p.default for p in m.params}, 2) in (
            "entries", "masks", "gram", "rows", "whole"), m.name
        if m.split({p.name: p.default for p in m.params}, 2) == "gram":
            assert m.gram_coefficients is not None, m.name


def test_backends_hold_no_method_logic():
    """No backend module names a method: methods live in mergec/methods only."""
    for mod in ("reference", "torch_backend", "jax_backend", "base"):
        text = (ROOT / "mergec" / "backends" / f"{mod}.py").read_text(encoding="utf-8")
        code = [n.id for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Name)] + \
            [n.attr for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Attribute)] + \
            [n.name for n in ast.walk(ast.parse(text)) if isinstance(n, ast.FunctionDef)]
        named = sorted({m for m in REGISTRY for c in code if c.lstrip("_") == m})
        assert not named, f"{mod}.py names methods {named}"


def test_each_method_module_is_registered():
    files = {p.stem for p in (ROOT / "mergec" / "methods").glob("*.py")}
    shared = {"__init__", "spec", "consensus"}
    assert files - shared == set(MODULES)


def test_backends_provide_every_primitive(be):
    assert isinstance(be, ArrayOps)


def _shared_disjoint(ops, taus, w, elect, weighted, normalize):
    """The shared code path, with the backend's fused form hidden."""

    class Plain:
        def __getattr__(self, name):
            if name == "disjoint_merge":
                raise AttributeError(name)
            return getattr(ops, name)

    return consensus.disjoint(Plain(), taus, w, elect, weighted, normalize, "ties")


@pytest.mark.parametrize("elect", ["mass", "count"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("chunk", [None, 64])
def test_fused_disjoint_merge_equals_the_shared_code(elect, weighted, normalize, chunk,
                                                     monkeypatch):
    if chunk is not None:  # a large array is merged in flat chunks (the last one short)
        monkeypatch.setattr("mergec.backends.reference.CHUNK", chunk)
    be = get_backend("reference")
    assert hasattr(be, "disjoint_merge")
    rng = np.random.default_rng(3)
    taus = []
    for i in range(3):
        x = rng.standard_normal((33, 17)).astype(np.float32)
        x[rng.random(x.shape) < 0.4] = 0.0  # sparse, as after a trim
        x[0, :4] = [-0.0, 0.0, np.float32(1e-40), -np.float32(1e-40)]
        taus.append(x)
    taus[2][5] = -taus[0][5]  # ties in the vote
    w = [1.0, 0.3, -0.7] if not normalize else [1.0, 0.3, 0.7]
    fused = be.disjoint_merge(taus, w, elect, weighted, normalize)
    shared = _shared_disjoint(be, taus, w, elect, weighted, normalize)
    assert fused.dtype == shared.dtype == np.float32
    np.testing.assert_array_equal(fused.view(np.uint32), shared.view(np.uint32))


def test_shared_disjoint_merge_on_every_backend_equals_numpy(be):
    rng = np.random.default_rng(5)
    taus = [rng.standard_normal((9, 11)).astype(np.float32) for _ in range(3)]
    want = get_backend("reference").disjoint_merge(taus, [1.0, 0.5, 2.0], "mass", True, True)
    got = be.to_numpy(_shared_disjoint(be, [be.asarray(t) for t in taus], [1.0, 0.5, 2.0],
                                       "mass", True, True), "float32")
    np.testing.assert_array_equal(got, want)


def test_slicing_concatenation_and_linear_algebra(be):
    rng = np.random.default_rng(7)
    a = rng.standard_normal((6, 4)).astype(np.float32)
    b = rng.standard_normal((4, 3)).astype(np.float32)
    x, y = be.asarray(a), be.asarray(b)
    np.testing.assert_array_equal(be.to_numpy(be.take(x, 1, 1, 3), "float32"), a[:, 1:3])
    np.testing.assert_array_equal(be.to_numpy(be.take(x, 0, 2, 6), "float32"), a[2:6])
    np.testing.assert_array_equal(be.to_numpy(be.concat([x, x], 1), "float32"),
                                  np.concatenate([a, a], 1))
    np.testing.assert_allclose(be.to_numpy(be.matmul(x, y), "float32"), a @ b, rtol=1e-5,
                               atol=1e-6)
    u, s, vt = be.svd(x)
    u, s, vt = (be.to_numpy(v, "float64") for v in (u, s, vt))
    assert u.shape == (6, 4) and s.shape == (4,) and vt.shape == (4, 4)
    np.testing.assert_allclose((u * s) @ vt, a.astype(np.float64), atol=1e-12)
    np.testing.assert_allclose(s, np.linalg.svd(a.astype(np.float64), compute_uv=False),
                               rtol=1e-12)


@pytest.mark.parametrize("wide", [False, True])
def test_weighted_sums_in_chunks_equal_whole_arrays(wide, monkeypatch):
    """The NumPy backend computes a large weighted sum in flat chunks: the bits are those
    of the whole-array expression (entry by entry, the same operations in the same
    order), for any chunk size, including a short last chunk and non-finite entries."""
    rng = np.random.default_rng(11)
    xs = [(rng.standard_normal((37, 29)) * 10.0 ** rng.integers(-30, 30, (37, 29)))
          .astype(np.float32) for _ in range(3)]
    xs[1][3, :5] = [np.inf, -np.inf, np.nan, -0.0, np.float32(1e-42)]
    terms = [(x, c) for x, c in zip(xs, (0.1, -1.7, 3.0e5))]
    be = get_backend("reference")
    f = be.wsum64 if wide else be.wsum
    monkeypatch.setattr("mergec.backends.reference.CHUNK", 1 << 30)
    whole = f(terms)
    if wide:  # the whole-array rule, written out
        ref = xs[0].astype(np.float64) * 0.1
        ref += xs[1].astype(np.float64) * -1.7
        ref += xs[2].astype(np.float64) * 3.0e5
    else:
        ref = (xs[0] * np.float32(0.1) + xs[1] * np.float32(-1.7)) + xs[2] * np.float32(3.0e5)
    np.testing.assert_array_equal(whole, ref)
    for chunk in (1, 100, 64 * 5 + 3):
        monkeypatch.setattr("mergec.backends.reference.CHUNK", chunk)
        got = f(terms)
        assert got.dtype == whole.dtype and got.shape == whole.shape
        assert got.tobytes() == whole.tobytes()
