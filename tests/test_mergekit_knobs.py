"""The options that reproduce mergekit: `count="floor"` of ties, breadcrumbs and
breadcrumbs_ties (kept entries counted as int(fraction * n)) and nuslerp's
`lerp_threshold` (1: spherical interpolation unless the inputs are exactly parallel)."""

from __future__ import annotations

import numpy as np
import pytest

from mergec.backends import get_backend
from mergec.methods import REGISTRY, run_method
from mergec.methods.breadcrumbs import breadcrumbs_counts
from mergec.methods.spec import count_of, keep_count


def test_counts():
    assert [count_of(0.3, 4096, c) for c in ("round", "floor")] == [1229, 1228]
    assert [count_of(0.3, 64, c) for c in ("round", "floor")] == [19, 19]
    assert keep_count(0.001, 64, "floor") == 1  # TIES keeps at least one, as mergekit
    assert keep_count(1.0, 64, "floor") == 64
    # breadcrumbs: int(gamma n) dropped at the top, int(density n) kept, possibly none
    assert breadcrumbs_counts(0.5, 0.01, 4096, "floor") == (40, 2048)
    assert breadcrumbs_counts(0.5, 0.01, 4096) == (41, 2048)
    assert breadcrumbs_counts(1 / 128, 0.0, 64, "floor") == (0, 0)
    assert breadcrumbs_counts(1 / 128, 0.0, 64) == (0, 1)


def _run(method: str, x: np.ndarray, **given) -> np.ndarray:
    """`method` on one input with its defaults and `given`, on the NumPy backend."""
    b = get_backend("reference", device="cpu")
    p = {q.name: ((float(q.default),) if q.per_input else q.default)
         for q in REGISTRY[method].params}
    p.update({k: (v,) if REGISTRY[method].param(k).per_input else v for k, v in given.items()})
    return b.to_numpy(run_method(b, method, [b.asarray(x)], p), "float32")


def _ref_topk(x: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros(x.size, bool)
    m[np.argsort(-np.abs(x).ravel(), kind="stable")[:k]] = True
    return np.where(m.reshape(x.shape), x, 0)


@pytest.mark.parametrize("count", ["round", "floor"])
def test_ties_of_one_input_keeps_the_counted_entries(count):
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)  # n = 128
    got = _run("ties", x, density=0.45, count=count)
    k = 57 if count == "floor" else 58  # 0.45 * 128 = 57.6
    np.testing.assert_array_equal(got, _ref_topk(x, k))


def test_breadcrumbs_floor_can_keep_nothing():
    x = np.random.default_rng(1).standard_normal(64).astype(np.float32)
    got = _run("breadcrumbs", x, density=1 / 128, gamma=0.0, count="floor")
    assert not got.any()


def test_floor_is_per_tensor_only(tmp_path, family_f32, run_cli):
    (tmp_path / "r.merge").write_text(
        f'model base = "{family_f32["base"]}"\nmodel math = "{family_f32["math"]}"\n'
        'output o = ties(math, base=base, density=0.3, trim="model", count="floor")\n')
    r = run_cli("check", tmp_path / "r.merge")
    assert r.exit_code == 1
    assert 'count="floor" counts per tensor: it cannot be used with trim="model"' in r.stderr


def _slerp_ref(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    cos = a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64))
    w = np.arccos(cos)
    return ((np.sin((1 - t) * w) * a64 + np.sin(t * w) * b64) / np.sin(w)).reshape(a.shape)


def test_nuslerp_lerp_threshold():
    rng = np.random.default_rng(2)
    a = (1 + 0.02 * rng.standard_normal(64)).astype(np.float32)  # norm weights: cos ~ 0.9996
    b = (1 + 0.02 * rng.standard_normal(64)).astype(np.float32)
    cos = float(a.astype(np.float64) @ b / (np.linalg.norm(a.astype(np.float64)) *
                                            np.linalg.norm(b.astype(np.float64))))
    assert 0.9995 < cos < 1.0
    default = _run2("nuslerp", a, b, weight=(1.0, 3.0))
    np.testing.assert_allclose(default, 0.25 * a.astype(np.float64) + 0.75 * b, rtol=1e-6)
    exact = _run2("nuslerp", a, b, weight=(1.0, 3.0), lerp_threshold=1.0)
    np.testing.assert_allclose(exact, _slerp_ref(a, b, 0.75), rtol=1e-6)
    assert np.abs(exact - default).max() > 1e-6  # the two rules differ here
    # exactly parallel inputs: a linear interpolation either way, never NaN
    same = _run2("nuslerp", a, 2 * a, weight=(1.0, 1.0), lerp_threshold=1.0)
    np.testing.assert_allclose(same, 1.5 * a, rtol=1e-6)


def _run2(method: str, a: np.ndarray, b: np.ndarray, **given) -> np.ndarray:
    bk = get_backend("reference", device="cpu")
    m = REGISTRY[method]
    p = {q.name: ((q.default,) * 2 if q.per_input else q.default) for q in m.params}
    p.update(given)
    return bk.to_numpy(run_method(bk, method, [bk.asarray(a), bk.asarray(b)], p), "float32")
