"""Backend-neutral schedule and its cost, from headers alone.

For each output: the order in which tensors are computed and written, what each reads,
the op counts, the bytes read and written, and an estimate of peak memory computed by
simulating the liveness of every value (compute values are float32).
"""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel

from mergec.io.dtypes import itemsize
from mergec.ir.lower import LoweredOutput, OutTensor
from mergec.ir.nodes import Node, topo
from mergec.ir.linear import linear_methods
from mergec.methods import REGISTRY

COMPUTE_ITEMSIZE = 4  # float32


class TensorStep(BaseModel):
    name: str
    shape: list[int]
    dtype: str
    ops: int
    raw_copy: bool  # written as stored, no compute


class OutputPlan(BaseModel):
    output: str
    tensors: int
    layers: int | None
    ops: dict[str, int]
    bytes_read: int
    bytes_written: int
    peak_memory: int
    raw_copies: int
    config_from: str | None
    tokenizer_from: str | None
    steps: list[TensorStep] = []


class Plan(BaseModel):
    recipe: str
    backend: str | None = None
    outputs: list[OutputPlan]


def is_raw_copy(t: OutTensor) -> bool:
    """The tensor is one input tensor written with its stored dtype: no decode, no compute."""
    if t.node.op == "copy":
        return True
    arg = t.node.args[0] if t.node.op == "cast" else None
    return arg is not None and arg.op == "load" and arg.dtype == t.dtype


def _nbytes(n: Node) -> int:
    return n.numel * itemsize(n.dtype)


def tensor_peak(t: OutTensor) -> int:
    """Peak bytes alive while computing one output tensor, executing in topological order
    and freeing each value after its last use."""
    if is_raw_copy(t):
        return _nbytes(t.node)
    if t.node.op == "convert":  # the stored array, its float32 form, the result
        return t.node.numel * (COMPUTE_ITEMSIZE + itemsize(t.node.attr("from"))) + _nbytes(t.node)
    order = topo(t.node)
    last_use: dict[int, int] = {}
    for i, n in enumerate(order):
        for a in n.args:
            last_use[id(a)] = i
    live = 0
    peak = 0
    alive: dict[int, int] = {}
    for i, n in enumerate(order):
        if n.op == "load":
            size = n.numel * COMPUTE_ITEMSIZE
            transient = _nbytes(n)  # the stored bytes, while they are decoded
            peak = max(peak, live + size + transient)
        elif n.op == "cast":
            size = _nbytes(n)
        elif n.op == "wsum" or (n.op == "merge" and n.attr("method") in linear_methods()):
            size = n.numel * 8  # accumulated in float64
            peak = max(peak, live + size + n.numel * 8)  # plus one widened term
        else:
            size = n.numel * COMPUTE_ITEMSIZE
            # a kernel's own temporaries: about two more values of this size
            peak = max(peak, live + 3 * size)
        live += size
        alive[id(n)] = size
        peak = max(peak, live)
        for a in n.args:
            if last_use.get(id(a)) == i:
                live -= alive.pop(id(a), 0)
    return peak


#: working set of one block of rows on a CPU (per worker thread): small enough to stay in
#: the processor's cache, large enough that the per-block overhead does not show
BLOCK_BYTES = 8 << 20


def _row_ok(n: Node, ndim: int) -> bool:
    """Can this merge call be computed a block of rows at a time (its method's split)?"""
    return REGISTRY[n.attr("method")].split(dict(n.attr("params")), ndim) != "whole"


def chunkable(t: OutTensor) -> bool:
    """Can this tensor be computed and written a block of rows at a time? (Tensors of one
    or no dimension are small and always computed whole.)"""
    if len(t.shape) < 2:
        return False
    if t.node.op in ("copy", "convert"):
        return True
    return node_chunkable(t.node.args[0] if t.node.op == "cast" else t.node)


def node_chunkable(root: Node) -> bool:
    if len(root.shape) < 2:
        return False
    for n in topo(root):
        if n.op in ("load", "wsum", "zeros"):
            continue
        if n.op == "merge" and _row_ok(n, len(n.shape)):
            continue
        return False
    return True


