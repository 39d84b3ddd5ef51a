"""Checked program -> per-tensor IR.

Each output is a Model whose tensor table the checker computed. For every tensor name of
that table the lowering walks the checked expression and builds the DAG that computes it,
resolving per tensor what the recipe leaves to depth and position: `where` overrides (the
last matching block wins), `ramp` values, and the seed of random methods.

Frames: a `where` selector and a `ramp` are evaluated in the frame of the call they apply
to — the tensor names as that call produces them. For a call over layer runs
(`slerp(a.layers[8:16], b.layers[8:16], t=ramp(0, 1))`) the blocks count from 0 at the
start of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mergec import arch
from mergec.check.program import (
    CAdapter, CCall, CExpr, CheckedProgram, CInput, CLinear, CMoe, CSlice, CStack, Output,
    Ramp,
)
from mergec.check.stacks import route_source
from mergec.check.stats import covered
from mergec.check.walk import call_numbers
from mergec.io.dtypes import MERGE_DTYPES
from mergec.ir.nodes import Graph, Node
from mergec.ir.passes import RULES, run_passes
from mergec.ir.placeholders import ModelTopK
from mergec.ops.random import derive_seed


@dataclass(frozen=True)
class OutTensor:
    name: str
    node: Node  # the cast root
    shape: tuple[int, ...]
    dtype: str


@dataclass
class LoweredOutput:
    output: Output
    tensors: list[OutTensor]
    n_layers: int | None
    graph: Graph = field(repr=False, default_factory=Graph)
    before: list[Node] | None = field(default=None, repr=False)  # roots before the passes
    reports: list = field(default_factory=list)  # what each pass changed
    #: non-float tensors carried over from the first input that has them: (output tensor,
    #: the (source, tensor) of every input it comes from); the build checks they are equal
    buffers: list[tuple[str, tuple[tuple[str, str], ...]]] = field(default_factory=list)


def lower(checked: CheckedProgram, *, canonical: bool = False) -> list[LoweredOutput]:
    """The IR exactly as the recipe writes it (a literal graph); `optimize` then runs the
    passes. `canonical=True` builds the canonical form directly (interned, sums flat)."""
    graph = Graph(canonical=canonical)
    return [_lower_output(checked, o, graph) for o in checked.outputs]


def optimize(lowered: list[LoweredOutput], rules=None) -> list[LoweredOutput]:
    """Run the passes (mergec.ir.passes.RULES) on every output, keeping the IR from
    before them and what each pass changed."""
    for lo in lowered:
        before = [t.node for t in lo.tensors]
        after, reports = run_passes(before, RULES if rules is None else rules)
        lo.before, lo.reports = before, reports
        lo.tensors = [OutTensor(t.name, r, t.shape, t.dtype) for t, r in zip(lo.tensors, after)]
    return lowered


class _Ctx:
    """What the lowering of one output tensor needs besides the expression."""

    def __init__(self, g: Graph, seed: int, out: Output):
        self.g, self.seed, self.out_name = g, seed, out.name
        self.out_tensor = ""
        # calls numbered in the order they are written (a stable identity for seeds)
        self._calls = call_numbers(out.expr)
        #: (checked node id, tensor name) -> IR node, for the current output tensor: a
        #: value used twice (a `let`) is lowered once
        self.memo: dict[tuple[int, str], Node] = {}

    def call_index(self, call: CCall) -> str:
        i = self._calls[id(call)]
        # beyond 10**4000 (a value shared through thousands of nested `let`s), `str` of an
        # int is refused; hexadecimal has no such limit
        return str(i) if i.bit_length() < 13000 else f"x{i:x}"


def _lower_output(checked: CheckedProgram, out: Output, g: Graph) -> LoweredOutput:
    ctx = _Ctx(g, checked.settings.seed, out)
    tensors: list[OutTensor] = []
    buffers = []
    for name, meta in out.expr.tensors.items():
        ctx.out_tensor = name
        ctx.memo.clear()
        if meta.dtype in MERGE_DTYPES:
            value = _lo(out.expr, name, ctx)
            dtype = out.dtype or _default_dtype(out, meta.dtype)
        else:  # a buffer (or float8): carried over as stored, never computed
            found = list(dict.fromkeys(_leaves(out.expr, name)))
            source, tensor = found[0]
            value = g.load(source, tensor, tuple(meta.shape), meta.dtype)
            dtype = meta.dtype
            if len(found) > 1:
                buffers.append((name, tuple(found)))
        root = g.cast(value, dtype)
        tensors.append(OutTensor(name, root, tuple(meta.shape), dtype))
    return LoweredOutput(out, tensors, out.expr.n_layers, g, buffers=buffers)


def _leaves(e: CExpr, name: str, seen: set | None = None) -> list[tuple[str, str]]:
    """The (input, tensor) pairs tensor `name` of `e` is computed from, in order; a value
    used twice (a `let`) is visited once (`seen`)."""
    if seen is None:
        seen = set()
    if (id(e), name) in seen:
        return []
    seen.add((id(e), name))
    if isinstance(e, CInput):
        return [(e.name, e.stored_name(name))]
    if isinstance(e, CAdapter):
        return []
    if isinstance(e, CLinear):
        return [x for t, _ in e.terms if not (t.sparse and name not in t.tensors)
                for x in _leaves(t, name, seen)]
    if isinstance(e, CSlice):
        return _leaves(e.target, arch.with_block_index(name, arch.block_index(name) + e.start),
                       seen)
    if isinstance(e, CStack):
        src, inner = stack_source(e, name)
        return _leaves(src, inner, seen)
    if isinstance(e, CCall):
        ins = [i for i in e.inputs if not (i.sparse and name not in i.tensors)]
        ins += [e.base] if e.base is not None else []
        return [x for i in ins for x in _leaves(i, name, seen)]
    if isinstance(e, CMoe):
        part, src_name = e.mapping[name]
        return [] if part < 0 else _leaves(e.parts[part], src_name, seen)
    raise TypeError(type(e))  # pragma: no cover


def stack_source(e: CStack, name: str) -> tuple[CExpr, str]:
    """Which part of a stack tensor `name` comes from, and its name there (the checker's
    routes, `mergec.check.stacks.layout`)."""
    where, inner = e.routes[name]
    return route_source(e, where), inner


def _default_dtype(out: Output, own: str) -> str:
    cfg = (out.config_from.config or {}) if out.config_from else {}
    d = cfg.get("torch_dtype") or cfg.get("dtype")
    return d if d in MERGE_DTYPES else own


def _lo(e: CExpr, name: str, ctx: "_Ctx") -> Node:
    key = (id(e), name)
    node = ctx.memo.get(key)
    if node is None:
        node = ctx.memo[key] = _lower_node(e, name, ctx)
    return node


def _lower_node(e: CExpr, name: str, ctx: "_Ctx") -> Node:
    g = ctx.g
    if isinstance(e, CInput):
        m = e.tensors[name]
        return g.load(e.name, e.stored_name(name), m.shape, m.dtype)
    if isinstance(e, CAdapter):
        pair = e.adapter.pairs.get(name)
        if pair is None:
            return g.zeros(e.tensors[name].shape) if name in e.tensors else None
        ia, ib = e.adapter.tensors[pair.a], e.adapter.tensors[pair.b]
        a = g.load(e.name, pair.a, tuple(ia.shape), ia.dtype)
        b = g.load(e.name, pair.b, tuple(ib.shape), ib.dtype)
        return g.lowrank(b, a, pair.scale, pair.transpose)
    if isinstance(e, CLinear):
        terms = [(_lo(t, name, ctx), c) for t, c in e.terms
                 if not (t.sparse and name not in t.tensors)]
        if not terms:  # only adapters, none of which adapts this tensor
            return g.zeros(e.tensors[name].shape)
        return g.wsum(terms)
    if isinstance(e, CSlice):
        bi = arch.block_index(name)
        return _lo(e.target, arch.with_block_index(name, bi + e.start), ctx)
    if isinstance(e, CStack):
        src, inner = stack_source(e, name)
        return _lo(src, inner, ctx)
    if isinstance(e, CCall):
        return _lo_call(e, name, ctx)
    if isinstance(e, CMoe):  # a tensor of a mixture of experts: an expert's, the base's
        part, src_name = e.mapping[name]
        if part < 0:
            return g.zeros(e.tensors[name].shape)
        return _lo(e.parts[part], src_name, ctx)
    raise TypeError(type(e))  # pragma: no cover


def resolve_params(call: CCall, name: str) -> dict:
    """Every parameter of `call` for tensor `name`: recipe values, then `where` overrides
    in order (the last match wins), then ramps evaluated at the tensor's block."""
    params = dict(call.params)
    block = arch.block_index(name)
    for ov in call.overrides:
        if ov.matches(name, block):
            for k, v in ov.values:
                if call.method.param(k) is not None:
                    p = call.method.param(k)
                    if p.per_input and not isinstance(v, tuple):
                        v = tuple([v] * len(call.inputs))
                    params[k] = v
    n = call.n_layers

    def value(v):
        if isinstance(v, Ramp):
            return v.at(block, n)
        if isinstance(v, tuple):
            return tuple(value(x) for x in v)
        return v

    return {k: value(v) for k, v in params.items()}


