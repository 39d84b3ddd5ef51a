"""The interpreter: one step of the schedule, on a backend, into the writer.

A step is one output tensor (:class:`~mergec.runtime.schedule.TensorStep`): a raw copy, a
dtype conversion, or a computation — the passes the step names first
(:mod:`mergec.runtime.prepass`), then its program of IR nodes for each block of rows.
Values are float32 on the backend; a weighted sum that is the tensor's value is
accumulated in float64 and rounded once to the storage dtype. Linear chains arrive folded
into one weighted sum by the IR passes; the interpreter evaluates nodes as they are.
"""

from __future__ import annotations

import numpy as np

from mergec.check.program import CheckedProgram
from mergec.io.dtypes import numpy_dtype
from mergec.ir.linear import linear_coeffs
from mergec.ir.lower import OutTensor
from mergec.io.errors import CheckpointError
from mergec.ir.nodes import Node, topo
from mergec.methods import REGISTRY, run_method
from mergec.runtime.prepass import (Blocks, TensorStats, block_masks, kept_values,
                                    ranked_masks, resolve_stats, tensor_stats)
from mergec.runtime.schedule import TensorStep, describe, program_nodes


def lowrank(backend, b, a, scale: float, transpose: bool):
    """scale * (b @ a), transposed when `transpose`: the dense delta of a LoRA pair
    (b: [out, r], a: [r, in])."""
    d = backend.mul(backend.matmul(b, a), float(scale))
    return backend.transpose(d) if transpose else d


def convert(a, dtype: str):
    """A stored array in another storage dtype, through float32 like every computed tensor
    (bfloat16 and float16 widen to float32 exactly, so this is one rounding)."""
    return a.astype(np.float32).astype(numpy_dtype(dtype))


def evaluate(root: Node, checked: CheckedProgram, backend, stats: dict | None = None,
             rows: tuple[int, int] | None = None, ctx: TensorStats | None = None,
             block: int = 0, args_of_root: bool = False, given: dict | None = None,
             for_kernel: bool = False, seen: list | None = None):
    """The backend value of `root` (or, with `args_of_root`, the values of its arguments),
    computing its program (:func:`~mergec.runtime.schedule.program_nodes`) in order and
    freeing every value after its last use. `rows` selects a block of rows (block number
    `block`); `ctx` holds what the passes over the whole tensor found; `given` holds values
    the passes kept for this block (by node); `seen` collects the nodes evaluated.

    A weighted sum is accumulated in float64 when it is the tensor's value (rounded once
    to the storage dtype), in float32 when a kernel reads it (`for_kernel`, or an
    argument of a merge), which rounds it to float32 anyway."""
    given = given or {}
    order = program_nodes(root, frozenset(given))
    if args_of_root:
        order = order[:-1]
    if seen is not None:
        seen += [describe(n, frozenset(given)) for n in order]
    last_use: dict[int, int] = {}
    for i, n in enumerate(order):
        if n not in given:
            for a in n.args:
                last_use[id(a)] = i
    if args_of_root:
        for a in root.args:
            last_use[id(a)] = len(order)
    wide = not (for_kernel or args_of_root)
    values: dict[int, object] = {}
    for i, n in enumerate(order):
        if n in given:
            v = given[n]
        elif n.op == "wsum":
            terms = list(zip(n.args, n.attr("coeffs")))
            if not terms:
                v = backend.zeros(_shape(n, rows))
            elif len(terms) == 1 and terms[0][1] == 1.0:
                v = values[id(terms[0][0])]
            else:
                v = _sum(backend, [(values[id(x)], c) for x, c in terms], wide and n is root)
        elif n.op == "load":
            src = checked.source(n.attr("source"))
            name = n.attr("tensor")
            v = backend.asarray(src.read(name) if rows is None else src.read_rows(name, *rows))
        elif n.op == "merge":
            v = merge_call(n, [values[id(a)] for a in n.args], backend, stats, rows, ctx, block)
        elif n.op == "lowrank":
            b, a = (backend.to_float32(values[id(x)]) for x in n.args)
            v = lowrank(backend, b, a, n.attr("scale"), n.attr("transpose"))
        elif n.op == "zeros":
            v = backend.zeros(_shape(n, rows))
        else:  # pragma: no cover - roots (cast, copy, convert) are handled by the caller
            raise AssertionError(n.op)
        values[id(n)] = v
        if n not in given:
            for a in n.args:
                if last_use.get(id(a)) == i:
                    values.pop(id(a), None)
    if args_of_root:
        return [values[id(a)] for a in root.args]
    return values[id(order[-1])]


