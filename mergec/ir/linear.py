"""The rules that turn linear computations into one weighted sum.

A weighted sum node, or a call of a method that is linear in its inputs (its
``Traits.coeffs``; linear, task_arithmetic, passthrough), stands for ``sum_i c_i x_i``. The
fold_linear and eliminate_dead passes rewrite the IR with these rules, so the runtime only
ever sees the one weighted sum a linear chain flattens to.
"""

from __future__ import annotations

from mergec.methods import REGISTRY


def linear_methods() -> tuple[str, ...]:
    """The methods that are linear combinations of their inputs."""
    return tuple(m.name for m in REGISTRY.values() if m.traits.coeffs is not None)


def linear_coeffs(method: str, params: dict, n: int) -> tuple[float, ...] | None:
    """The coefficient of each input, or None when `method` is not linear (or its
    parameters are not plain numbers yet)."""
    m = REGISTRY.get(method)
    return None if m is None else m.linear_coeffs(params, n)


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
