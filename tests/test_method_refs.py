"""Self-tests of the TSV-M and Iso-C references (tests/method_refs.py): properties that
can be worked out by hand, and a second formulation of the orthogonalization."""

from __future__ import annotations

import numpy as np
import pytest

from method_refs import (
    iso_c_delta, iso_c_reference, polar, tsv_delta, tsv_rank_per_task, tsv_reference,
)


@pytest.fixture
def rng():
    return np.random.default_rng(20250611)


def orthonormal(rng, n, k):
    q, _ = np.linalg.qr(rng.normal(size=(n, k)))
    return q


def inv_sqrt_polar(a):
    """polar(a) for a of full rank, the other way: a (a^T a)^(-1/2) (or (a a^T)^(-1/2) a
    for a wide a), by an eigendecomposition of the Gram matrix."""
    if a.shape[0] >= a.shape[1]:
        w, q = np.linalg.eigh(a.T @ a)
        return a @ (q @ np.diag(w ** -0.5) @ q.T)
    w, q = np.linalg.eigh(a @ a.T)
    return (q @ np.diag(w ** -0.5) @ q.T) @ a


# --------------------------------------------------------------------------- helpers


def test_polar_is_the_nearest_orthonormal_factor(rng):
    for shape in [(7, 4), (4, 7), (5, 5)]:
        a = rng.normal(size=shape)
        p = polar(a)
        np.testing.assert_allclose(p, inv_sqrt_polar(a), atol=1e-12)
        gram = p.T @ p if shape[0] >= shape[1] else p @ p.T
        np.testing.assert_allclose(gram, np.eye(min(shape)), atol=1e-12)


def test_rank_per_task_is_the_floor():
    assert tsv_rank_per_task((64, 128), 8) == 8
    assert tsv_rank_per_task((10, 7), 3) == 2
    assert tsv_rank_per_task((49, 80), 49) == 1  # the official float product gives 0 here
    assert tsv_rank_per_task((3, 9), 4) == 0


# --------------------------------------------------------------------------- Iso-C


def test_iso_c_of_one_task_has_all_singular_values_equal_to_their_mean(rng):
    base = rng.normal(size=(6, 9))
    ft = base + rng.normal(size=(6, 9))
    tau = ft - base
    u, s, vt = np.linalg.svd(tau, full_matrices=False)
    delta = iso_c_reference(base, [ft]) - base
    np.testing.assert_allclose(np.linalg.svd(delta, compute_uv=False), [s.mean()] * 6,
                               rtol=1e-12)
    np.testing.assert_allclose(delta, s.mean() * u @ vt, atol=1e-12)
    # = (nuclear norm / r) * polar(tau), the closed form
    np.testing.assert_allclose(delta, np.abs(s).sum() / 6 * inv_sqrt_polar(tau), atol=1e-12)


def test_iso_c_depends_on_the_sum_only_and_scales_by_alpha(rng):
    base = rng.normal(size=(8, 5))
    taus = [rng.normal(size=(8, 5)) for _ in range(3)]
    ref = iso_c_reference(base, [base + t for t in taus], alpha=1.0)
    one = iso_c_reference(base, [base + sum(taus)], alpha=1.0)
    np.testing.assert_allclose(ref, one, atol=1e-12)
    np.testing.assert_allclose(iso_c_reference(base, [base + t for t in taus], alpha=0.3) - base,
                               0.3 * (ref - base), atol=1e-12)
    # positively homogeneous in the task vectors; a sign flip flips the result
    for c in (2.5, -1.0):
        np.testing.assert_allclose(iso_c_delta([c * t for t in taus]), c * (ref - base),
                                   atol=1e-11)


def test_iso_c_keeps_the_singular_vectors_of_the_sum(rng):
    """An isotropic sum is unchanged: M = c Q (Q with orthonormal columns) gives M."""
    q = orthonormal(rng, 7, 4)
    taus = [0.5 * q, 1.5 * q]  # sum = 2 Q: singular values all 2
    np.testing.assert_allclose(iso_c_delta(taus), 2 * q, atol=1e-12)
    # a diagonal sum: the mean of the diagonal on the same (signed) axes
    m = np.diag([3.0, -1.0, 2.0])
    np.testing.assert_allclose(iso_c_delta([m]), 2.0 * np.diag([1.0, -1.0, 1.0]), atol=1e-12)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_iso_c_falls_back_to_the_mean_of_task_vectors(rng, shape):
    base = rng.normal(size=shape)
    fts = [base + rng.normal(size=shape) for _ in range(3)]
    want = base + 0.7 * np.mean([f - base for f in fts], axis=0)
    np.testing.assert_allclose(iso_c_reference(base, fts, alpha=0.7), want, atol=1e-12)


