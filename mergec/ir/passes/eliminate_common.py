"""eliminate_common: equal sub-expressions become one node."""

from __future__ import annotations

from mergec.ir.nodes import Graph, Node, topo
from mergec.ir.passes._rewrite import rewrite


def eliminate_common(roots: list[Node], g: Graph) -> tuple[list[Node], list[str]]:
    before = _count(roots)
    out = rewrite(roots, Graph(), lambda n, args: None)  # a canonical graph interns
    removed = before - _count(out)
    return out, [f"{removed} duplicate nodes shared"] if removed else []


def _count(roots) -> int:
    seen: set[int] = set()
    for r in roots:
        seen.update(id(n) for n in topo(r))
    return len(seen)
