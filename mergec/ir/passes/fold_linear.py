"""fold_linear: linear merges and nested weighted sums become one weighted sum."""

from __future__ import annotations

from mergec.ir.nodes import Graph, Node
from mergec.ir.passes._rewrite import rewrite
from mergec.ir.linear import combine, expand, linear_coeffs


def fold_linear(roots: list[Node], g: Graph) -> tuple[list[Node], list[str]]:
    folded = {"merges": 0, "sums": 0, "combined": 0}

    def fn(n: Node, args: tuple) -> Node | None:
        if n.op == "merge":
            coeffs = linear_coeffs(n.attr("method"), dict(n.attr("params")), len(args))
            if coeffs is None:
                return None
            folded["merges"] += 1
            return _flat(g, list(zip(args, coeffs)), folded)
        if n.op == "wsum":
            return _flat(g, list(zip(args, n.attr("coeffs"))), folded)
        return None

    out = rewrite(roots, g, fn)
    changes = []
    if folded["merges"]:
        changes.append(f"{folded['merges']} linear merges became weighted sums")
    if folded["sums"]:
        changes.append(f"{folded['sums']} nested weighted sums were flattened")
    if folded["combined"]:
        changes.append(f"{folded['combined']} repeated terms were combined")
    return out, changes


def _flat(g: Graph, terms, folded) -> Node:
    def inner(x):
        if x.op != "wsum":
            return None
        folded["sums"] += 1
        return list(zip(x.args, x.attr("coeffs")))

    flat = expand(terms, inner)
    terms = combine(flat)
    folded["combined"] += len(flat) - len(terms)
    return g.raw_wsum(terms)
