"""Run lowered outputs on a backend and write them.

For each output: a writer is opened beside the target (nothing appears at the target until
the whole checkpoint is written), then every tensor is computed from its DAG — loads read
one input tensor, values are float32 on the backend, the root casts once to the storage
dtype — and written. A tensor that is an input tensor with its stored dtype is copied as
raw bytes.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
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
from mergec.ops.linear import LINEAR_METHODS, linear_coeffs
from mergec.plan import MASKED_METHODS, rows_per_chunk
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


def evaluate(root: Node, checked: CheckedProgram, backend, stats: dict | None = None,
             fetched: dict | None = None, rows: tuple[int, int] | None = None,
             trims: dict | None = None):
    """The backend value of `root`, computing its DAG in topological order and freeing
    every value after its last use. Weighted sums (and the linear methods, which are
    weighted sums) are accumulated in float64 and stay float64 while they feed other
    weighted sums; everything else is float32."""
    order = topo(root)
    last_use: dict[int, int] = {}
    # a weighted sum read only by non-linear kernels is rounded to float32 at once anyway:
    # compute it in float32 (half the memory, no widening); the passes never fold across
    # such kernels, so this is the same with and without them
    wide: set[int] = {id(root)}
    for i, n in enumerate(order):
        for a in n.args:
            last_use[id(a)] = i
            if n.op == "wsum" or n.op == "cast" or (
                    n.op == "merge" and n.attr("method") in LINEAR_METHODS):
                wide.add(id(a))
    values: dict[int, object] = {}
    for i, n in enumerate(order):
        if n.op == "load":
            key = (n.attr("source"), n.attr("tensor"))
            data = fetched.pop(key, None) if fetched is not None else None
            if data is None:
                src = source_of(checked, key[0])
                data = src.read(key[1]) if rows is None else src.read_rows(key[1], *rows)
            v = backend.asarray(data)
        elif n.op == "wsum":
            terms = [(values[id(a)], c) for a, c in zip(n.args, n.attr("coeffs"))]
            v = _sum(backend, terms, id(n) in wide)
        elif n.op == "merge":
            params = dict(n.attr("params"))
            if stats is not None:
                params = {k: resolve_stats(v, stats) for k, v in params.items()}
            args = [values[id(a)] for a in n.args]
            if rows is not None and n.attr("method") in MASKED_METHODS:
                params["masks"] = _block_masks(n, params, args, rows, backend, trims)
            coeffs = linear_coeffs(n.attr("method"), params, len(args))
            if coeffs is not None:  # a linear method: the same sum the fold pass writes
                v = _sum(backend, list(zip(args, coeffs)), id(n) in wide)
            else:
                v = backend.method(n.attr("method"), [backend.to_float32(x) for x in args],
                                   params, n.attr("seed"))
        elif n.op == "lowrank":
            b, a = (backend.to_float32(values[id(x)]) for x in n.args)
            v = backend.lowrank(b, a, n.attr("scale"), n.attr("transpose"))
        elif n.op == "zeros":
            v = backend.zeros(n.shape if rows is None else (rows[1] - rows[0],) + n.shape[1:])
        else:  # pragma: no cover - roots (cast, copy, convert) are handled by the caller
            raise AssertionError(n.op)
        values[id(n)] = v
        for a in n.args:
            if last_use.get(id(a)) == i:
                values.pop(id(a), None)
    return values[id(order[-1])]


def _is_wide(x) -> bool:
    return "64" in str(getattr(x, "dtype", ""))


def _sum(backend, terms, wide: bool):
    """A weighted sum: float64 when it feeds other sums or the output, else float32 (from
    float64 only when a term already is)."""
    if wide:
        return backend.weighted_sum64(terms)
    if any(_is_wide(x) for x, _ in terms):
        return backend.to_float32(backend.weighted_sum64(terms))
    return backend.weighted_sum(terms)


def tensor_bytes(t: OutTensor, checked: CheckedProgram, backend, stats=None,
                 fetched: dict | None = None):
    """The stored form of one output tensor: raw bytes (a copy) or a numpy array."""
    root = t.node
    if fetched and root.op in ("copy", "convert"):
        data = fetched.pop((root.attr("source"), root.attr("tensor")), None)
        if data is not None:
            return data if root.op == "copy" else convert(data, t.dtype)
    if root.op in ("copy", "convert"):
        src = source_of(checked, root.attr("source"))
        name = root.attr("tensor")
        if root.op == "copy":
            read_raw = getattr(src, "read_raw", None)
            try:
                return read_raw(name) if read_raw is not None else src.read(name)
            except CheckpointError:
                if getattr(src, "format", "") == "bin":  # no raw bytes in a pickle
                    return src.read(name)
                raise
        return convert(src.read(name), t.dtype)
    value = evaluate(root.args[0], checked, backend, stats, fetched)
    return backend.to_numpy(backend.to_float32(value), t.dtype)


class Prefetcher:
    """Reads the inputs of upcoming tensors on a thread while the current one computes,
    so reading and computing overlap. Holds the inputs of `ahead` tensors at most."""

    def __init__(self, checked: CheckedProgram, tensors: list[OutTensor], ahead: int = 1):
        self.checked, self.tensors, self.ahead = checked, tensors, ahead
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mergec-read")
        self.futures: dict[int, Future] = {}

    def _reads(self, t: OutTensor) -> dict:
        root = t.node
        out = {}
        if root.op == "copy":
            src = source_of(self.checked, root.attr("source"))
            if getattr(src, "format", "") != "bin" and hasattr(src, "read_raw"):
                out[(root.attr("source"), root.attr("tensor"))] = src.read_raw(root.attr("tensor"))
            return out
        nodes = [root] if root.op == "convert" else [n for n in topo(root) if n.op == "load"]
        for n in nodes:
            key = (n.attr("source"), n.attr("tensor"))
            if key not in out:
                out[key] = source_of(self.checked, key[0]).read(key[1])
        return out

    def get(self, i: int) -> dict:
        """The inputs of tensor i (read now if they were not read ahead); reads ahead."""
        for j in range(i + 1, min(i + 1 + self.ahead, len(self.tensors))):
            if j not in self.futures:
                self.futures[j] = self.pool.submit(self._reads, self.tensors[j])
        fut = self.futures.pop(i, None)
        return fut.result() if fut is not None else self._reads(self.tensors[i])

    def close(self) -> None:
        for f in self.futures.values():
            f.cancel()
        self.pool.shutdown(wait=True)


def convert(a, dtype: str):
    """A stored array in another storage dtype, through float32 like every computed tensor
    (bfloat16 and float16 widen to float32 exactly, so this is one rounding)."""
    import numpy as np

    from mergec.io.dtypes import numpy_dtype

    return a.astype(np.float32).astype(numpy_dtype(dtype))


def output_config(lo: LoweredOutput) -> dict | None:
    from mergec.check.checker import derive_output_config

    return derive_output_config(lo.output)


def build_output(lo: LoweredOutput, checked: CheckedProgram, target: Path, backend, *,
                 force: bool = False, shard_size: int = 5 * 10**9,
                 progress: ProgressFn | None = None,
                 max_memory: int | None = None) -> BuildResult:
    """Compute and write one output. With `max_memory`, tensors computed entry by entry
    are split into row blocks that fit it, and nothing is read ahead."""
    t0 = time.perf_counter()
    decl = [(t.name, t.shape, t.dtype) for t in lo.tensors]
    meta = {"mergec_version": __version__}
    def chunks_of(node: Node):
        n = node.shape[0] if node.shape else 1
        row_bytes = max(1, node.numel // n) * 32  # the node's inputs and temporaries
        k = n if max_memory is None else max(1, min(n, max_memory // row_bytes))
        for rows in (_blocks(n, k) if node.shape and k < n else [None]):
            yield backend.to_numpy(backend.to_float32(
                evaluate(node, checked, backend, rows=rows)), "float32")

    stats = compute_model_stats(lo, chunks_of)
    prefetch = Prefetcher(checked, lo.tensors) if max_memory is None else None
    try:
        path = _write_output(lo, checked, target, backend, decl, meta, stats, prefetch,
                             force=force, shard_size=shard_size, progress=progress,
                             max_memory=max_memory)
    finally:
        if prefetch is not None:
            prefetch.close()
    done_bytes = sum(t.node.numel * _itemsize(t.dtype) for t in lo.tensors)
    return BuildResult(lo.output.name, path, len(lo.tensors), done_bytes,
                       time.perf_counter() - t0)


def _blocks(n_rows: int, k: int):
    return [(r0, min(r0 + k, n_rows)) for r0 in range(0, n_rows, k)]


def _block_masks(n: Node, params: dict, args, rows, backend, trims) -> tuple:
    """The keep masks of a sparsifying merge for one block of rows."""
    import numpy as np

    from mergec.ops.random import keep_mask_rows

    dens = params["density"]
    if n.attr("method") != "ties":  # DARE: the rows of the masks the whole tensor draws
        return tuple(keep_mask_rows(n.attr("seed"), i, n.shape, d, *rows) if d < 1.0
                     else np.ones((rows[1] - rows[0],) + n.shape[1:], dtype=bool)
                     for i, d in enumerate(dens))
    if params.get("trim") == "model":  # the model-wide threshold applies as it is
        thr = params["thresholds"]
        return tuple(np.abs(backend.to_numpy(backend.to_float32(a), "float32")) >=
                     np.float32(t) for a, t in zip(args, thr))
    masks = []
    for i, a in enumerate(args):
        state = trims[(id(n), i)]
        mag = np.abs(backend.to_numpy(backend.to_float32(a), "float32"))
        if state is None:  # keeps everything
            masks.append(np.ones(mag.shape, dtype=bool))
            continue
        thr, remaining = state
        mask = mag > thr
        if remaining > 0:  # magnitudes equal to the threshold: the lowest indices first
            eq = np.flatnonzero(mag == thr)[:remaining]
            mask.reshape(-1)[eq] = True
            state[1] = remaining - len(eq)
        masks.append(mask)
    return tuple(masks)


def _trim_thresholds(root: Node, blocks, checked, backend, stats) -> dict:
    """Per-tensor TIES thresholds for a tensor computed in blocks: for each input, the
    k-th largest magnitude (two streaming passes) and how many entries equal to it are
    kept, so the blocks keep exactly what the whole tensor would."""
    from mergec.backends.base import keep_count
    from mergec.stats import exact_kth_largest

    trims: dict = {}
    for n in topo(root):
        if n.op != "merge" or n.attr("method") != "ties":
            continue
        params = dict(n.attr("params"))
        if params.get("trim") == "model":
            continue
        for i, (a, d) in enumerate(zip(n.args, params["density"])):
            k = keep_count(d, n.numel)
            if k >= n.numel:
                trims[(id(n), i)] = None
                continue

            def chunks(a=a):
                for rows in blocks:
                    v = evaluate(a, checked, backend, stats, rows=rows)
                    yield backend.to_numpy(backend.to_float32(v), "float32")

            thr, larger = exact_kth_largest(chunks, k)
            trims[(id(n), i)] = [thr, k - larger]
    return trims


def write_in_rows(t: OutTensor, k: int, checked: CheckedProgram, backend, writer,
                  stats: dict | None = None) -> None:
    """Compute and write one tensor k rows at a time: entry-by-entry computations, and
    sparsifying merges once their masks are known."""
    root = t.node
    blocks = _blocks(t.shape[0], k)
    if root.op in ("copy", "convert"):
        src = source_of(checked, root.attr("source"))
        for rows in blocks:
            a = src.read_rows(root.attr("tensor"), *rows)
            writer.write_rows(t.name, rows[0], a if root.op == "copy" else convert(a, t.dtype))
        return
    trims = _trim_thresholds(root.args[0], blocks, checked, backend, stats)
    for rows in blocks:
        v = evaluate(root.args[0], checked, backend, stats, rows=rows, trims=trims)
        writer.write_rows(t.name, rows[0], backend.to_numpy(backend.to_float32(v), t.dtype))


def _write_output(lo, checked, target, backend, decl, meta, stats, prefetch, *, force,
                  shard_size, progress, max_memory=None) -> Path:
    out = lo.output
    done_bytes = 0
    with OutputWriter(target, decl, shard_size=shard_size, force=force,
                      metadata=meta) as writer:
        for i, t in enumerate(lo.tensors):
            k = rows_per_chunk(t, max_memory)
            if t.shape and k < t.shape[0]:
                write_in_rows(t, k, checked, backend, writer, stats)
                done_bytes += t.node.numel * _itemsize(t.dtype)
                if progress:
                    progress(out.name, i + 1, done_bytes)
                continue
            data = tensor_bytes(t, checked, backend, stats,
                                prefetch.get(i) if prefetch is not None else None)
            if isinstance(data, (bytes, bytearray, memoryview)):
                writer.write_raw(t.name, data)
            else:
                writer.write(t.name, data)
            done_bytes += t.node.numel * _itemsize(t.dtype)
            if progress:
                progress(out.name, i + 1, done_bytes)
        cfg = output_config(lo)  # also computed at compile time, so it cannot fail here
        if cfg is not None:
            writer.add_file("config.json", json.dumps(cfg, indent=2) + "\n")
        if out.tokenizer_from is not None and out.tokenizer_from.checkpoint is not None:
            for f in hf_files.carry_over_files(out.tokenizer_from.checkpoint.root):
                writer.copy_file(f.name, f)
        writer.add_file("README.md", model_card(lo, checked))
        return writer.commit()


def _itemsize(dtype: str) -> int:
    from mergec.io.dtypes import itemsize

    return itemsize(dtype)


def model_card(lo: LoweredOutput, checked: CheckedProgram) -> str:
    inputs = []
    bases = []
    from mergec.check.checker import _walk

    # the inputs the output's expression names (a zero weight is still provenance)
    used = {getattr(x, "name", None) for x in _walk(lo.output.expr)}
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
