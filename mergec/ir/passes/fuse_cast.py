"""fuse_cast: an input tensor written in another storage dtype is converted directly."""

from __future__ import annotations

from mergec.ir.nodes import Graph, Node


def fuse_cast(roots: list[Node], g: Graph) -> tuple[list[Node], list[str]]:
    out = []
    n = 0
    for r in roots:
        x = r.args[0] if r.op == "cast" else None
        if x is not None and x.op == "load" and x.dtype != r.dtype:
            out.append(g.node("convert", (), x.attrs + (("from", x.dtype),), x.shape, r.dtype))
            n += 1
        else:
            out.append(r)
    return out, [f"{n} tensors converted without computing"] if n else []