def test_iso_c_matrix_forced_to_the_fallback(rng):
    base = rng.normal(size=(4, 4))
    fts = [base + rng.normal(size=(4, 4)) for _ in range(2)]
    np.testing.assert_allclose(iso_c_reference(base, fts, as_matrix=False),
                               (fts[0] + fts[1]) / 2, atol=1e-12)
    with pytest.raises(ValueError):
        iso_c_reference(base[0], [f[0] for f in fts], as_matrix=True)


# --------------------------------------------------------------------------- TSV-M


def test_tsv_of_one_task_is_the_task(rng):
    base = rng.normal(size=(6, 4))
    ft = base + rng.normal(size=(6, 4))
    np.testing.assert_allclose(tsv_reference(base, [ft]), ft, atol=1e-12)


@pytest.mark.parametrize("m, n, t", [(12, 12, 3), (16, 9, 4), (8, 20, 2)])
def test_tsv_of_orthogonal_tasks_of_rank_k_is_their_sum(rng, m, n, t):
    """Task matrices with mutually orthogonal column spaces and row spaces, each of rank
    exactly k = floor(r / T): the kept singular vectors are already orthonormal, so the
    orthogonalization changes nothing and TSV-M is task arithmetic (the sum)."""
    k = tsv_rank_per_task((m, n), t)
    u, v = orthonormal(rng, m, t * k), orthonormal(rng, n, t * k)
    taus = [u[:, i * k:(i + 1) * k] @ np.diag(rng.uniform(0.5, 2.0, k))
            @ v[:, i * k:(i + 1) * k].T for i in range(t)]
    base = rng.normal(size=(m, n))
    got = tsv_reference(base, [base + x for x in taus], alpha=0.8)
    np.testing.assert_allclose(got, base + 0.8 * sum(taus), atol=1e-12)


def test_tsv_singular_values_are_the_kept_ones(rng):
    """U_perp and V_perp are orthonormal, so delta's singular values are exactly the
    first k singular values of every task (rank T k at most)."""
    taus = [rng.normal(size=(10, 7)) for _ in range(3)]  # r = 7, k = 2
    kept = np.sort(np.concatenate([np.linalg.svd(x, compute_uv=False)[:2] for x in taus]))
    got = np.linalg.svd(tsv_delta(taus), compute_uv=False)
    np.testing.assert_allclose(np.sort(got[:6]), kept, rtol=1e-10)
    np.testing.assert_allclose(got[6:], 0, atol=1e-10)


def test_tsv_matches_a_second_formulation(rng):
    """The same merge written with the inverse square root of the Gram matrices (the
    orthogonalization the paper states, U_cat (U_cat^T U_cat)^(-1/2)) and the task's
    truncated factors built from eigendecompositions of tau^T tau."""
    taus = [rng.normal(size=(9, 12)) for _ in range(4)]  # r = 9, k = 2
    k = 2
    us, ss, vs = [], [], []
    for x in taus:
        w, q = np.linalg.eigh(x.T @ x)  # right singular vectors, ascending
        order = np.argsort(w)[::-1][:k]
        v = q[:, order]
        s = np.sqrt(w[order])
        us.append(x @ v / s)
        ss.append(s)
        vs.append(v)
    u_cat, v_cat = np.concatenate(us, axis=1), np.concatenate(vs, axis=1)
    want = inv_sqrt_polar(u_cat) @ np.diag(np.concatenate(ss)) @ inv_sqrt_polar(v_cat).T
    np.testing.assert_allclose(tsv_delta(taus), want, atol=1e-10)


def test_tsv_with_more_tasks_than_rank_is_zero(rng):
    base = rng.normal(size=(2, 5))
    fts = [base + rng.normal(size=(2, 5)) for _ in range(3)]  # r = 2 < T = 3: k = 0
    np.testing.assert_array_equal(tsv_reference(base, fts), base)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), ()])
def test_tsv_falls_back_to_the_mean_of_task_vectors(rng, shape):
    base = rng.normal(size=shape)
    fts = [base + rng.normal(size=shape) for _ in range(4)]
    want = base + 1.5 * np.mean([f - base for f in fts], axis=0)
    np.testing.assert_allclose(tsv_reference(base, fts, alpha=1.5), want, atol=1e-12)
    mat = rng.normal(size=(3, 3))
    np.testing.assert_allclose(tsv_reference(mat, [mat + 1, mat + 3], as_matrix=False),
                               mat + 2, atol=1e-12)


def test_inputs_are_checked_and_computed_in_float64(rng):
    base = rng.normal(size=(4, 3)).astype(np.float32)
    ft = (base + rng.normal(size=(4, 3))).astype(np.float32)
    for ref in (tsv_reference, iso_c_reference):
        assert ref(base, [ft]).dtype == np.float64
        with pytest.raises(ValueError):
            ref(base, [])
        with pytest.raises(ValueError):
            ref(base, [ft.T])
