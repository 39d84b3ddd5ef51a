"""Iso-C: isotropic merging in the common subspace.

Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces", ICML 2025. For a 2-D weight: the sum of the task vectors
``M = sum_i tau_i``, its thin SVD ``M = U diag(s) V^T``, and every singular value replaced
by their mean (over all ``min(m, n)`` of them): ``merged = mean(s) U V^T``, so each
direction of the merged update has the same strength. The result is
``base + lambda * merged``. Other tensors (and 2-D ones with ``decompose = false``) take
the mean of the task vectors, as the authors' code does. Computed in float64.
"""

from __future__ import annotations

from .linear import LAMBDA, combine
from .spec import Method, Traits
from .tsv import DECOMPOSE


def _iso_c(ops, xs, p, seed):
    shape = ops.shape(xs[0])
    if len(shape) != 2 or not p.decompose:
        return combine(ops, xs, [1.0] * len(xs), True, p.lambda_, "iso_c")
    total = ops.to_float64(xs[0])
    for x in xs[1:]:
        total = ops.add(total, ops.to_float64(x))
    u, s, vt = ops.svd(total)
    mean = ops.sum64(s) / min(shape)
    return ops.to_float32(ops.mul(ops.matmul(u, vt), mean * p.lambda_))


METHODS = (
    Method(
        "iso_c", "Isotropic merge: the summed task matrix with all its singular values "
        "set to their mean (Iso-C).",
        "per 2-D tensor: sum_i tau_i = U diag(s) V^T; base + lambda * mean(s) U V^T; "
        "other tensors: base + lambda * mean tau_i",
        (LAMBDA, DECOMPOSE), _iso_c, base="delta", min_inputs=1,
        references=("Marczak et al. 2025, No Task Left Behind: Isotropic Model Merging with "
                    "Common and Task-Specific Subspaces, arXiv:2502.04959",),
        notes="The authors choose lambda on validation data (0.1 to 3.0); 1 gives the bare "
              "merged delta.",
        family="subspace",
        traits=Traits(split=lambda params, ndim: "whole"),
    ),
)
