"""Iso-C against the closed-form NumPy reference (tests/method_refs.py), on every
backend, and end to end in a build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mergec.api import build
from mergec.backends import get_backend
from mergec.demo import load_tensors
from mergec.methods import run_method
from method_refs import iso_c_reference

BACKENDS = ["reference", pytest.param("torch", marks=pytest.mark.torch),
            pytest.param("jax", marks=pytest.mark.jax)]
PARAMS = {"lambda": 1.0, "decompose": True}


@pytest.fixture(params=BACKENDS)
def be(request):
    return get_backend(request.param, "cpu")


def iso_c(be, taus, **params):
    out = run_method(be, "iso_c", [be.asarray(t) for t in taus], {**PARAMS, **params})
    return be.to_numpy(out, "float32")


def full_rank(rng, shape, n):
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("shape", [(12, 9), (9, 12), (16, 16)])
@pytest.mark.parametrize("n", [1, 2, 4])
def test_matrices_match_the_reference(be, shape, n):
    taus = full_rank(np.random.default_rng(n), shape, n)
    want = iso_c_reference(np.zeros(shape), taus)
    np.testing.assert_allclose(iso_c(be, taus), want, rtol=1e-5, atol=1e-6)


def test_singular_values_are_all_the_mean(be):
    taus = full_rank(np.random.default_rng(3), (10, 7), 3)
    s = np.linalg.svd(np.sum([t.astype(np.float64) for t in taus], axis=0), compute_uv=False)
    got = np.linalg.svd(iso_c(be, taus, **{"lambda": 0.5}).astype(np.float64),
                        compute_uv=False)
    np.testing.assert_allclose(got, np.full(7, 0.5 * s.mean()), rtol=1e-5)


@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), ()])
def test_other_tensors_take_the_mean(be, shape):
    taus = full_rank(np.random.default_rng(8), shape, 3)
    want = iso_c_reference(np.zeros(shape), taus, alpha=1.5)
    np.testing.assert_allclose(iso_c(be, taus, **{"lambda": 1.5}), want, rtol=1e-6, atol=1e-6)


def test_decompose_false_takes_the_mean(be):
    taus = full_rank(np.random.default_rng(9), (6, 5), 2)
    want = iso_c_reference(np.zeros((6, 5)), taus, as_matrix=False)
    np.testing.assert_allclose(iso_c(be, taus, decompose=False), want, rtol=1e-6, atol=1e-7)


def test_build(tmp_path, family_f32):
    (tmp_path / "ckpt").symlink_to(Path(family_f32["base"]).parent)
    (tmp_path / "r.merge").write_text(
        'model base = "./ckpt/base"\nmodel math = "./ckpt/math"\nmodel code = "./ckpt/code"\n'
        "output o = iso_c(math, code, base=base, lambda=1.2)\n")
    res = build(tmp_path / "r.merge", tmp_path / "out")
    got = load_tensors(Path(res[0].path))
    fam = {n: load_tensors(Path(family_f32[n])) for n in ("base", "math", "code")}
    assert got.keys() == fam["base"].keys()
    for name, g in got.items():
        want = iso_c_reference(fam["base"][name], [fam["math"][name], fam["code"][name]],
                               alpha=1.2)
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6, err_msg=name)