def _lo_call(e: CCall, name: str, ctx: "_Ctx") -> Node:
    g = ctx.g
    m = e.method
    params = resolve_params(e, name)
    if e.stats:  # a method with statistics, or its fallback where they do not reach
        if not covered(e, name):
            return _lo(e.fallback, name, ctx)
        xs = [_lo(i, name, ctx) for i in e.inputs]
        xs += [g.load(s.name, name, tuple(s.folder.tensors[name].shape), "float32")
               for s in e.stats]
        return g.merge(m.name, xs, params, None)
    xs = [g.zeros(e.tensors[name].shape) if i.sparse and name not in i.tensors
          else _lo(i, name, ctx) for i in e.inputs]
    # the seed names the output tensor (not the call's local name: two runs of blocks in a
    # stack differ) and the call (two random calls in one output draw different masks)
    s = derive_seed(ctx.seed, ctx.out_name, ctx.out_tensor, ctx.call_index(e)) \
        if m.random else None
    if params.get("trim") == "model":
        # the threshold is taken over the whole model: a placeholder the executor fills
        # in before the per-tensor pass (mergec.runtime.prepass)
        key = f"{ctx.out_name}#{ctx.call_index(e)}"
        params["thresholds"] = tuple(ModelTopK(key, i, float(d))
                                     for i, d in enumerate(params["density"]))
    if m.base == "delta" and e.base is not None:
        b = _lo(e.base, name, ctx)
        taus = [g.wsum([(x, 1.0), (b, -1.0)]) for x in xs]
        merged = g.merge(m.name, taus, params, s)
        return g.wsum([(b, 1.0), (merged, 1.0)])
    return g.merge(m.name, xs, params, s)
