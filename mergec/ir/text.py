"""Reading the printed IR back (the format of `mergec.ir.nodes.render_many`), for the
pass fixtures: one node per line, `%i = ...`; the roots are the nodes no other uses."""

from __future__ import annotations

import ast as pyast
import re

from mergec.ir.nodes import Graph, Node

_LOAD = re.compile(r"(load|copy|convert) (\w+)\[([^\]]+)\] (\w+)\[([\d, ]*)\](?: -> (\w+))?$")
_WSUM = re.compile(r"wsum\((.*)\)$")
_CAST = re.compile(r"cast\((%\d+)\) -> (\w+)$")
_ZEROS = re.compile(r"zeros\[([\d, ]*)\]$")
_MERGE = re.compile(r"(\w+)\(([^;]*); (.*?)(?:; seed=(\d+|None))?\)$")


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def _params(text: str) -> dict:
    out = {}
    for part in re.findall(r"(\w+)=((?:\([^)]*\))|[^,]+)", text):
        out[part[0]] = pyast.literal_eval(part[1].strip())
    return out


def parse_ir(text: str, g: Graph | None = None) -> list[Node]:
    g = g or Graph(canonical=False)
    nodes: dict[str, Node] = {}
    used: set[str] = set()
    order: list[str] = []
    for raw in text.strip().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rhs = line.partition(" = ")
        if m := _LOAD.match(rhs):
            op, src, tensor, dtype, shape, to = m.groups()
            attrs = (("source", src), ("tensor", tensor))
            if op == "load":
                n = g.load(src, tensor, _shape(shape), dtype)
            else:
                n = g.node(op, (), attrs + (("from", dtype),), _shape(shape), to or dtype)
        elif m := _WSUM.match(rhs):
            terms = []
            for t in m.group(1).split(", "):
                c, _, ref = t.partition("*")
                terms.append((nodes[ref], float(c)))
                used.add(ref)
            n = g.raw_wsum(terms)
        elif m := _CAST.match(rhs):
            used.add(m.group(1))
            n = g.cast(nodes[m.group(1)], m.group(2))
        elif m := _ZEROS.match(rhs):
            n = g.zeros(_shape(m.group(1)))
        elif m := _MERGE.match(rhs):
            method, args, params, seed = m.groups()
            refs = [a.strip() for a in args.split(",") if a.strip()]
            used.update(refs)
            n = g.merge(method, [nodes[r] for r in refs], _params(params),
                        None if seed in (None, "None") else int(seed))
        else:
            raise ValueError(f"cannot read IR line: {raw}")
        nodes[name] = n
        order.append(name)
    return [nodes[k] for k in order if k not in used]
