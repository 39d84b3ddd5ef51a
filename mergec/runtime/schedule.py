"""The schedule: what a build does, tensor by tensor, from headers alone.

For each output, one step per tensor in the order the build dispatches them (largest first,
so that no worker is left with a big tensor at the end): how it is written (a raw copy, a
dtype conversion or a computation), the blocks of rows it is computed in, the passes over
the whole tensor that come before the last one (the inner products of slerp & co, TIES
and breadcrumbs thresholds of a split tensor, DARE's L1 norms), the program of IR nodes
the last pass evaluates, and whether the build process computes it itself (a heavy tensor) or a worker.
`mergec plan` prints it and `plan --json` exports it; the runtime
(:mod:`mergec.runtime.build`) executes exactly these steps, and reports each one it ran
to a trace hook in the same form (tests compare the two).

Costs come with it: op counts, bytes read and written, and an estimate of peak memory from
simulating the liveness of every value (compute values are float32).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from mergec import arch
from mergec.diagnostics import Diagnostic
from mergec.io.dtypes import itemsize
from mergec.io.sizes import format_size
from mergec.ir.linear import linear_methods
from mergec.ir.lower import LoweredOutput, OutTensor
from mergec.ir.nodes import Node, topo
from mergec.ir.placeholders import ModelTopK
from mergec.methods import REGISTRY
from mergec.runtime import parallel
from mergec.runtime.output_files import file_names

COMPUTE_ITEMSIZE = 4  # float32


class TensorStep(BaseModel):
    name: str
    shape: list[int]
    dtype: str
    ops: int
    raw_copy: bool  # written as stored, no compute
    kind: Literal["copy", "convert", "compute"]
    #: blocks of rows ([start, stop)); empty: the tensor is computed whole
    rows: list[list[int]] = []
    #: passes over the whole tensor before the last one: "<kind> <method>#<call>" with kind
    #: gram (inner products), topk (TIES or breadcrumbs thresholds), l1 (DARE's or DELLA's
    #: L1 norms)
    passes: list[str] = []
    #: the IR nodes the last pass evaluates, in order (one line each, as `plan --ir` prints)
    program: list[str] = []
    #: "main": the build process computes it (heavy tensors, or no workers); else "worker"
    runs_in: Literal["main", "worker"] = "main"


class ModulePlan(BaseModel):
    """A module of an adapter output (`lowrank`): its rank (None: found by the build from
    `energy`) and the bound on the relative error of its truncation."""

    module: str
    shape: list[int]
    rank: int | None
    max_error: float


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
    #: the files written beside the tensors (config.json, tokenizer and auxiliary files
    #: carried from the inputs, README.md)
    files: list[str] = []
    #: the block count of each layer stack, by name, where the output has several
    stacks: dict[str, int] = {}
    #: statistics over the whole model computed before any tensor (TIES trim="model")
    model_stats: list[str] = []
    steps: list[TensorStep] = []
    #: an output written as a LoRA adapter: its modules (empty for a model)
    adapter: list[ModulePlan] = []
    #: a mixture of experts: its layout, experts and router
    moe: str | None = None


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


def row_blocks(n_rows: int, k: int) -> list[tuple[int, int]]:
    """[start, stop) of each block of at most k rows."""
    return [(r0, min(r0 + k, n_rows)) for r0 in range(0, n_rows, k)]


def needs_pass(n: Node, split: bool) -> str | None:
    """The pass over the whole tensor this merge call needs before its last pass, if any:
    "gram" (a weighted sum from inner products), "l1" (DARE's L1 rescale, and DELLA's when
    the tensor is split) or "topk" (the thresholds of a TIES trim or of breadcrumbs' band
    when the tensor is split)."""
    m = REGISTRY[n.attr("method")]
    params = dict(n.attr("params"))
    if m.split(params, len(n.shape)) == "gram":
        return "gram"
    if m.traits.l1_rescale(params) and (split or m.traits.masks != "ranked"):
        return "l1"  # (ranked masks are per row: a whole tensor computes its own norms)
    if split and m.traits.masks in ("topk", "band") and params.get("trim") != "model":
        return "topk"
    return None


#: a merge call whose arguments (float32, whole tensor) fit this keeps them between the
#: passes over its tensor instead of reading and computing them again
ARGS_CACHE_BYTES = 32 << 20
#: a tensor computed whole that needs more than this is computed by the build process
#: itself, one at a time, so that memory does not grow with the number of workers
HEAVY_BYTES = 256 << 20


def is_heavy(t: OutTensor) -> bool:
    return len(t.shape) >= 1 and not chunkable(t) and t.node.op not in ("copy", "convert") \
        and tensor_peak(t) > HEAVY_BYTES


def pass_calls(value: Node, split: bool) -> list[tuple[Node, str]]:
    """The merge calls of a tensor that need a pass, in topological order (a later call
    may depend on an earlier one's result), with the kind of pass."""
    out = []
    for n in topo(value):
        if n.op == "merge":
            kind = needs_pass(n, split)
            if kind is not None:
                out.append((n, kind))
    return out


def kept_args(value: Node, split: bool) -> set[Node]:
    """The nodes whose values the passes keep for the last pass (the arguments of a call
    with a pass, when they fit ARGS_CACHE_BYTES): the last pass starts from them."""
    kept: set[Node] = set()
    for n, _ in pass_calls(value, split):
        if n.numel * len(n.args) * 4 <= ARGS_CACHE_BYTES:
            kept.update(n.args)
    return kept


def program_nodes(root: Node, given=frozenset()) -> list[Node]:
    """The nodes to evaluate for `root`, each after what it reads; nodes in `given` are
    taken as computed (their arguments are not visited)."""
    order: list[Node] = []
    seen: set[int] = set()
    stack = [(root, False)]
    while stack:
        n, done = stack.pop()
        if done:
            order.append(n)
            continue
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.append((n, True))
        if n in given:
            continue
        for a in reversed(n.args):
            if id(a) not in seen:
                stack.append((a, False))
    return order


def describe(n: Node, given=frozenset()) -> str:
    """One line for a node of a program."""
    if n in given:
        return f"kept {_short(n)}"
    return _short(n)


def _short(n: Node) -> str:
    if n.op in ("load", "copy", "convert"):
        return f"{n.op} {n.attr('source')}[{n.attr('tensor')}]"
    if n.op == "merge":
        return f"{n.attr('method')}({len(n.args)})"
    if n.op == "wsum":
        return f"wsum({len(n.args)})"
    if n.op == "lowrank":
        return "lowrank"
    if n.op == "cast":
        return f"cast {n.dtype}"
    return n.op


def call_label(n: Node, value: Node) -> str:
    """A merge call named by its method and its position among the tensor's calls."""
    calls = [m for m in topo(value) if m.op == "merge"]
    return f"{n.attr('method')}#{calls.index(n)}"


def tensor_step(t: OutTensor, budget: int | None, runs_in: str = "main") -> TensorStep:
    """The step of one output tensor (`budget`: bytes one block of rows may use)."""
    root = t.node
    k = rows_per_chunk(t, budget)
    n = t.shape[0] if t.shape else 1
    split = bool(t.shape) and k < n and chunkable(t)
    rows = [list(r) for r in row_blocks(n, k)] if split else []
    common = dict(name=t.name, shape=list(t.shape), dtype=t.dtype, rows=rows,
                  raw_copy=is_raw_copy(t), runs_in=runs_in,
                  ops=sum(1 for x in topo(root) if x.op in ("merge", "wsum")))
    if root.op in ("copy", "convert"):
        return TensorStep(kind=root.op, **common)
    value = root.args[0]
    calls = pass_calls(value, split)
    given = kept_args(value, split)
    return TensorStep(kind="compute",
                      passes=[f"{kind} {call_label(c, value)}" for c, kind in calls],
                      program=[describe(x, given) for x in program_nodes(value, given)],
                      **common)


def dispatch_order(lo: LoweredOutput) -> list[int]:
    """Indices of the tensors in the order the build takes them: largest first, so that no
    worker is left with a big tensor at the end (ties in file order)."""
    return sorted(range(len(lo.tensors)), key=lambda i: -lo.tensors[i].node.numel)


def model_stat_labels(lo: LoweredOutput) -> list[str]:
    """The model-wide statistics an output needs, one line each."""
    seen = []
    for t in lo.tensors:
        for n in topo(t.node):
            if n.op != "merge":
                continue
            for _, v in n.attr("params"):
                for x in (v if isinstance(v, tuple) else (v,)):
                    if isinstance(x, ModelTopK) and repr(x) not in seen:
                        seen.append(repr(x))
    return seen


def schedule(lo: LoweredOutput, *, max_memory: int | None = None, on_cpu: bool = True,
             workers: int = 1, pool: str | None = None) -> list[TensorStep]:
    """The steps of one output in dispatch order. `pool`: "processes" or "threads" when
    `workers` > 1. Who runs a step: the build process itself when there are no workers,
    for a heavy tensor (:func:`is_heavy`), and, on threads, for a tensor larger than a
    quarter of a worker's share (its blocks are then spread over all the threads, so no
    worker waits long at the end); a worker otherwise."""
    budget = block_budget(max_memory) if on_cpu else max_memory
    big = sum(t.node.numel for t in lo.tensors) // (4 * max(1, workers))

    def runs_in(t: OutTensor) -> str:
        if workers <= 1 or pool is None or is_heavy(t):
            return "main"
        return "main" if pool == "threads" and t.node.numel > big else "worker"

    return [tensor_step(lo.tensors[i], budget, runs_in(lo.tensors[i]))
            for i in dispatch_order(lo)]


def plan_output(lo: LoweredOutput, *, max_memory: int | None = None, on_cpu: bool = True,
                workers: int = 1, pool: str | None = None) -> OutputPlan:
    ops: Counter = Counter()
    loads: dict[tuple, int] = {}
    peak = 0
    written = 0
    copies = 0
    for t in lo.tensors:
        nodes = topo(t.node)
        copies += is_raw_copy(t)
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
    out = lo.output
    adapter: list[ModulePlan] = []
    n_tensors = len(lo.tensors)
    moe = None
    if out.form is not None and hasattr(out.form, "routers"):  # a mixture of experts
        f = out.form
        moe = (f"{f.layout}: {f.n_experts} experts, {f.experts_per_token} per token, "
               f"router {f.router} ({len(f.routers)} layers)")
        n_tensors += len(f.routers)
        written += sum(e * h * itemsize(f.router_dtype) for _, _, (e, h) in f.routers)
    elif out.form is not None:  # an adapter: factors and changed modules, at most
        from mergec.runtime.extract import plan_rows, planned_bytes

        adapter = [ModulePlan(module=r.module, shape=list(r.shape), rank=r.rank,
                              max_error=r.max_error) for r in plan_rows(lo)]
        n_tensors, written = planned_bytes(lo)
    return OutputPlan(
        output=out.name, tensors=n_tensors, layers=lo.n_layers, adapter=adapter, moe=moe,
        stacks=stack_counts([t.name for t in lo.tensors]),
        ops=dict(sorted(ops.items())), bytes_read=sum(loads.values()), bytes_written=written,
        peak_memory=peak, raw_copies=copies,
        config_from=out.config_from.name if out.config_from else None,
        tokenizer_from=out.tokenizer_from.name if out.tokenizer_from else None,
        files=file_names(lo),
        model_stats=model_stat_labels(lo),
        steps=schedule(lo, max_memory=max_memory, on_cpu=on_cpu, workers=workers, pool=pool),
    )


def stack_counts(names: list[str]) -> dict[str, int]:
    """name -> block count of each layer stack, where there are several (else {})."""
    found = arch.stacks(names)
    if len(found) < 2:
        return {}
    return {name: found[p] for name, p in arch.stack_names(names).items()}


def make_plan(recipe: str, lowered: list[LoweredOutput], *, max_memory: int | None = None,
              on_cpu: bool = True, workers: int = 1, pool: str | None = None,
              backend: str | None = None) -> Plan:
    return Plan(recipe=recipe, backend=backend,
                outputs=[plan_output(lo, max_memory=max_memory, on_cpu=on_cpu,
                                     workers=workers, pool=pool) for lo in lowered])


def splittable_methods() -> list[str]:
    """The methods whose calls (with their default parameters) can run in row blocks."""
    return [m.name for m in REGISTRY.values()
            if m.split({p.name: p.default for p in m.params}, 2) != "whole"]


def memory_warnings(lowered: list[LoweredOutput], max_memory: int | None) -> list:
    """W302 for each output with tensors that cannot be split to fit `max_memory`."""
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
                f"weighted sums and {', '.join(splittable_methods())} are split into row "
                "blocks",
                severity="warning"))
    return out


@dataclass(frozen=True)
class Execution:
    """How a build runs on this machine: on a CPU or an accelerator, with how many
    workers, in forked processes or on threads."""

    on_cpu: bool
    workers: int
    pool: str | None  # "processes" | "threads" | None (one after the other)


def execution(backend_name: str, device: str, jobs: int | None, sources) -> Execution:
    """The execution a build with this backend and `jobs` gets (`mergec plan` asks the
    same question, so its schedule is the build's)."""
    on_cpu = str(device).startswith("cpu")
    workers = (jobs or parallel.default_jobs()) if on_cpu else 1
    if workers <= 1:
        return Execution(on_cpu, workers, None)
    fork = parallel.can_fork(backend_name, sources)
    return Execution(on_cpu, workers, "processes" if fork else "threads")
