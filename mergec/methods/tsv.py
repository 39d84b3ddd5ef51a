"""TSV-Merge: task singular vectors, decorrelated, summed.

Gargiulo et al., "Task Singular Vectors: Reducing Task Interference in Model Merging",
CVPR 2025. For a 2-D weight of shape (m, n) with r = min(m, n) and T task vectors:

1. each task vector's thin SVD ``tau_i = U_i diag(s_i) V_i^T``, truncated to its first
   ``k = floor(r / T)`` components;
2. the truncated factors concatenated in input order: ``U_cat`` (m, Tk), ``s_cat`` (Tk),
   ``V_cat^T`` (Tk, n);
3. decorrelated by orthogonal Procrustes: ``U_perp = P Q^T`` for ``U_cat = P S Q^T``, and
   likewise ``V_perp^T`` from ``V_cat^T``;
4. ``merged = U_perp diag(s_cat) V_perp^T``; the result is ``base + lambda * merged``.

Other tensors (and 2-D ones with ``decompose = false``, e.g. embeddings chosen with a
``where`` block) take the mean of the task vectors, as the authors' code does. With
``r < T`` no component is kept and the merged delta of that tensor is 0. Everything is
computed in float64.
"""

from __future__ import annotations

from .linear import LAMBDA, combine
from .spec import Method, Param, Traits

DECOMPOSE = Param("decompose", "bool", True,
                  "decompose 2-D tensors (false: the mean of the task vectors)")


def polar(ops, a):
    """``P Q^T`` for the thin SVD ``a = P S Q^T``: the nearest matrix with orthonormal
    columns (rows)."""
    p, _, qt = ops.svd(a)
    return ops.matmul(p, qt)


def _tsv(ops, xs, p, seed):
    shape = ops.shape(xs[0])
    if len(shape) != 2 or not p.decompose:
        return combine(ops, xs, [1.0] * len(xs), True, p.lambda_, "tsv")
    k = min(shape) // len(xs)
    if k == 0:
        return ops.zeros(shape)
    us, ss, vts = [], [], []
    for x in xs:
        u, s, vt = ops.svd(x)
        us.append(ops.take(u, 1, 0, k))
        ss.append(ops.take(s, 0, 0, k))
        vts.append(ops.take(vt, 0, 0, k))
    u_perp = polar(ops, ops.concat(us, 1))
    vt_perp = polar(ops, ops.concat(vts, 0))
    merged = ops.matmul(ops.mul(u_perp, ops.concat(ss, 0)), vt_perp)
    return ops.to_float32(ops.mul(merged, p.lambda_))


METHODS = (
    Method(
        "tsv", "Task singular vectors: keep each task's top 1/T singular components, "
        "decorrelate them, sum (TSV-Merge).",
        "per 2-D tensor: tau_i ~ U_i S_i V_i^T (top floor(r/T) components); "
        "U = polar([U_1 .. U_T]), V^T = polar([V_1^T; ..; V_T^T]); "
        "base + lambda * U diag(s_1 .. s_T) V^T; other tensors: base + lambda * mean tau_i",
        (LAMBDA, DECOMPOSE), _tsv, base="delta", min_inputs=1,
        references=("Gargiulo et al. 2025, Task Singular Vectors: Reducing Task Interference "
                    "in Model Merging, arXiv:2412.00081",),
        notes="The authors choose lambda on validation data (0.1 to 3.0); 1 gives the bare "
              "merged delta.",
        family="subspace",
        traits=Traits(split=lambda params, ndim: "whole"),
    ),
)
