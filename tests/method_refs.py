"""Closed-form NumPy references for two SVD-based merge methods, per tensor, in float64.

These are written from the papers and from reading their authors' code; they are plain
and slow on purpose, to check the kernels that will implement the methods against.

Notation, for one tensor: base theta_0, fine-tuned tensors theta_1 .. theta_T, task
vectors tau_i = theta_i - theta_0. A "matrix" is a 2-D tensor (see `as_matrix` below).
For a matrix of shape (m, n), r = min(m, n) and every SVD is the reduced (thin) one,
A = U diag(s) V^T with U (m, r), s (r,) non-increasing, V^T (r, n).

polar(A) = P Q^T for the SVD A = P diag(sigma) Q^T: the orthonormal factor of A, i.e.
the matrix with orthonormal columns (or rows) nearest to A in Frobenius norm (the
solution of the orthogonal Procrustes problem). For A of full rank it is unique and
equals A (A^T A)^(-1/2); for a rank-deficient A it is not unique (the singular vectors
of the zero singular values are arbitrary), so neither is anything built from it below.

Which tensors are matrices. Both official implementations (CLIP ViT image encoders)
decompose every parameter with `len(shape) == 2` except the one whose name contains
"text_projection"; everything else (biases, norms, the 4-D patch convolution, the 1-D
class embedding) takes the fallback. The 2-D positional embedding and the visual
projection are decomposed. The official code has no rule for language models' token
embeddings or output heads; ports of the methods to LLMs commonly exclude
"embed_tokens" and "lm_head". Here the caller decides with `as_matrix` (default: the
tensor is 2-D).

Scaling. Both papers merge as theta = theta_0 + alpha * delta with one scalar alpha for
the whole model, chosen on held-out validation data: the evaluation of both official
repositories sweeps alpha over numpy.linspace(0, 3, 31)[1:] = 0.1, 0.2, ..., 3.0 for
TSV-M and Iso-C (against 0.1 .. 1.0 for the other methods). Neither fixes a default;
the task-vector `apply_to` they call defaults to scaling_coef=1.0, which is the default
here (alpha = 1 gives the bare merged delta).

Sources (read at the commits named):
  TSV-M:  github.com/AntoAndGar/task_singular_vectors @ a6c97188
          src/utils/TSVM_utils.py  compute_and_sum_svd_mem_reduction   (the method)
          src/eval/aggregation.py  method "TSVM" calls it                (the pipeline)
          src/eval/eval.py         evaluate_task_vector: the alpha sweep
          src/models/task_vectors.py  tau = finetuned - pretrained; apply_to
  Iso-C:  github.com/danielm1405/iso-merging @ d34010af
          src/utils/iso.py         iso_c                                (the method)
          src/eval/eval.py         evaluate_task_vector: the alpha sweep
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def polar(a: np.ndarray) -> np.ndarray:
    """P Q^T for the thin SVD a = P diag(sigma) Q^T (see the module docstring)."""
    p, _, qt = np.linalg.svd(np.asarray(a, dtype=np.float64), full_matrices=False)
    return p @ qt


def _taus(base, tensors) -> tuple[np.ndarray, list[np.ndarray]]:
    b = np.asarray(base, dtype=np.float64)
    taus = [np.asarray(t, dtype=np.float64) - b for t in tensors]
    if not taus:
        raise ValueError("at least one fine-tuned tensor is needed")
    for t in taus:
        if t.shape != b.shape:
            raise ValueError(f"shape {t.shape} differs from the base's {b.shape}")
    return b, taus


def _is_matrix(x: np.ndarray, as_matrix: bool | None) -> bool:
    if as_matrix is None:
        return x.ndim == 2
    if as_matrix and x.ndim != 2:
        raise ValueError(f"as_matrix=True needs a 2-D tensor, not shape {x.shape}")
    return as_matrix


def tsv_rank_per_task(shape: tuple[int, int], n_tasks: int) -> int:
    """k = floor(min(m, n) / T): the number of singular components kept per task.

    The official code computes int(r * (1 / T)) in floating point, which is floor(r / T)
    except where r * (1 / T) rounds to just below a whole number: for T <= 128 and
    r <= 8192 that happens only for T in (49, 98, 103, 107) and some multiples r of T
    (r = T = 49 gives 0.9999999999999999, so k = 0 there, one less). This reference
    uses the exact floor."""
    return min(shape) // n_tasks


def tsv_delta(taus: Sequence[np.ndarray]) -> np.ndarray:
    """The TSV-M merged task matrix of T task matrices (m, n), before alpha.

    1. For each task, the thin SVD tau_i = U_i diag(s_i) V_i^T, truncated to its first
       k = floor(r / T) components: U_i[:, :k], s_i[:k], V_i^T[:k, :].
    2. Concatenate over the tasks (in input order): U_cat = [U_1k .. U_Tk] (m, Tk),
       s_cat = [s_1k .. s_Tk] (Tk,), V_cat^T = [V_1k^T; ..; V_Tk^T] (Tk, n).
    3. Decorrelate: U_perp = polar(U_cat), V_perp^T = polar(V_cat^T) (each by an SVD of
       the concatenation, "Procrustes" orthogonalization).
    4. delta = U_perp diag(s_cat) V_perp^T.

    The official code writes task i's components into columns [i k, (i + 1) k) of
    zero matrices of the full size (m, r), (r,), (r, n), so with T k < r the
    concatenation is padded with zero columns (rows) carrying zero singular values; when
    U_cat and V_cat^T have full rank T k that padding changes nothing, and this reference
    leaves it out. Orthogonal task matrices whose ranks are exactly k give
    U_cat, V_cat orthonormal already, and then delta = sum_i tau_i.

    Consequence worth testing: U_perp and V_perp have orthonormal columns, so the
    singular values of delta are exactly the kept s_cat (as a multiset).
    """
    taus = [np.asarray(t, dtype=np.float64) for t in taus]
    m, n = taus[0].shape
    k = tsv_rank_per_task((m, n), len(taus))
    if k == 0:
        return np.zeros((m, n))
    us, ss, vts = [], [], []
    for t in taus:
        u, s, vt = np.linalg.svd(t, full_matrices=False)
        us.append(u[:, :k])
        ss.append(s[:k])
        vts.append(vt[:k, :])
    u_cat = np.concatenate(us, axis=1)
    s_cat = np.concatenate(ss)
    vt_cat = np.concatenate(vts, axis=0)
    return polar(u_cat) @ np.diag(s_cat) @ polar(vt_cat)


def tsv_reference(base: np.ndarray, tensors: Sequence[np.ndarray], alpha: float = 1.0, *,
                  as_matrix: bool | None = None) -> np.ndarray:
    """TSV-Merge (Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in
    Model Merging", CVPR 2025, arXiv:2412.00081) of one tensor.

        matrix:     theta_0 + alpha * tsv_delta(tau_1 .. tau_T)     (see tsv_delta)
        otherwise:  theta_0 + alpha * (1/T) sum_i tau_i             (the mean: the
                    official code keeps a running mean of the task vectors)

    `tensors` are the fine-tuned tensors theta_i (not task vectors); the result is
    float64. `as_matrix`: None decomposes 2-D tensors; False forces the mean (for an
    embedding or output head, say)."""
    b, taus = _taus(base, tensors)
    if _is_matrix(b, as_matrix):
        return b + alpha * tsv_delta(taus)
    return b + alpha * (sum(taus) / len(taus))


def iso_c_delta(taus: Sequence[np.ndarray]) -> np.ndarray:
    """The Iso-C merged task matrix of T task matrices, before alpha.

    M = sum_i tau_i (the sum, as task arithmetic); thin SVD M = U diag(s) V^T;
    delta = U (mean(s) I) V^T = (sum_j s_j / r) U V^T.

    The mean is over all r = min(m, n) singular values, zeros included. For M of full
    rank U V^T = polar(M), so delta = (||M||_* / r) polar(M) (||.||_* the nuclear norm):
    every singular value of delta equals mean(s). For a rank-deficient M, U V^T includes
    singular vectors of zero singular values, which the SVD does not determine, so the
    official result is not unique there (it depends on the SVD routine)."""
    m = np.sum([np.asarray(t, dtype=np.float64) for t in taus], axis=0)
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return u @ np.diag(np.full_like(s, s.mean())) @ vt


def iso_c_reference(base: np.ndarray, tensors: Sequence[np.ndarray], alpha: float = 1.0,
                    *, as_matrix: bool | None = None) -> np.ndarray:
    """Iso-C (Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common
    and Task-Specific Subspaces", ICML 2025, arXiv:2502.04959) of one tensor.

        matrix:     theta_0 + alpha * iso_c_delta(tau_1 .. tau_T)   (from the SUM)
        otherwise:  theta_0 + alpha * (1/T) sum_i tau_i             (the MEAN)

    The official iso_c first takes the mean of the task vectors for every tensor, then
    for a matrix multiplies it by T back to the sum before the SVD: so matrices start
    from the sum and every other tensor is averaged, with the same alpha for both.
    `tensors` are the fine-tuned tensors; float64 result; `as_matrix` as in
    tsv_reference."""
    b, taus = _taus(base, tensors)
    if _is_matrix(b, as_matrix):
        return b + alpha * iso_c_delta(taus)
    return b + alpha * (sum(taus) / len(taus))
