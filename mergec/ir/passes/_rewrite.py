"""Bottom-up rewriting shared by the passes."""

from __future__ import annotations

from typing import Callable

from mergec.ir.nodes import Graph, Node, topo


def rewrite(roots: list[Node], g: Graph, fn: Callable[[Node, tuple], Node | None]
            ) -> list[Node]:
    """Rebuild every DAG bottom-up: each node gets its rewritten arguments, then `fn`
    may replace it (returning None keeps it). Nodes are rebuilt through `g` (a canonical
    graph interns them; a literal one does not)."""
    memo: dict[int, Node] = {}
    out = []
    for root in roots:
        for n in topo(root):
            if id(n) in memo:
                continue
            args = tuple(memo[id(a)] for a in n.args)
            new = fn(n, args)
            if new is None:
                new = g.node(n.op, args, n.attrs, n.shape, n.dtype)
            memo[id(n)] = new
        out.append(memo[id(root)])
    return out