def _shape(n: Node, rows) -> tuple[int, ...]:
    return n.shape if rows is None else (rows[1] - rows[0],) + n.shape[1:]


def _sum(backend, terms, wide: bool):
    """A weighted sum of float32 values: accumulated in float64 when it is the tensor's
    value (`wide`), else in float32."""
    return backend.wsum64(terms) if wide else backend.wsum(terms)


def merge_call(n: Node, args: list, backend, stats, rows, ctx, block: int):
    """One merge node: its method on the arguments, with what the passes found."""
    method = n.attr("method")
    params = dict(n.attr("params"))
    if stats is not None:
        params = {k: resolve_stats(v, stats) for k, v in params.items()}
    found = ctx.get(n) if ctx is not None else None
    if found is not None and "coeffs" in found:  # slerp & co: the sum its inner products give
        return backend.wsum([(backend.to_float32(a), c)
                             for a, c in zip(args, found["coeffs"])])
    if REGISTRY[method].traits.masks == "ranked":  # per row: only a split tensor needs them
        if rows is not None:
            params.update(ranked_masks(n, params, args, rows, backend, found, block))
    elif REGISTRY[method].traits.masks and (rows is not None or (found and "masks" in found)):
        params["masks"] = block_masks(n, params, args, rows, backend, found, block)
    if found is not None and "l1_scales" in found:
        params["l1_scales"] = found["l1_scales"]
    coeffs = linear_coeffs(method, params, len(args))
    if coeffs is not None:  # a linear method whose weights were placeholders until now
        return backend.wsum(list(zip(args, coeffs)))
    return run_method(backend, method, [backend.to_float32(x) for x in args], params,
                      n.attr("seed"))


def _converted(t: OutTensor, a, checked, rows=None):
    """`a` converted to the output's dtype, with E421 where that overflows it."""
    out = convert(a, t.dtype)
    if not checked.settings.allow_nonfinite and not all_finite(out) and all_finite(a):
        import ml_dtypes  # noqa: PLC0415 - only on this error path

        bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        top = float(ml_dtypes.finfo(out.dtype).max)
        where = f" (rows {rows[0]} to {rows[1] - 1})" if rows is not None else ""
        raise CheckpointError(
            "E421", f"tensor `{t.name}`{where}: {bad:,} value{'s' if bad != 1 else ''} "
            f"beyond the range of {t.dtype} (largest {top:g}) would be written as infinity",
            _WIDER_HELP)
    return out


def _copy_rows(t: OutTensor, rows, checked, writer) -> None:
    root = t.node
    src = checked.source(root.attr("source"))
    a = src.read_rows(root.attr("tensor"), *rows)
    writer.write_rows(t.name, rows[0], a if root.op == "copy" else
                      _converted(t, a, checked, rows))


def _write_whole_copy(t: OutTensor, checked, writer) -> None:
    root = t.node
    src = checked.source(root.attr("source"))
    name = root.attr("tensor")
    if root.op == "convert":
        writer.write(t.name, _converted(t, src.read(name), checked))
        return
    read_raw = getattr(src, "read_raw", None)
    if read_raw is None or getattr(src, "format", "") == "bin":  # no raw bytes in a pickle
        writer.write(t.name, src.read(name))
    else:
        writer.write_raw(t.name, read_raw(name))


