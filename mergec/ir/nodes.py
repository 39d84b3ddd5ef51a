"""The per-tensor IR: immutable, hash-consed nodes over a small op set.

Every output tensor is computed by a DAG of these nodes. Nodes are interned: building a
node equal to an existing one returns the existing one, so a sub-expression used twice
(a task vector shared by two merges) is one node and is computed once.

Op set (the whole vocabulary; backends implement exactly these):

  load(source, tensor)        read one tensor of an input checkpoint; `shape`, `dtype` its stored ones
  wsum(coeffs)                sum_i coeffs[i] * args[i]  (every +, -, * by a number, linear)
  merge(method, params, seed) a registry method over args (task vectors for delta methods)
  lowrank(scale, transpose)   scale * args[0] @ args[1] (transposed): the delta of a LoRA pair
  zeros                       a zero tensor of `shape` (a delta that changes nothing)
  copy(source, tensor)        an input tensor written as stored: raw bytes, no decode (a root)
  convert(source, tensor)     an input tensor converted to another storage dtype (a root)
  cast(dtype)                 the storage dtype of the written tensor; the root of every output

Values between nodes are float32 (the compute dtype), except that weighted sums are
accumulated in float64 and stay float64 while they feed other weighted sums, so a chain of
linear operations rounds once however it is written; `cast` happens once, at the root.
"""

from __future__ import annotations

import math

import numbers
import re
from typing import Any

from mergec.ir.placeholders import ModelTopK


class Node:
    __slots__ = ("op", "args", "attrs", "shape", "dtype", "_hash", "__weakref__")

    op: str
    args: tuple["Node", ...]
    attrs: tuple[tuple[str, Any], ...]
    shape: tuple[int, ...]
    dtype: str  # stored dtype for load and cast; "float32" for the others

    def __init__(self, op, args, attrs, shape, dtype):
        object.__setattr__(self, "op", op)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "attrs", attrs)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "_hash", hash((op, args, attrs, shape, dtype)))

    def __setattr__(self, *_):  # pragma: no cover - immutability guard
        raise AttributeError("IR nodes are immutable")

    def __reduce__(self):
        """Pickled by value (to Ray workers): built again from its fields."""
        return (Node, (self.op, self.args, self.attrs, self.shape, self.dtype))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if self is other:
            return True
        if not isinstance(other, Node) or self._hash != other._hash:
            return False
        return (self.op, self.attrs, self.shape, self.dtype, self.args) == \
            (other.op, other.attrs, other.shape, other.dtype, other.args)

    def attr(self, key: str, default=None):
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return f"Node({self.op}, {dict(self.attrs)}, {len(self.args)} args)"


class Graph:
    """Builds nodes. A canonical graph (the default) interns them — one Node object per
    distinct value — and builds every weighted sum in its canonical form (nested sums
    flattened, equal terms combined, zero terms dropped). A literal graph
    (`canonical=False`) builds exactly what it is asked for: that is the IR as the
    lowering writes it, before the passes of `mergec.ir.passes`."""

    def __init__(self, canonical: bool = True):
        self.canonical = canonical
        self._nodes: dict[Node, Node] = {}

    def node(self, op: str, args=(), attrs=(), shape=(), dtype="float32") -> Node:
        n = Node(op, tuple(args), tuple(attrs), tuple(shape), dtype)
        if not self.canonical:
            return n
        return self._nodes.setdefault(n, n)

    def raw_wsum(self, terms) -> Node:
        """sum of c * x over (x, c), exactly these terms in this order."""
        terms = list(terms)
        return self.node("wsum", [x for x, _ in terms],
                         (("coeffs", tuple(float(c) for _, c in terms)),), terms[0][0].shape)

    def load(self, source: str, tensor: str, shape, dtype: str) -> Node:
        return self.node("load", (), (("source", source), ("tensor", tensor)), shape, dtype)

    def wsum(self, terms) -> Node:
        """sum of c * x over (x, c) terms; in a canonical graph nested sums are flattened,
        equal terms combined and zero terms dropped."""
        if not self.canonical:
            return self.raw_wsum(terms)
        acc: dict[Node, float] = {}
        order: list[Node] = []
        shape0 = terms[0][0].shape if terms else ()
        for x, c in terms:
            if x.op == "zeros":
                continue
            if x.op == "wsum":
                inner = [(a, c * k) for a, k in zip(x.args, x.attr("coeffs"))]
            else:
                inner = [(x, c)]
            for a, k in inner:
                if a not in acc:
                    acc[a] = 0.0
                    order.append(a)
                acc[a] += k
        kept = [(a, acc[a]) for a in order if acc[a] != 0.0]
        if not kept:
            return self.zeros(shape0)
        if len(kept) == 1 and kept[0][1] == 1.0:
            return kept[0][0]
        shape = order[0].shape if order else ()
        return self.node("wsum", [a for a, _ in kept],
                         (("coeffs", tuple(float(k) for _, k in kept)),), shape)

    def merge(self, method: str, args, params: dict, seed: int | None) -> Node:
        items = tuple(sorted((k, _freeze(v)) for k, v in params.items()))
        return self.node("merge", args, (("method", method), ("params", items), ("seed", seed)),
                         args[0].shape)

    def zeros(self, shape) -> Node:
        return self.node("zeros", (), (), shape)

    def lowrank(self, b: Node, a: Node, scale: float, transpose: bool) -> Node:
        shape = (a.shape[1], b.shape[0]) if transpose else (b.shape[0], a.shape[1])
        return self.node("lowrank", (b, a), (("scale", float(scale)), ("transpose", transpose)),
                         shape)

    def cast(self, x: Node, dtype: str) -> Node:
        return self.node("cast", (x,), (("dtype", dtype),), x.shape, dtype)

    def __len__(self) -> int:
        return len(self._nodes)


