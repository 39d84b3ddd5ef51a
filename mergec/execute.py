"""Run lowered outputs on a backend and write them.

For each output a writer is opened beside the target (nothing appears at the target until
the whole checkpoint is written and synced). Each tensor is then, in order of the rooms
below:

* scheduled (:func:`evaluate`): loads read one input tensor (or a block of its rows);
  linear computations are evaluated as the one weighted sum they flatten to, with the
  rules the fold_linear and eliminate_dead passes use, so a build is the same bytes with
  and without the passes; values are float32 on the backend, the tensor's own sum is
  accumulated in float64, and the root casts once to the storage dtype;
* split (:func:`write_tensor`): on a CPU a tensor of two or more dimensions is computed a
  block of rows at a time where its computation allows it; whole-tensor statistics (TIES
  thresholds, DARE L1 norms, the inner products of slerp & co) come first, from passes
  over the blocks (:func:`tensor_stats`), and are the same for any split;
* shared out (:func:`build_output`): worker processes (NumPy backend) or threads compute
  tensors side by side and write them at their offsets.

An input tensor written in its stored dtype is copied as raw bytes.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mergec import __version__
from mergec.check.program import CheckedProgram
from mergec.io import hf_files
from mergec.io.writer import OutputWriter
from mergec.ir.lower import LoweredOutput, OutTensor
from mergec.ir.nodes import Node, topo
from mergec.io.errors import CheckpointError
from mergec.ir.linear import combine, expand, linear_coeffs, linear_methods, live_terms
from mergec.methods import REGISTRY, run_method
from mergec.plan import block_budget, chunkable, node_chunkable, rows_per_chunk
from mergec.stats import compute_model_stats, resolve_stats


@dataclass
class BuildResult:
    output: str
    path: Path
    tensors: int
    bytes_written: int
    seconds: float


ProgressFn = Callable[[str, int, int], None]  # (output name, tensors done, bytes done)


def source_of(checked: CheckedProgram, name: str):
    """The opened checkpoint or adapter of input `name`."""
    inp = checked.inputs[name]
    return inp.checkpoint if hasattr(inp, "checkpoint") else inp.adapter


class _Linear:
    """The weighted sum each linear node (a weighted sum or a linear method) stands for,
    flattened through nested linear nodes with the rules of the fold_linear and
    eliminate_dead passes (mergec.ops.linear): an IR the passes did not touch computes the
    same sums, term for term, as the one they rewrote."""

    def __init__(self) -> None:
        self._flat: dict[int, list | None] = {}

    def flat(self, n: Node) -> list | None:
        """Combined terms of a linear node (zero terms kept, as the passes keep them until
        the last one), None for any other node."""
        key = id(n)
        if key not in self._flat:
            if n.op == "wsum":
                terms = list(zip(n.args, n.attr("coeffs")))
            elif n.op == "merge" and n.attr("method") in linear_methods():
                coeffs = linear_coeffs(n.attr("method"), dict(n.attr("params")), len(n.args))
                terms = None if coeffs is None else list(zip(n.args, coeffs))
            else:
                terms = None
            self._flat[key] = None if terms is None else combine(expand(terms, self.flat))
        return self._flat[key]


def _schedule(root: Node, given: dict, lin: _Linear) -> tuple[list[Node], dict]:
    """The nodes to compute for `root`, each after what it reads, and the terms of the
    linear ones: a linear node reads the leaves of its flattened sum, never the nested
    sums themselves (those are computed only where a non-linear node reads them)."""
    terms: dict[int, list] = {}

    def reads(n: Node) -> list[Node]:
        if id(n) in given:
            return []
        flat = lin.flat(n)
        if flat is None:
            return list(n.args)
        terms[id(n)] = live_terms(flat)
        return [x for x, _ in terms[id(n)]]

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
        for a in reversed(reads(n)):
            if id(a) not in seen:
                stack.append((a, False))
    return order, terms


def evaluate(root: Node, checked: CheckedProgram, backend, stats: dict | None = None,
             rows: tuple[int, int] | None = None,
             ctx: "TensorStats | None" = None, block: int = 0, args_of_root: bool = False,
             given: dict | None = None, for_kernel: bool = False):
    """The backend value of `root` (or, with `args_of_root`, the values of its arguments),
    computing what it reads in topological order and freeing every value after its last
    use. `rows` selects a block of rows (block number `block` of the tensor); `ctx` holds
    what the earlier passes over the whole tensor found (thresholds, norms, inner
    products); `given` holds values already computed for this block (by node id).

    Linear computations are evaluated as the one weighted sum they flatten to (see
    :class:`_Linear`): accumulated in float64 when the sum is the tensor's value (rounded
    once to the storage dtype), in float32 when a non-linear kernel reads it
    (`for_kernel`, or an argument of a merge), which rounds it to float32 anyway."""
    given = given or {}
    lin = _Linear()
    order, terms = _schedule(root, given, lin)
    if args_of_root:
        order = order[:-1]
    reads = {id(n): ([x for x, _ in terms[id(n)]] if id(n) in terms else
                     [] if id(n) in given else list(n.args)) for n in order}
    last_use: dict[int, int] = {}
    for i, n in enumerate(order):
        for a in reads[id(n)]:
            last_use[id(a)] = i
    if args_of_root:
        for a in root.args:
            last_use[id(a)] = len(order)
    wide = not (for_kernel or args_of_root)
    values: dict[int, object] = {}
    for i, n in enumerate(order):
        if id(n) in given:
            v = given[id(n)]
        elif id(n) in terms:
            kept = terms[id(n)]
            if not kept:
                v = backend.zeros(n.shape if rows is None else
                                  (rows[1] - rows[0],) + n.shape[1:])
            elif len(kept) == 1 and kept[0][1] == 1.0:
                v = values[id(kept[0][0])]
            else:
                v = _sum(backend, [(values[id(x)], c) for x, c in kept],
                         wide and n is root)
        elif n.op == "load":
            src = source_of(checked, n.attr("source"))
            name = n.attr("tensor")
            v = backend.asarray(src.read(name) if rows is None else src.read_rows(name, *rows))
        elif n.op == "merge":
            v = _merge(n, [values[id(a)] for a in n.args], backend, stats, rows, ctx, block)
        elif n.op == "lowrank":
            b, a = (backend.to_float32(values[id(x)]) for x in n.args)
            v = lowrank(backend, b, a, n.attr("scale"), n.attr("transpose"))
        elif n.op == "zeros":
            v = backend.zeros(n.shape if rows is None else (rows[1] - rows[0],) + n.shape[1:])
        else:  # pragma: no cover - roots (cast, copy, convert) are handled by the caller
            raise AssertionError(n.op)
        values[id(n)] = v
        for a in reads[id(n)]:
            if last_use.get(id(a)) == i:
                values.pop(id(a), None)
    if args_of_root:
        return [values[id(a)] for a in root.args]
    return values[id(order[-1])]


def _merge(n: Node, args: list, backend, stats, rows, ctx, block: int):
    method = n.attr("method")
    params = dict(n.attr("params"))
    if stats is not None:
        params = {k: resolve_stats(v, stats) for k, v in params.items()}
    found = ctx.get(n) if ctx is not None else None
    if found is not None and "coeffs" in found:  # slerp & co: the sum its inner products give
        return backend.wsum([(backend.to_float32(a), c)
                             for a, c in zip(args, found["coeffs"])])
    if REGISTRY[method].traits.masks and (rows is not None or (found and "masks" in found)):
        params["masks"] = _block_masks(n, params, args, rows, backend, found, block)
    if found is not None and "l1_scales" in found:
        params["l1_scales"] = found["l1_scales"]
    coeffs = linear_coeffs(method, params, len(args))
    if coeffs is not None:  # a linear method whose weights were placeholders until now
        return backend.wsum(list(zip(args, coeffs)))
    return run_method(backend, method, [backend.to_float32(x) for x in args], params,
                      n.attr("seed"))


def lowrank(backend, b, a, scale: float, transpose: bool):
    """scale * (b @ a), transposed when `transpose`: the dense delta of a LoRA pair
    (b: [out, r], a: [r, in])."""
    d = backend.mul(backend.matmul(b, a), float(scale))
    return backend.transpose(d) if transpose else d


def _sum(backend, terms, wide: bool):
    """A weighted sum of float32 values: accumulated in float64 when it is the tensor's
    value (`wide`), else in float32."""
    return backend.wsum64(terms) if wide else backend.wsum(terms)


def _host(backend, v):
    """A backend value as a float32 numpy array, without a copy when it already is one
    (the NumPy backend's values; nothing here writes into them)."""
    import numpy as np

    if isinstance(v, np.ndarray) and v.dtype == np.float32:
        return v
    return np.asarray(backend.to_numpy(backend.to_float32(v), "float32"))


def convert(a, dtype: str):
    """A stored array in another storage dtype, through float32 like every computed tensor
    (bfloat16 and float16 widen to float32 exactly, so this is one rounding)."""
    import numpy as np

    from mergec.io.dtypes import numpy_dtype

    return a.astype(np.float32).astype(numpy_dtype(dtype))


# ------------------------------------------------------------------------ whole-tensor stats


class TensorStats:
    """What the passes before the last one found about the merge calls of one tensor:
    per call, ``{"coeffs": [...]}`` (a weighted sum from inner products), ``{"l1_scales":
    (...)}`` (DARE's L1 rescale) and/or ``{"trims": [...]}`` (TIES thresholds of a tensor
    computed in blocks)."""

    def __init__(self) -> None:
        self._by_node: dict[int, dict] = {}

    def get(self, n: Node) -> dict | None:
        return self._by_node.get(id(n))

    def put(self, n: Node, key: str, value) -> None:
        self._by_node.setdefault(id(n), {})[key] = value


def _needs_pass(n: Node, split: bool) -> bool:
    """Does this merge call need a pass over the whole tensor before its last pass?"""
    m = REGISTRY[n.attr("method")]
    params = dict(n.attr("params"))
    if m.split(params, len(n.shape)) == "gram":
        return True
    if m.traits.l1_rescale(params):
        return True
    return split and m.traits.masks == "topk" and params.get("trim") != "model"


class Blocks:
    """Runs a function over the blocks of rows of one tensor, on a pool of threads,
    returning the results in block order."""

    def __init__(self, blocks: list, pool: ThreadPoolExecutor | None) -> None:
        self.blocks, self.pool = blocks, pool

    def map(self, fn, only: list[int] | None = None):
        items = list(enumerate(self.blocks))
        if only is not None:
            items = [items[b] for b in only]
        if self.pool is None or len(items) == 1:
            return [fn(b, rows) for b, rows in items]
        return list(self.pool.map(lambda it: fn(*it), items))


def tensor_stats(root: Node, checked, backend, stats, blocks: Blocks) -> TensorStats | None:
    """One pass over the tensor per merge call that needs whole-tensor statistics, in
    topological order (a later call may depend on an earlier one's result)."""
    import numpy as np

    from mergec.backends import base as B
    from mergec.ops.random import keep_mask, keep_mask_rows

    split = len(blocks.blocks) > 1
    calls = [n for n in topo(root) if n.op == "merge" and _needs_pass(n, split)]
    if not calls:
        return None
    ctx = TensorStats()
    for n in calls:
        method = n.attr("method")
        params = dict(n.attr("params"))
        if stats is not None:
            params = {k: resolve_stats(v, stats) for k, v in params.items()}

        keep_args = n.numel * len(n.args) * 4 <= ARGS_CACHE_BYTES
        cache: dict[int, list] = {}

        def args_of(b, rows, n=n, keep_args=keep_args, cache=cache):
            if b in cache:
                return cache[b]
            vals = evaluate(n, checked, backend, stats, rows=rows, ctx=ctx, block=b,
                            args_of_root=True)
            vals = [backend.to_float32(v) for v in vals]
            if keep_args:
                cache[b] = vals
            return vals

        m = REGISTRY[method]
        if m.split(params, len(n.shape)) == "gram":
            parts = blocks.map(lambda b, rows: B.gram_partials(
                [_host(backend, x) for x in args_of(b, rows)]))
            ctx.put(n, "coeffs", m.gram_coefficients(params, B.total(parts)))
        elif m.traits.masks == "topk":
            ctx.put(n, "trims", _ties_trims(
                n, params, blocks,
                lambda b, rows: [_host(backend, x) for x in args_of(b, rows)]))
        else:  # DARE with an L1 rescale: the norms of each task vector and of what is kept
            dens = m.args(params, len(n.args)).density
            seed = n.attr("seed")

            def l1(b, rows):
                xs = [_host(backend, x) for x in args_of(b, rows)]
                out = []
                for i, (x, d) in enumerate(zip(xs, dens)):
                    if d >= 1.0:
                        out.append(None)
                        continue
                    m = (keep_mask(seed, i, n.shape, d) if rows is None else
                         keep_mask_rows(seed, i, n.shape, d, *rows))
                    masks[(b, i)] = np.packbits(m)  # drawn once: the last pass unpacks them
                    out.append((B.abs_partials(x), B.abs_partials(B.keep(x, m))))
                return out

            masks: dict = {}
            parts = blocks.map(l1)
            ctx.put(n, "masks", masks)
            scales = []
            for i, d in enumerate(dens):
                if d >= 1.0:
                    scales.append(None)
                    continue
                s_all = float(B.total([p[i][0] for p in parts]))
                s_kept = float(B.total([p[i][1] for p in parts]))
                scales.append(float(s_all / s_kept) if s_kept != 0.0 else 0.0)
            ctx.put(n, "l1_scales", tuple(scales))
        if keep_args:
            ctx.put(n, "args", cache)  # the last pass starts from them
    return ctx


#: a merge call whose arguments (float32, whole tensor) fit this keeps them between the
#: passes over its tensor instead of reading and computing them again
ARGS_CACHE_BYTES = 32 << 20


def _given(ctx: "TensorStats | None", root: Node, block: int, backend) -> dict | None:
    """Argument values the passes kept for one block, by node id (kernels never write
    into their inputs, so the last pass reads them as they are)."""
    if ctx is None:
        return None
    given = {}
    for n in topo(root):
        found = ctx.get(n) if n.op == "merge" else None
        if found and "args" in found and block in found["args"]:
            for a, v in zip(n.args, found["args"][block]):
                given[id(a)] = v
    return given or None


def _ties_trims(n: Node, params: dict, blocks: Blocks, args_of) -> list:
    """Per input of a TIES call on a tensor computed in blocks: None (keep all) or
    ``(threshold, allowance per block)`` — the k-th largest magnitude over the whole tensor
    and, for each block, how many of its entries equal to the threshold are kept (lowest
    indices first), so the blocks keep exactly what the whole tensor would.

    Exact, by selection, never a sort of the tensor: a sample (evenly spread blocks, every
    s-th entry) brackets the k-th magnitude; one pass counts the entries above the bracket
    and collects those inside it, from which the k-th is selected. If the sample misled
    (the k-th is outside the bracket), a histogram pass and a pass over one bucket find it.
    """
    import numpy as np

    from mergec.methods.spec import keep_count
    from mergec.ops.select import magnitude_bits

    ks = [keep_count(d, n.numel) for d in params["density"]]
    live = [i for i, k in enumerate(ks) if k < n.numel]
    trims: list = [None] * len(ks)
    if not live:
        return trims
    nblk = len(blocks.blocks)
    picked = sorted({round(j * (nblk - 1) / (SAMPLE_BLOCKS - 1)) for j in
                     range(SAMPLE_BLOCKS)}) if nblk > SAMPLE_BLOCKS else list(range(nblk))
    numel_picked = sum(_block_numel(n, blocks.blocks[b]) for b in picked)
    stride = max(1, numel_picked // SAMPLE_SIZE)

    def sample(b, rows):
        xs = args_of(b, rows)
        return [magnitude_bits(xs[i])[::stride].copy() for i in live]

    got = blocks.map(sample, only=picked)
    brackets = {}
    for j, i in enumerate(live):
        smp = np.sort(np.concatenate([g[j] for g in got]))[::-1]  # descending
        m, p = smp.size, ks[i] / n.numel
        margin = int(4 * (m * p * (1 - p)) ** 0.5) + 2
        r = int(p * m)
        hi = smp[r - margin] if r - margin >= 0 else np.uint32(0xFFFFFFFF)
        lo = smp[r + margin] if r + margin < m else np.uint32(0)
        brackets[i] = (hi, lo)

    def bracket(b, rows):
        xs = args_of(b, rows)
        out = []
        for i in live:
            bits = magnitude_bits(xs[i])
            hi, lo = brackets[i]
            above = int(np.count_nonzero(bits > hi))
            out.append((above, bits[(bits >= lo) & (bits <= hi)]))
        return out

    found = blocks.map(bracket)
    for j, i in enumerate(live):
        above = sum(f[j][0] for f in found)
        ins = [f[j][1] for f in found]
        if not above < ks[i] <= above + sum(x.size for x in ins):  # the sample misled
            above, ins = _ties_bucket(n, i, ks[i], blocks, args_of)
        trims[i] = _kth_of(np.concatenate(ins), ks[i] - above, ins)
    return trims


#: blocks of a tensor sampled to bracket a TIES threshold, and entries in the sample
SAMPLE_BLOCKS = 8
SAMPLE_SIZE = 1 << 16


def _block_numel(n: Node, rows) -> int:
    if rows is None:
        return n.numel
    return (rows[1] - rows[0]) * (n.numel // n.shape[0])


def _kth_of(vals, r: int, per_block: list) -> tuple:
    """(threshold, allowance per block) from the magnitude bits `vals` that hold the k-th
    largest as their r-th largest (`per_block`: the same values, block by block). The
    threshold is a float32 bit pattern: compared as such, NaN ranks above infinity."""
    import numpy as np

    from mergec.ops.select import kth_of

    kth = kth_of(vals, r)
    remaining = r - int(np.count_nonzero(vals > kth))  # entries equal to it still kept
    allow = []
    for x in per_block:
        eq = int(np.count_nonzero(x == kth))
        allow.append(min(eq, remaining))
        remaining -= allow[-1]
    return np.uint32(kth), allow


def _ties_bucket(n: Node, i: int, k: int, blocks: Blocks, args_of) -> tuple:
    """The fallback: (entries above the bucket, bucket entries per block) for input i, from
    a histogram of the magnitudes' bit patterns (:func:`mergec.stats.bucket_pass`)."""
    from mergec.ops.select import bucket_pass, magnitude_bits

    def map_bits(fn):
        return blocks.map(lambda b, rows: fn(magnitude_bits(args_of(b, rows)[i])))

    return bucket_pass(map_bits, k)


def _block_masks(n: Node, params: dict, args, rows, backend, found, block: int) -> tuple:
    """The keep masks of a sparsifying merge for one block of rows."""
    import numpy as np

    from mergec.ops.random import keep_mask_rows

    dens = params["density"]
    if REGISTRY[n.attr("method")].traits.masks == "bernoulli":  # the rows of the whole tensor's masks
        drawn = found.get("masks", {}) if found is not None else {}
        shape = n.shape if rows is None else (rows[1] - rows[0],) + n.shape[1:]
        if drawn:
            return tuple(np.unpackbits(drawn[(block, i)], count=math.prod(shape)).view(bool)
                         .reshape(shape) if d < 1.0 else np.ones(shape, dtype=bool)
                         for i, d in enumerate(dens))
        return tuple(keep_mask_rows(n.attr("seed"), i, n.shape, d, *rows) if d < 1.0
                     else np.ones((rows[1] - rows[0],) + n.shape[1:], dtype=bool)
                     for i, d in enumerate(dens))
    if params.get("trim") == "model":  # the model-wide threshold applies as it is
        thr = params["thresholds"]
        return tuple(np.abs(_host(backend, a)) >= np.float32(t) for a, t in zip(args, thr))
    from mergec.ops.select import magnitude_bits

    masks = []
    for a, trim in zip(args, found["trims"]):
        v = _host(backend, a)
        if trim is None:  # keeps everything
            masks.append(np.ones(v.shape, dtype=bool))
            continue
        thr, allow = trim
        bits = magnitude_bits(v)
        mask = bits > thr
        if allow[block] > 0:  # magnitudes equal to the threshold: the lowest indices first
            mask[np.flatnonzero(bits == thr)[:allow[block]]] = True
        masks.append(mask.reshape(v.shape))
    return tuple(masks)


# ------------------------------------------------------------------------ the output loop


def _tune_allocator() -> None:
    """Keep freed blocks in the C heap for reuse instead of returning them to the system
    and faulting fresh pages in for the next block (glibc only; a no-op elsewhere)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 64 << 20)   # blocks come from the heap, not fresh mappings
    mallopt(m_trim_threshold, 256 << 20)  # and stay there once freed


def default_jobs() -> int:
    """Parallel workers: the CPUs this process may run on (at most 8)."""
    import os

    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def build_output(lo: LoweredOutput, checked: CheckedProgram, target: Path, backend, *,
                 force: bool = False, shard_size: int = 5 * 10**9,
                 progress: ProgressFn | None = None,
                 max_memory: int | None = None, jobs: int | None = None) -> BuildResult:
    """Compute and write one output. On a CPU every tensor of two or more dimensions whose
    computation allows it is split into blocks of rows that stay in the processor's cache,
    computed by `jobs` workers (forked processes with the NumPy backend, threads
    otherwise); on an accelerator tensors are split only to fit `max_memory`.
    Whole-tensor statistics come from passes over the blocks first. The result does not
    depend on the split or the number of workers."""
    t0 = time.perf_counter()
    _tune_allocator()
    decl = [(t.name, t.shape, t.dtype) for t in lo.tensors]
    meta = {"mergec_version": __version__}
    on_cpu = str(getattr(backend, "device", "cpu")).startswith("cpu")
    budget = block_budget(max_memory) if on_cpu else max_memory
    workers = (jobs or default_jobs()) if on_cpu else 1

    def chunks_of(node: Node):
        n = node.shape[0] if node.shape else 1
        row_bytes = max(1, node.numel // n) * 32  # the node's inputs and temporaries
        k = n if budget is None else max(1, min(n, budget // row_bytes))
        split = k < n and node_chunkable(node) and not any(
            m.op == "merge" and _needs_pass(m, True) for m in topo(node))
        for rows in (_blocks(n, k) if split else [None]):
            yield _host(backend, evaluate(node, checked, backend, rows=rows,
                                          for_kernel=True))

    stats = compute_model_stats(lo, chunks_of)
    pool = _process_pool(workers) if workers > 1 and _can_fork(backend, checked) else None
    if pool is None and workers > 1:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="mergec")
    try:
        path = _write_output(lo, checked, target, backend, decl, meta, stats, pool, budget,
                             force=force, shard_size=shard_size, progress=progress,
                             workers=workers)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    done_bytes = sum(t.node.numel * _itemsize(t.dtype) for t in lo.tensors)
    return BuildResult(lo.output.name, path, len(lo.tensors), done_bytes,
                       time.perf_counter() - t0)


# ------------------------------------------------------------------ worker processes
#
# numpy runs a short operation on a block faster than two threads can pass Python's global
# lock back and forth, and some conversions (bfloat16 through ml_dtypes) hold the lock
# throughout; so on a CPU with the NumPy backend the tensors are shared out to forked
# worker processes instead. They inherit the compiled program, the open checkpoints and
# the writer's shard files, compute whole tensors (block after block, as above) and write
# them at their offsets; the parent records what they wrote and reports progress.

_FORKED: dict = {}


def _can_fork(backend, checked) -> bool:
    import multiprocessing
    import os

    import sys

    if getattr(backend, "name", "") != "reference" or os.name != "posix":
        return False
    # torch and jax run thread pools that do not survive a fork
    if any(m in sys.modules for m in ("torch", "jax")):
        return False
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    # an input still to be downloaded is fetched once, by this process
    return not any(getattr(source_of(checked, n), "remote", False) for n in checked.inputs)


def _forked_tensor(i: int) -> None:
    st = _FORKED
    write_tensor(st["lo"].tensors[i], st["checked"], st["backend"], st["writer"],
                 st["stats"], None, st["budget"])


def _process_pool(workers: int) -> ProcessPoolExecutor | None:
    """A pool of `workers` forked processes (started with the first task, so they inherit
    everything set up until then), or None where this system cannot make one (no fork,
    no POSIX semaphores): the build then uses threads."""
    import multiprocessing

    try:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    except (OSError, ImportError, NotImplementedError, ValueError):
        return None


def _heavy(t: OutTensor) -> bool:
    """A tensor computed whole that needs more than HEAVY_BYTES: computed by the build
    process itself, one at a time, so that memory does not grow with the workers."""
    from mergec.plan import tensor_peak

    return len(t.shape) >= 1 and not chunkable(t) and t.node.op not in ("copy", "convert") \
        and tensor_peak(t) > HEAVY_BYTES


#: see :func:`_heavy`
HEAVY_BYTES = 256 << 20


def _in_processes(lo, checked, backend, writer, stats, budget, pool, workers,
                  finished, heavy: set[int]) -> None:
    from concurrent.futures import as_completed

    _FORKED.update(lo=lo, checked=checked, backend=backend, writer=writer, stats=stats,
                   budget=budget)
    # largest first, so that no worker is left with a big tensor at the end
    order = sorted(range(len(lo.tensors)), key=lambda i: -lo.tensors[i].node.numel)
    light = [i for i in order if i not in heavy]

    def collect(f) -> None:
        f.result()  # a worker's error is raised here
        t = futures.pop(f)
        writer.note_written(t.name)
        finished(t)
        for i in ahead:
            read_ahead(lo.tensors[i], checked)
            break

    try:
        futures = {pool.submit(_forked_tensor, i): lo.tensors[i] for i in light}
        ahead = iter(light)  # the system reads ahead the tensors the workers take next
        for i in list(zip(range(2 * workers), ahead)):
            read_ahead(lo.tensors[i[1]], checked)
        for i in order:  # meanwhile, this process computes the heavy ones, one at a time
            if i in heavy:
                write_tensor(lo.tensors[i], checked, backend, writer, stats, None, budget)
                finished(lo.tensors[i])
                for f in [f for f in futures if f.done()]:
                    collect(f)
        for f in as_completed(list(futures)):
            collect(f)
    except BaseException:
        for p in list(getattr(pool, "_processes", {}).values()):
            p.terminate()  # stop the others before the writer removes its files
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _FORKED.clear()


def read_ahead(t: OutTensor, checked: CheckedProgram) -> None:
    """Let the operating system start reading the input tensors `t` needs, so that they
    are in its cache when a worker gets to them."""
    for n in topo(t.node):
        if n.op in ("load", "copy", "convert"):
            advise = getattr(source_of(checked, n.attr("source")), "advise", None)
            if advise is not None:
                advise(n.attr("tensor"))


def _blocks(n_rows: int, k: int):
    return [(r0, min(r0 + k, n_rows)) for r0 in range(0, n_rows, k)]


def _copy_rows(t: OutTensor, rows, checked, writer) -> None:
    root = t.node
    src = source_of(checked, root.attr("source"))
    a = src.read_rows(root.attr("tensor"), *rows)
    writer.write_rows(t.name, rows[0], a if root.op == "copy" else convert(a, t.dtype))


def _write_whole_copy(t: OutTensor, checked, writer) -> None:
    root = t.node
    src = source_of(checked, root.attr("source"))
    name = root.attr("tensor")
    if root.op == "convert":
        writer.write(t.name, convert(src.read(name), t.dtype))
        return
    read_raw = getattr(src, "read_raw", None)
    if read_raw is None or getattr(src, "format", "") == "bin":  # no raw bytes in a pickle
        writer.write(t.name, src.read(name))
    else:
        writer.write_raw(t.name, read_raw(name))


def write_tensor(t: OutTensor, checked: CheckedProgram, backend, writer, stats, pool,
                 budget: int | None) -> None:
    """Compute and write one output tensor, in blocks of rows where it can be split."""
    root = t.node
    k = rows_per_chunk(t, budget)
    n = t.shape[0] if t.shape else 1
    split = bool(t.shape) and k < n and chunkable(t)
    blocks = Blocks(_blocks(n, k) if split else [None], pool)
    if root.op in ("copy", "convert"):
        if not split:
            _write_whole_copy(t, checked, writer)
        else:
            blocks.map(lambda b, rows: _copy_rows(t, rows, checked, writer))
        return
    value = root.args[0]
    ctx = tensor_stats(value, checked, backend, stats, blocks)

    def one(b, rows):
        v = evaluate(value, checked, backend, stats, rows=rows, ctx=ctx, block=b,
                     given=_given(ctx, value, b, backend))
        out = backend.to_numpy(backend.to_float32(v), t.dtype)
        if rows is None:
            writer.write(t.name, out)
        else:
            writer.write_rows(t.name, rows[0], out)

    blocks.map(one)


def _write_output(lo, checked, target, backend, decl, meta, stats, pool, budget, *, force,
                  shard_size, progress, workers: int = 1) -> Path:
    """Write every tensor, then the non-weight files. With a pool of workers, tensors are
    computed side by side, one per worker, block after block; a tensor much larger than the
    rest is computed by all workers at once, a block each (so no worker waits long at the
    end). Writes go to precomputed offsets, so their order does not matter."""
    import threading

    out = lo.output
    done = {"tensors": 0, "bytes": 0}
    lock = threading.Lock()

    def finished(t: OutTensor) -> None:
        with lock:
            done["tensors"] += 1
            done["bytes"] += t.node.numel * _itemsize(t.dtype)
            if progress:
                progress(out.name, done["tensors"], done["bytes"])

    total = sum(t.node.numel for t in lo.tensors)
    big = total // (4 * workers)
    heavy = {i for i, t in enumerate(lo.tensors) if _heavy(t)}
    with OutputWriter(target, decl, shard_size=shard_size, force=force,
                      metadata=meta) as writer:
        pending: list[Future] = []
        if isinstance(pool, ProcessPoolExecutor):
            _in_processes(lo, checked, backend, writer, stats, budget, pool, workers,
                          finished, heavy)
            lo_tensors = []
        else:
            lo_tensors = lo.tensors

        def task(t: OutTensor) -> None:
            write_tensor(t, checked, backend, writer, stats, None, budget)
            finished(t)

        try:
            for i, t in enumerate(lo_tensors):
                for nxt in lo_tensors[i + 1:i + 3]:
                    read_ahead(nxt, checked)
                if pool is None or t.node.numel > big or i in heavy:
                    write_tensor(t, checked, backend, writer, stats, pool, budget)
                    finished(t)
                else:
                    pending.append(pool.submit(task, t))
                for f in [f for f in pending if f.done()]:
                    f.result()  # raises a worker's error now
            for f in pending:
                f.result()
        except BaseException:
            for f in pending:  # stop the others before the writer removes its files
                f.cancel()
            for f in pending:
                if not f.cancelled():
                    try:
                        f.result()
                    except BaseException:
                        pass
            raise
        cfg = output_config(lo)  # also computed at compile time, so it cannot fail here
        if cfg is not None:
            writer.add_file("config.json", json.dumps(cfg, indent=2) + "\n")
        if out.tokenizer_from is not None and out.tokenizer_from.checkpoint is not None:
            for f in hf_files.carry_over_files(out.tokenizer_from.checkpoint.root):
                writer.copy_file(f.name, f)
        writer.add_file("README.md", model_card(lo, checked))
        return writer.commit()


def output_config(lo: LoweredOutput) -> dict | None:
    from mergec.check.output_config import derive_output_config

    return derive_output_config(lo.output)


def _itemsize(dtype: str) -> int:
    from mergec.io.dtypes import itemsize

    return itemsize(dtype)


def model_card(lo: LoweredOutput, checked: CheckedProgram) -> str:
    inputs = []
    bases = []
    from mergec.check.walk import walk

    # the inputs the output's expression names (a zero weight is still provenance)
    used = {getattr(x, "name", None) for x in walk(lo.output.expr)}
    for o in (lo.output.config_from, lo.output.tokenizer_from):
        if o is not None:
            used.add(o.name)
    for name in [n for n in checked.inputs if n in used]:
        ck = source_of(checked, name)
        ref = getattr(ck, "ref", None)
        src = ref.raw if ref is not None else str(ck.root)
        if ref is not None and not ref.local:
            bases.append(ref.repo_id)
        inputs.append({"name": name, "source": src, "fingerprint": ck.content_fingerprint()})
    return hf_files.model_card(
        output_name=lo.output.name, recipe_text=checked.text,
        recipe_path=Path(checked.file).name, inputs=inputs, mergec_version=__version__,
        seed=checked.settings.seed, base_models=bases, params=checked.params,
        overridden=tuple(checked.overrides))