def run_step(t: OutTensor, step: TensorStep, checked: CheckedProgram, backend, writer,
             stats, pool) -> dict:
    """Compute and write one output tensor as `step` says (its blocks of rows, on `pool`'s
    threads when given). Returns what it did, in the form of the step (for a trace)."""
    blocks = Blocks([tuple(r) for r in step.rows] or [None], pool)
    done = {"name": t.name, "kind": step.kind, "rows": step.rows, "passes": [],
            "program": []}
    root = t.node
    if root.op in ("copy", "convert"):
        done["kind"] = root.op
        if not step.rows:
            _write_whole_copy(t, checked, writer)
        else:
            blocks.map(lambda b, rows: _copy_rows(t, rows, checked, writer))
        return done
    value = root.args[0]

    def args_of(call, b, rows, ctx):
        return evaluate(call, checked, backend, stats, rows=rows, ctx=ctx, block=b,
                        args_of_root=True)

    allow_nonfinite = checked.settings.allow_nonfinite
    ctx = tensor_stats(value, backend, stats, blocks, args_of)
    done["passes"] = list(ctx.passes) if ctx is not None else []

    def one(b, rows):
        seen = done["program"] if b == 0 else None
        v = evaluate(value, checked, backend, stats, rows=rows, ctx=ctx, block=b,
                     given=kept_values(ctx, value, b), seen=seen)
        out = backend.to_numpy(backend.to_float32(v), t.dtype)
        if not allow_nonfinite and not all_finite(out):
            nonfinite_problem(t, value, v, out, checked, backend, rows)
        if rows is None:
            writer.write(t.name, out)
        else:
            writer.write_rows(t.name, rows[0], out)

    blocks.map(one)
    return done


_WIDER_HELP = ("store the output in a wider dtype (`dtype = \"bfloat16\"` or `\"float32\"` "
               "in its options), or `set allow_nonfinite = true` to write them anyway")


#: storage dtypes whose NaN and infinities are the patterns with every exponent bit set:
#: (the same-sized unsigned type, the exponent mask); tested on the bits, which is several
#: times faster than ``isfinite`` through ml_dtypes
_EXPONENT_MASKS = {"bfloat16": (np.uint16, 0x7F80), "float16": (np.uint16, 0x7C00)}


def all_finite(a: np.ndarray) -> bool:
    """Whether a computed tensor (in its storage dtype) holds no NaN or infinity."""
    if a.dtype.kind in "iub":
        return True
    bits = _EXPONENT_MASKS.get(a.dtype.name)
    if bits is not None and a.flags.c_contiguous:
        u = a.view(bits[0])
        return not bool(np.any(np.bitwise_and(u, bits[1]) == bits[1]))
    return bool(np.isfinite(a).all())


def nonfinite_problem(t: OutTensor, value: Node, v, out: np.ndarray, checked: CheckedProgram,
                      backend, rows) -> None:
    """Raise E421 for a computed tensor with NaN or infinite values, unless an input it
    reads has some too (then they are the input's, carried through). Runs only when the
    tensor has such values, so it may read its inputs again."""
    for n in topo(value):
        if n.op != "load":
            continue
        src = checked.source(n.attr("source"))
        name = n.attr("tensor")
        a = src.read(name) if rows is None or len(n.shape) == 0 else \
            src.read_rows(name, *rows)
        if not all_finite(np.asarray(a, dtype=np.float32)):
            return
    bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    wide = backend.to_numpy(backend.to_float32(v), "float32")
    where = f" (rows {rows[0]} to {rows[1] - 1})" if rows is not None else ""
    if all_finite(wide):
        import ml_dtypes  # noqa: PLC0415 - only on this error path

        top = float(ml_dtypes.finfo(out.dtype).max)  # numpy's dtypes and bfloat16, float8
        raise CheckpointError(
            "E421", f"tensor `{t.name}`{where}: {bad:,} value{'s' if bad != 1 else ''} "
            f"beyond the range of {t.dtype} (largest {top:g}) would be written as infinity",
            _WIDER_HELP)
    raise CheckpointError(
        "E421", f"tensor `{t.name}`{where}: the merge produced {bad:,} NaN or infinite "
        f"value{'s' if bad != 1 else ''}, and no input has any",
        "a method divided by zero or overflowed (weights of a huge magnitude, a slerp "
        "between a zero and a non-zero tensor, ...): check the weights; `set "
        "allow_nonfinite = true` writes such values anyway")
