"""Building one output: its schedule, run step by step into an atomic writer.

The schedule (:func:`mergec.runtime.schedule.schedule`) is made here exactly as
`mergec plan` makes it; the model-wide statistics come first, then every step in its
order — in worker processes (the NumPy backend on a CPU), on threads, or one after the
other — and then the files beside the tensors. Nothing appears at the target until the
whole checkpoint is written and synced. A `trace` hook receives each step as it was run,
in the form of the schedule's steps.
"""

from __future__ import annotations

import tempfile
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mergec import __version__
from mergec.check.program import CheckedProgram
from mergec.io.dtypes import itemsize
from mergec.io.errors import CheckpointError
from mergec.runtime.buffers import check_buffers
from mergec.runtime.output_files import write_files
from mergec.runtime.st_dense import merge_dense
from mergec.io.writer import DEFAULT_SHARD_SIZE, OutputWriter
from mergec.ir.lower import LoweredOutput
from mergec.ir.nodes import Node, topo
from mergec.ops.compiled import kernels as compiled_kernels
from mergec.runtime import parallel
from mergec.runtime.interpreter import evaluate, run_step
from mergec.runtime.prepass import compute_model_stats, host_f32
from mergec.runtime.schedule import (TensorStep, block_budget, dispatch_order, execution,
                                     needs_pass, node_chunkable, row_blocks, schedule)


@dataclass
class BuildResult:
    output: str
    path: Path
    tensors: int
    bytes_written: int
    seconds: float
    recomputed: int | None = None  # tensors computed (the rest copied); None: all of them
    resumed: int = 0  # tensors copied from a killed build's staging folder
    skipped: bool = False  # up to date: nothing written


ProgressFn = Callable[[str, int, int], None]  # (output name, tensors done, bytes done)
TraceFn = Callable[[dict], None]


def build_output(lo: LoweredOutput, checked: CheckedProgram, target: Path, backend, *,
                 force: bool = False, shard_size: int = DEFAULT_SHARD_SIZE,
                 progress: ProgressFn | None = None, max_memory: int | None = None,
                 jobs: int | None = None, trace: TraceFn | None = None,
                 open_writer: Callable | None = None, executor=None,
                 reuse: dict | None = None, keys: tuple[dict, str] | None = None
                 ) -> BuildResult:
    """Compute and write one output. On a CPU every tensor of two or more dimensions whose
    computation allows it is split into blocks of rows that stay in the processor's cache,
    computed by `jobs` workers; on an accelerator tensors are split only to fit
    `max_memory`. The result does not depend on the split or the number of workers.

    Hooks: `open_writer(decl)` returns the writer to use instead of an
    :class:`OutputWriter` at `target` (it then writes the files beside the tensors itself,
    in its `commit`: a sweep's :class:`mergec.runtime.sweep.SweepWriter`); `executor`
    runs the steps instead of this process's workers (its `run(...)`, see
    :mod:`mergec.runtime.ray_executor`). `reuse` (tensor name -> its bytes) copies tensors
    instead of computing them; `keys` ((tensor keys, output key),
    :mod:`mergec.runtime.incremental`) are recorded in the output and in a journal of
    finished tensors while it is written."""
    t0 = time.perf_counter()
    check_buffers(lo, checked)
    parallel.tune_allocator()
    sources = [checked.source(n) for n in checked.inputs]
    ex = execution(getattr(backend, "name", ""), str(getattr(backend, "device", "cpu")),
                   jobs, sources)
    steps = schedule(lo, max_memory=max_memory, on_cpu=ex.on_cpu, workers=ex.workers,
                     pool=ex.pool)
    budget = block_budget(max_memory) if ex.on_cpu else max_memory
    # a random merge of large tensors: the compiled kernels are loaded now (the row blocks
    # that draw the masks are each too small to load them, and forked workers inherit them)
    compiled_kernels(_largest_draw(lo))
    stats = compute_model_stats(lo, lambda node: _chunks_of(node, checked, backend, budget))
    if trace is not None and stats:
        trace({"model_stats": [repr(k) for k in stats]})
    pool = parallel.process_pool(ex.workers) if ex.pool == "processes" and \
        executor is None else None
    if pool is None and ex.workers > 1 and executor is None:
        pool = ThreadPoolExecutor(ex.workers, thread_name_prefix="mergec")
    try:
        path = _write_output(lo, checked, target, backend, steps, stats, pool, ex.workers,
                             force=force, shard_size=shard_size, progress=progress,
                             trace=trace, open_writer=open_writer, executor=executor,
                             reuse=reuse or {}, keys=keys)
    except CheckpointError as e:
        if e.code == "E421":  # raised by a step, which does not know the output's name
            raise CheckpointError(e.code, f"output `{lo.output.name}`, {e.message}",
                                  e.help) from None
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    done_bytes = sum(t.node.numel * itemsize(t.dtype) for t in lo.tensors)
    return BuildResult(lo.output.name, path, len(lo.tensors), done_bytes,
                       time.perf_counter() - t0,
                       recomputed=len(lo.tensors) - len(reuse or {}) if keys else None)


def _largest_draw(lo: LoweredOutput) -> int:
    """Values in the largest tensor of a random merge (DARE's and DELLA's draws, DELLA's
    ranks) in the output, 0 if none: the bulk of the compiled kernels' work."""
    return max((n.numel for t in lo.tensors for n in topo(t.node)
                if n.op == "merge" and n.attr("seed") is not None), default=0)


