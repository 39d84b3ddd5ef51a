"""Methods that are linear combinations of their inputs, and their coefficients.

`linear`, `task_arithmetic` and `passthrough` are weighted sums; the executor computes them
as such (accumulated in float64) and the `fold_linear` pass rewrites them into `wsum`
nodes with exactly these coefficients, so a build is the same with and without the pass.
"""

from __future__ import annotations

LINEAR_METHODS = ("linear", "task_arithmetic", "passthrough")


def linear_coeffs(method: str, params: dict, n: int) -> tuple[float, ...] | None:
    """The coefficient of each input, or None when `method` is not linear (or its
    parameters are not plain numbers yet)."""
    if method not in LINEAR_METHODS:
        return None
    if method == "passthrough":
        return (float(params["scale"]),)
    w = params["weight"]
    if isinstance(w, (int, float)) and not isinstance(w, bool):
        w = (w,) * n
    if not isinstance(w, tuple) or not all(isinstance(x, (int, float)) for x in w):
        return None
    w = [float(x) for x in w]
    total = sum(w)
    if params.get("normalize"):
        if total == 0:
            raise ValueError(f"the weights of `{method}` sum to 0, so they cannot be normalized")
        w = [x / total for x in w]
    if method == "task_arithmetic":
        lam = float(params["lambda"])
        w = [lam * x for x in w]
    return tuple(w)


# The rules that turn linear computations into one weighted sum. The fold_linear and
# eliminate_dead passes rewrite the IR with them, and the executor applies the same rules
# to an IR the passes did not touch, so a build is bit-identical with and without them.


def expand(terms, inner) -> list:
    """One level of flattening: a term whose node `inner(x)` gives terms for (a nested
    weighted sum) is replaced by them, their coefficients multiplied by the term's."""
    flat = []
    for x, c in terms:
        sub = inner(x)
        if sub is None:
            flat.append((x, c))
        else:
            flat += [(a, c * k) for a, k in sub]
    return flat


def combine(flat) -> list:
    """Equal terms combined (their coefficients summed in order), in first-seen order."""
    acc: dict = {}
    for x, c in flat:
        acc[x] = acc.get(x, 0.0) + c
    return list(acc.items())


def live_terms(terms) -> list:
    """The terms left once zero ones are dropped: coefficients that are float64 noise next
    to the others (1 - 0.6 - 0.3 - 0.1) count as zero, and so do zero tensors."""
    tiny = 1e-12 * sum(abs(c) for _, c in terms)
    return [(a, c) for a, c in terms if abs(c) > tiny and a.op != "zeros"]