def block_budget(max_memory: int | None) -> int:
    """Bytes one block of rows may use: the CPU block size, less under a smaller limit."""
    return BLOCK_BYTES if max_memory is None else min(BLOCK_BYTES, max_memory)


def rows_per_chunk(t: OutTensor, budget: int | None) -> int:
    """Rows computed at once so that the tensor's peak stays within `budget` bytes
    (all rows when there is no budget or the tensor cannot be split)."""
    n = t.shape[0] if t.shape else 1
    if budget is None or not chunkable(t):
        return n
    peak = tensor_peak(t)
    if peak <= budget:
        return n
    per_row = -(-peak // n)
    return max(1, min(n, budget // per_row))


def plan_output(lo: LoweredOutput, *, steps: bool = False,
                max_memory: int | None = None) -> OutputPlan:
    ops: Counter = Counter()
    loads: dict[tuple, int] = {}
    peak = 0
    written = 0
    copies = 0
    step_list = []
    for t in lo.tensors:
        nodes = topo(t.node)
        copy = is_raw_copy(t)
        copies += copy
        for n in nodes:
            if n.op == "load":
                loads[(n.attr("source"), n.attr("tensor"))] = _nbytes(n)
            elif n.op == "merge":
                ops[n.attr("method")] += 1
            elif n.op in ("wsum", "lowrank"):
                ops[n.op] += 1
            elif n.op in ("copy", "convert"):
                loads[(n.attr("source"), n.attr("tensor"))] = n.numel * itemsize(n.attr("from"))
                if n.op == "convert":
                    ops["convert"] += 1
        written += t.node.numel * itemsize(t.dtype)
        k = rows_per_chunk(t, block_budget(max_memory))
        whole = tensor_peak(t)
        peak = max(peak, whole if k == (t.shape[0] if t.shape else 1)
                   else -(-whole // t.shape[0]) * k)
        if steps:
            step_list.append(TensorStep(name=t.name, shape=list(t.shape), dtype=t.dtype,
                                        ops=sum(1 for n in nodes if n.op in ("merge", "wsum")),
                                        raw_copy=copy))
    out = lo.output
    return OutputPlan(
        output=out.name, tensors=len(lo.tensors), layers=lo.n_layers,
        ops=dict(sorted(ops.items())), bytes_read=sum(loads.values()), bytes_written=written,
        peak_memory=peak, raw_copies=copies,
        config_from=out.config_from.name if out.config_from else None,
        tokenizer_from=out.tokenizer_from.name if out.tokenizer_from else None,
        steps=step_list,
    )


def make_plan(recipe: str, lowered: list[LoweredOutput], *, steps: bool = False,
              max_memory: int | None = None) -> Plan:
    return Plan(recipe=recipe, outputs=[plan_output(lo, steps=steps, max_memory=max_memory)
                                        for lo in lowered])


def memory_warnings(lowered: list[LoweredOutput], max_memory: int | None) -> list:
    """W302 for each output with tensors that cannot be split to fit `max_memory`."""
    from mergec.diagnostics import Diagnostic
    from mergec.io.sizes import format_size

    out = []
    if max_memory is None:
        return out
    for lo in lowered:
        over = [(t, tensor_peak(t)) for t in lo.tensors
                if not chunkable(t) and tensor_peak(t) > max_memory]
        if over:
            t, p = max(over, key=lambda x: x[1])
            methods = sorted({n.attr("method") for n in topo(t.node) if n.op == "merge"})
            out.append(Diagnostic(
                "W302", f"output `{lo.output.name}`: {len(over)} tensor"
                f"{'s' if len(over) != 1 else ''} need more than the memory limit "
                f"{format_size(max_memory)} at once (`{t.name}`: {format_size(p)})",
                lo.output.span,
                f"{', '.join(methods) or 'this merge'} works on whole tensors in this version; "
                "weighted sums, linear methods, nearswap, ties, dare, slerp, nuslerp, "
                "multislerp, karcher and model_stock are split into row blocks",
                severity="warning"))
    return out
