"""raw_copy: an input tensor written in its stored dtype is copied as bytes."""

from __future__ import annotations

from mergec.ir.nodes import Graph, Node


def raw_copy(roots: list[Node], g: Graph) -> tuple[list[Node], list[str]]:
    out = []
    n_copies = 0
    for r in roots:
        x = r.args[0] if r.op == "cast" else None
        if x is not None and x.op == "load" and x.dtype == r.dtype:
            out.append(g.node("copy", (), x.attrs + (("from", x.dtype),), x.shape, x.dtype))
            n_copies += 1
        else:
            out.append(r)
    return out, [f"{n_copies} tensors copied as stored"] if n_copies else []