def _chunks_of(node: Node, checked, backend, budget):
    """A node's value as float32 numpy arrays, in blocks of rows where it can be split
    (for the model-wide statistics)."""
    n = node.shape[0] if node.shape else 1
    row_bytes = max(1, node.numel // n) * 32  # the node's inputs and temporaries
    k = n if budget is None else max(1, min(n, budget // row_bytes))
    split = k < n and node_chunkable(node) and not any(
        m.op == "merge" and needs_pass(m, True) for m in topo(node))
    for rows in (row_blocks(n, k) if split else [None]):
        yield host_f32(backend, evaluate(node, checked, backend, rows=rows, for_kernel=True))


def _write_output(lo, checked, target, backend, steps: list[TensorStep], stats, pool,
                  workers: int, *, force, shard_size, progress, trace, open_writer=None,
                  executor=None, reuse=None, keys=None) -> Path:
    """Run every step, then write the files beside the tensors. Writes go to
    precomputed offsets, so the order in which steps finish does not matter. The tensors
    of `reuse` are copied first, and their steps not run."""
    from mergec.runtime.incremental import KEYS_FILE, Journal, keys_document

    out = lo.output
    order = dispatch_order(lo)
    tensors = [lo.tensors[i] for i in order]
    if reuse:
        kept = [i for i, t in enumerate(tensors) if t.name not in reuse]
        tensors, steps = [tensors[i] for i in kept], [steps[i] for i in kept]
    done = {"tensors": 0, "bytes": 0}
    lock = threading.Lock()
    journal: list = [None]

    def finished(i: int, record: dict) -> None:
        t, step = tensors[i], steps[i]
        with lock:
            if journal[0] is not None:
                journal[0].done(t.name)
            done["tensors"] += 1
            done["bytes"] += t.node.numel * itemsize(t.dtype)
            if trace is not None:
                trace({**record, "runs_in": step.runs_in})
            if progress:
                progress(out.name, done["tensors"], done["bytes"])

    decl = [(t.name, t.shape, t.dtype) for t in lo.tensors]
    if open_writer is not None:
        opened = open_writer(decl)
    else:
        opened = OutputWriter(target, decl, shard_size=shard_size, force=force,
                              metadata={"mergec_version": __version__})
    with opened as writer:
        if keys is not None:
            journal[0] = Journal(writer.temp_dir, keys[0])
        for t in (t for t in lo.tensors if t.name in (reuse or {})):  # copies, first
            writer.write_raw(t.name, reuse[t.name]())
            if journal[0] is not None:
                journal[0].done(t.name)
            done["tensors"] += 1
            done["bytes"] += t.node.numel * itemsize(t.dtype)
            if progress:
                progress(out.name, done["tensors"], done["bytes"])

        def run(i: int, blocks_pool=None) -> dict:
            return run_step(tensors[i], steps[i], checked, backend, writer, stats, blocks_pool)

        if executor is not None:
            executor.run(tensors, steps, checked, writer, stats, finished, backend)
        elif isinstance(pool, ProcessPoolExecutor):
            _in_processes(steps, tensors, checked, writer, pool, workers, run, finished)
        else:
            _in_threads(steps, tensors, checked, pool, run, finished)
        if open_writer is None:
            with tempfile.TemporaryDirectory(prefix="mergec-dense-") as tmp:
                write_files(writer, lo, checked, merge_dense(lo, checked, backend, Path(tmp)))
        if keys is not None:
            journal[0].close()
            writer.add_file(KEYS_FILE, keys_document(*keys))
        return writer.commit()


def _in_processes(steps, tensors, checked, writer, pool, workers, run, finished) -> None:
    """Worker steps in forked processes; meanwhile this process runs the heavy ones, one
    at a time, so that memory does not grow with the workers."""
    parallel.share(run=run)
    light = [i for i, s in enumerate(steps) if s.runs_in == "worker"]

    def collect(f) -> None:
        record = f.result()  # a worker's error is raised here
        i = futures.pop(f)
        writer.note_written(tensors[i].name)
        finished(i, record)
        for j in ahead:
            parallel.read_ahead(tensors[j].node, checked.source)
            break

    futures: dict[Future, int] = {}
    try:
        futures.update({pool.submit(parallel.forked_step, i): i for i in light})
        ahead = iter(light)  # the system reads ahead the tensors the workers take next
        for _, j in zip(range(2 * workers), ahead):
            parallel.read_ahead(tensors[j].node, checked.source)
        for i, s in enumerate(steps):
            if s.runs_in == "main":
                finished(i, run(i))
                for f in [f for f in futures if f.done()]:
                    collect(f)
        for f in as_completed(list(futures)):
            collect(f)
    except BaseException:
        parallel.stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        parallel.forget()


def _in_threads(steps, tensors, checked, pool, run, finished) -> None:
    """Worker steps as tasks on the threads; "main" steps run here, their blocks spread
    over the threads. Without a pool, every step runs here in order."""
    pending: list[tuple[Future, int]] = []

    def task(i: int) -> None:
        finished(i, run(i))

    try:
        for i, s in enumerate(steps):
            for j in range(i + 1, min(i + 3, len(steps))):
                parallel.read_ahead(tensors[j].node, checked.source)
            if pool is None or s.runs_in == "main":
                finished(i, run(i, pool))
            else:
                pending.append((pool.submit(task, i), i))
            for f, _ in [p for p in pending if p[0].done()]:
                f.result()  # raises a worker's error now
        for f, _ in pending:
            f.result()
    except BaseException:
        for f, _ in pending:  # stop the others before the writer removes its files
            f.cancel()
        for f, _ in pending:
            if not f.cancelled():
                try:
                    f.result()
                except BaseException:
                    pass
        raise
