"""eliminate_dead: zero terms and zero deltas are dropped, with the reads they needed."""

from __future__ import annotations

from mergec.ir.nodes import Graph, Node, topo
from mergec.ir.passes._rewrite import rewrite
from mergec.ir.linear import live_terms


def eliminate_dead(roots: list[Node], g: Graph) -> tuple[list[Node], list[str]]:
    dropped = {"terms": 0}

    def fn(n: Node, args: tuple) -> Node | None:
        if n.op != "wsum":
            return None
        kept = live_terms(list(zip(args, n.attr("coeffs"))))
        dropped["terms"] += len(args) - len(kept)
        if not kept:
            return g.zeros(n.shape)
        if len(kept) == 1 and kept[0][1] == 1.0:
            return kept[0][0]
        if len(kept) == len(args):
            return None
        return g.raw_wsum(kept)

    loads_before = _loads(roots)
    out = rewrite(roots, g, fn)
    changes = []
    if dropped["terms"]:
        changes.append(f"{dropped['terms']} zero terms dropped")
    gone = loads_before - _loads(out)
    if gone:
        changes.append(f"{gone} reads no longer needed")
    return out, changes


def _loads(roots) -> int:
    return len({(n.attr("source"), n.attr("tensor")) for r in roots for n in topo(r)
                if n.op == "load"})
