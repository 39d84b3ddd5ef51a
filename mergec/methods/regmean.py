"""RegMean: merging linear layers by solving the least-squares problem of their inputs.

Jin et al., "Dataless Knowledge Fusion by Merging Weights of Language Models", ICLR 2023.
For a linear weight stored ``[out, in]`` (as torch stores ``nn.Linear``), with G_i the Gram
matrix of input i's layer inputs (``X_i^T X_i / n_i``, from its statistics folder,
``kind: "gram"``, see docs/stats.md), RegMean minimizes ``sum_i ||X_i W^T - X_i W_i^T||^2``:

    W = (sum_i W_i G_i') (sum_i G_i')^-1,   G_i' = reduce * G_i + (1 - reduce) * diag(G_i)

``reduce`` (the paper's alpha) scales the off-diagonal entries; ``reduce = 1`` is the exact
least-squares solution. Solved as ``S W^T = B`` with ``S = sum_i G_i'`` and
``B = sum_i G_i' W_i^T`` in float64, regularized towards the plain average ``W_bar``:
``(S + lam I) W^T = B + lam W_bar^T`` with ``lam = ridge * trace(S) / in``. Where S is
well conditioned this changes the result by about ``ridge`` (relative); where S is singular
(an input feature that is always 0, fewer examples than features), the directions the data
never reached take the average of the inputs instead of an arbitrary value. Where every G_i
is 0 the result is the average. Other tensors (biases, norms, embeddings) have no Gram
matrix and are what `fallback=` says.
"""

from __future__ import annotations

from .spec import Method, Param, Traits

REDUCE = Param("reduce", "number", 1.0, "scale of the off-diagonal Gram entries (the "
               "paper's alpha; 1: exact least squares)", min=0.0, max=1.0, rampable=False)
RIDGE = Param("ridge", "number", 1e-8, "regularization towards the average, relative to the "
              "mean diagonal of the summed Gram matrices", min=0.0, min_open=True,
              rampable=False)


def gram_shape(shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """A 2-D weight [out, in] has a Gram matrix [in, in]; other tensors have none."""
    return (shape[1], shape[1]) if len(shape) == 2 else None


def _mean(ops, xs):
    total = ops.to_float64(xs[0])
    for x in xs[1:]:
        total = ops.add(total, ops.to_float64(x))
    return ops.div(total, float(len(xs)))


def _regmean(ops, xs, p, seed):
    import numpy as np  # the identity matrix (methods import without numpy for `check`)

    n = len(xs) // 2
    ws, gs = xs[:n], xs[n:]
    d = ops.shape(gs[0])[0]
    eye = ops.to_float64(ops.asarray(np.eye(d, dtype=np.float32)))
    s = b = None
    for w, g in zip(ws, gs):
        g = ops.to_float64(g)
        if p.reduce != 1.0:
            diag = ops.mul(g, eye)
            g = ops.add(ops.mul(g, p.reduce), ops.mul(diag, 1.0 - p.reduce))
        term = ops.matmul(g, ops.transpose(ops.to_float64(w)))
        s = g if s is None else ops.add(s, g)
        b = term if b is None else ops.add(b, term)
    mean_t = ops.transpose(_mean(ops, ws))
    scale = ops.sum64(ops.mul(s, eye)) / d
    if not scale > 0.0:  # no input ever reached this layer: the plain average
        return ops.to_float32(ops.transpose(mean_t))
    lam = p.ridge * scale
    wt = ops.solve(ops.add(s, ops.mul(eye, lam)), ops.add(b, ops.mul(mean_t, lam)))
    return ops.to_float32(ops.transpose(wt))


METHODS = (
    Method(
        "regmean", "Regression mean: each linear weight solves the least-squares problem of "
        "all models' layer inputs (needs Gram statistics).",
        "per linear weight [out, in]: (sum_i W_i G_i') (sum_i G_i')^-1, "
        "G_i' = reduce G_i + (1 - reduce) diag(G_i), G_i from stats=[...]; "
        "other tensors: fallback",
        (REDUCE, RIDGE), _regmean, base="none", min_inputs=2,
        references=("Jin et al. 2023, Dataless Knowledge Fusion by Merging Weights of "
                    "Language Models, arXiv:2212.09849",),
        notes="Takes `stats=[g1, g2, ...]`, one `stats` folder of kind \"gram\" per input "
              "(`mergec stats MODEL --kind gram`), and `fallback=` (a Model) for every "
              "tensor that is not a linear weight with a Gram matrix; see docs/stats.md. "
              "The authors use reduce between 0.9 and 1.",
        family="data",
        stats="gram",
        stats_shape=gram_shape,
        traits=Traits(split=lambda params, ndim: "whole"),
    ),
)