def _freeze(v):
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


def topo(root: Node, leaves: frozenset[int] | set[int] = frozenset()) -> list[Node]:
    """Nodes of the DAG under `root`, each after its arguments (the arguments of a node
    whose id is in `leaves` are not visited)."""
    out: list[Node] = []
    seen: set[int] = set()
    stack = [(root, False)]
    while stack:
        n, done = stack.pop()
        if done:
            out.append(n)
            continue
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.append((n, True))
        if id(n) in leaves:
            continue
        for a in reversed(n.args):
            if id(a) not in seen:
                stack.append((a, False))
    return out


def render(root: Node) -> str:
    """A printable form: one line per node, `%i = op(args) attrs`."""
    return render_many([root])


def render_many(roots: list[Node]) -> str:
    """Several DAGs in one listing, shared nodes once; parsed back by mergec.ir.text.

    Each node is one line `%i = ...`, after its arguments:

      load SOURCE[TENSOR] DTYPE[SHAPE]
      copy SOURCE[TENSOR] DTYPE[SHAPE]              (DTYPE: stored and written)
      convert SOURCE[TENSOR] DTYPE[SHAPE] -> DTYPE  (stored -> written)
      wsum(C*%a, C*%b, ...)
      METHOD(%a, %b; NAME=VALUE, ...; seed=N)       (`merge METHOD(...)` when METHOD is an op name)
      lowrank(%b, %a; scale=S)  or  lowrank(%b, %a; scale=S, transposed)
      zeros[SHAPE]
      cast(%n) -> DTYPE

    Numbers are printed so that they read back exactly (coefficients and scales with 17
    significant digits, parameters as Python writes them); a SOURCE or TENSOR with
    characters other than letters, digits and `_ . - / : +` is quoted like a Python string.
    The roots are the nodes no other line uses, in order; where that would not give back
    `roots` (a root repeated, or used by another), a last line `roots %a, %b, ...` says.
    """
    ids: dict[int, str] = {}
    order: list[Node] = []
    for r in roots:
        for n in topo(r):
            if id(n) not in ids:
                ids[id(n)] = f"%{len(order)}"
                order.append(n)
    lines = [f"{ids[id(n)]} = {_describe(n, ids)}" for n in order]
    used = {id(a) for n in order for a in n.args}
    if [id(n) for n in order if id(n) not in used] != [id(r) for r in roots]:
        lines.append("roots " + ", ".join(ids[id(r)] for r in roots))
    return "\n".join(lines)


#: ops with a syntax of their own: a merge method of one of these names is written
#: `merge NAME(...)`
OP_WORDS = frozenset({"load", "copy", "convert", "wsum", "lowrank", "zeros", "cast", "merge",
                      "roots"})

_BARE_NAME = re.compile(r"[A-Za-z0-9_.\-/:+]+")


def format_name(s: str) -> str:
    """A source or tensor name: bare when it is plain, else quoted (Python syntax)."""
    return s if _BARE_NAME.fullmatch(s) else repr(s)


def format_shape(shape) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def format_float(x: float) -> str:
    return f"{float(x):.17g}"


def format_value(v) -> str:
    """A merge parameter value, in Python syntax that mergec.ir.text reads back: numbers,
    strings, booleans, None, tuples of those and `model_topk(...)` placeholders."""
    if v is None or isinstance(v, bool):
        return repr(v)
    if isinstance(v, str):
        return repr(str(v))
    if isinstance(v, numbers.Integral):
        return repr(int(v))
    if isinstance(v, numbers.Real):
        return repr(float(v))
    if isinstance(v, tuple):
        items = [format_value(x) for x in v]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(v, ModelTopK):
        return (f"model_topk(call={format_value(v.call)}, input={format_value(v.input)}, "
                f"density={format_value(v.density)})")
    raise TypeError(f"no IR text for the parameter value {v!r}")


def _describe(n: Node, ids: dict[int, str]) -> str:
    args = ", ".join(ids[id(a)] for a in n.args)
    attrs = dict(n.attrs)
    if n.op in ("load", "copy", "convert"):
        stored = n.dtype if n.op == "load" else attrs["from"]
        desc = (f"{n.op} {format_name(attrs['source'])}[{format_name(attrs['tensor'])}] "
                f"{stored}{format_shape(n.shape)}")
        return desc + (f" -> {n.dtype}" if n.op == "convert" else "")
    if n.op == "wsum":
        return "wsum(" + ", ".join(f"{format_float(c)}*{ids[id(a)]}"
                                   for a, c in zip(n.args, attrs["coeffs"])) + ")"
    if n.op == "lowrank":
        return f"lowrank({args}; scale={format_float(attrs['scale'])}" + \
            (", transposed)" if attrs["transpose"] else ")")
    if n.op == "zeros":
        return f"zeros{format_shape(n.shape)}"
    if n.op == "cast":
        return f"cast({args}) -> {attrs['dtype']}"
    if n.op == "merge":
        method = attrs["method"]
        desc = ("merge " if method in OP_WORDS else "") + f"{method}({args}"
        ps = ", ".join(f"{k}={format_value(v)}" for k, v in attrs["params"])
        if ps or attrs["seed"] is not None:
            desc += f"; {ps}"
        if attrs["seed"] is not None:
            desc += f"; seed={int(attrs['seed'])}"
        return desc + ")"
    raise ValueError(f"no IR text for the op {n.op!r}")
