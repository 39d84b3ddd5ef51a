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
