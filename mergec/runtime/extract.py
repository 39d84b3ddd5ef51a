"""Writing a `lowrank(...)` output: a delta as a PEFT LoRA adapter.

For every factored module (a 2-D weight `M.weight` of the delta, [out, in]) the delta is
computed as any tensor of a merge would be, then decomposed on the build's backend,
`delta = U S V^T`, and truncated to rank r:

    lora_B = U[:, :r] S[:r]^(1/2)      [out, r]
    lora_A = S[:r]^(1/2) V^T[:r]       [r, in]

r is the recipe's `rank` (at most min(out, in)) or, with `energy=e`, the smallest rank whose
singular values hold a share e of the squared Frobenius norm. The relative error of the
truncation is the SVD tail, sqrt(sum_{i>=r} s_i^2 / sum_i s_i^2) (Eckart-Young); it is what
the build reports. A module whose delta is zero is left out.

PEFT scales each pair by lora_alpha / r; the config sets lora_alpha = r for the most common
rank, and `rank_pattern` / `alpha_pattern` give the others their own r = alpha, so every
scale is 1 and B @ A is the truncated delta itself. The other tensors of the delta
(embeddings, norms) are written whole, as `base + delta`, under PEFT's `modules_to_save`
when they changed; all tensors of such a module are written, so PEFT's copy of the module
is complete.

Under a memory limit (`--max-memory`, `set max_memory`) a module whose SVD would not fit is
decomposed through a Gram matrix instead, never holding the delta whole: its rows are
computed a block at a time (as a build computes any tensor in blocks), the smaller Gram
matrix G (X^T X over the columns, or X X^T over the rows, summed block by block in float64)
is diagonalized, G = W diag(s^2) W^T, and the other singular vectors come from one more pass
over the blocks (U = X V / s, or V = X^T U / s). Singular values below about 1e-8 of the
largest are lost to the squaring, far below what a float32 adapter can hold. A module whose
computation cannot be split, or whose Gram matrix alone exceeds the limit, is decomposed
whole (W353 says so).

The plan (`plan_rows`) is made from shapes alone: the rank each module gets with `rank=r`,
and the bound sqrt(1 - r/min(out, in)) on its relative error (the top r of k singular values
hold at least r/k of the squared norm); with `energy=e` the bound is sqrt(1 - e) and the
rank is found by the build.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mergec import __version__
from mergec.check.lowrank import module_of
from mergec.check.program import CheckedProgram, LowRankForm
from mergec.io.dtypes import itemsize
from mergec.ir.lower import LoweredOutput

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."


@dataclass(frozen=True)
class PlannedModule:
    module: str
    shape: tuple[int, int]
    rank: int | None  # None: chosen by the build (energy)
    max_error: float  # the bound on the relative error


def plan_rows(lo: LoweredOutput) -> list[PlannedModule]:
    form: LowRankForm = lo.output.form
    shapes = {t.name: t.shape for t in lo.tensors}
    rows = []
    for name in form.lora:
        out, inn = shapes[name][::-1] if form.fan_in_fan_out else shapes[name]
        k = min(out, inn)
        if form.rank is not None:
            r = min(form.rank, k)
            bound = math.sqrt(max(0.0, 1.0 - r / k))
        else:
            r, bound = None, math.sqrt(max(0.0, 1.0 - form.energy))
        rows.append(PlannedModule(module_of(name), (out, inn), r, bound))
    return rows


def planned_bytes(lo: LoweredOutput) -> tuple[int, int]:
    """At most how many tensors and bytes the adapter has (every module changed; with
    `energy`, at full rank)."""
    dtypes = {t.name: t.dtype for t in lo.tensors}
    shapes = {t.name: t.shape for t in lo.tensors}
    form: LowRankForm = lo.output.form
    n, size = 0, 0
    for row, name in zip(plan_rows(lo), form.lora):
        r = row.rank if row.rank is not None else min(row.shape)
        n += 2
        size += r * (row.shape[0] + row.shape[1]) * itemsize(dtypes[name])
    for name in form.saved:
        n += 1
        size += math.prod(shapes[name]) * itemsize(dtypes[name])
    return n, size


#: bytes per entry of a matrix while its SVD runs: the float32 delta, its float64 copy,
#: U and V^T (at most the matrix's size each in float64)
SVD_BYTES_PER_ENTRY = 4 + 3 * 8


#: bytes per entry of a Gram matrix while it is diagonalized: the matrix, eigh's copy and
#: its eigenvectors, in float64
GRAM_BYTES_PER_ENTRY = 3 * 8
#: float32 copies of a block of rows alive while it is computed and used
BLOCK_COPIES = 8


def needs_blocks(shape, max_memory: int | None) -> bool:
    """Whether the SVD of a module of this (stored) shape exceeds `max_memory` whole."""
    return max_memory is not None and math.prod(shape) * SVD_BYTES_PER_ENTRY > max_memory


def gram_rows(shape, max_memory: int) -> int | None:
    """Rows per block for the Gram route of a [p, q] module under `max_memory`, or None
    when its Gram matrix alone does not fit."""
    p, q = shape
    gram = min(p, q) ** 2 * GRAM_BYTES_PER_ENTRY
    if gram >= max_memory:
        return None
    return max(1, min(p, (max_memory - gram) // (q * 4 * BLOCK_COPIES)))


def svd_memory_warnings(lowered: list[LoweredOutput], max_memory: int | None) -> list:
    """W353 for each adapter output with modules whose SVD needs more than `max_memory`
    and cannot take the Gram route (a Gram matrix over the limit, or a delta that cannot
    be computed in blocks of rows)."""
    from mergec.runtime.schedule import node_chunkable
    from mergec.diagnostics import Diagnostic
    from mergec.io.sizes import format_size

    out = []
    if max_memory is None:
        return out
    for lo in lowered:
        if not isinstance(lo.output.form, LowRankForm):
            continue
        rows = plan_rows(lo)
        nodes = {module_of(t.name): t.node for t in lo.tensors}
        over = [r for r in rows if needs_blocks(r.shape, max_memory) and (
            gram_rows(r.shape, max_memory) is None or
            not node_chunkable(_value(nodes[r.module])))]
        if over:
            big = max(over, key=lambda r: math.prod(r.shape))
            need = math.prod(big.shape) * SVD_BYTES_PER_ENTRY
            out.append(Diagnostic(
                "W353", f"output `{lo.output.name}`: {len(over)} of {len(rows)} modules need "
                f"more than the memory limit {format_size(max_memory)} for their SVD "
                f"(`{big.module}` {list(big.shape)}: about {format_size(need)})",
                lo.output.span, "such a module is decomposed whole and the limit is not kept "
                "while it runs (its Gram matrix does not fit, or its delta cannot be "
                "computed in blocks of rows)", severity="warning"))
    return out


@dataclass
class ModuleResult:
    module: str
    shape: tuple[int, int]
    rank: int  # 0: the delta is zero, the module is left out
    error: float  # the relative Frobenius error of the truncation


@dataclass
class AdapterResult:
    output: str
    path: Path
    tensors: int
    bytes_written: int
    seconds: float
    modules: list[ModuleResult] = field(default_factory=list)
    saved_modules: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the build reports


def choose_rank(s2, form: LowRankForm) -> int:
    """The rank for squared singular values `s2` (descending numpy array)."""
    total = float(s2.sum())
    if total == 0.0:
        return 0
    if form.rank is not None:
        return min(form.rank, len(s2))
    cum = s2.cumsum() / total
    # the smallest r with cum[r - 1] >= energy (a hair of slack for rounding)
    return min(len(s2), int((cum < form.energy - 1e-12).sum()) + 1)


def _value(node):
    return node.args[0] if node.op == "cast" else node


def gram_factors(x_rows, shape, rows: int, form: LowRankForm, transpose: bool):
    """(B, A, rank, relative error) of a module from its stored rows, by the Gram route
    (module docstring): `x_rows(b, (start, stop))` is block b of the stored [p, q] tensor,
    float64; `transpose`: the delta is its transpose (`fan_in_fan_out`)."""
    import numpy as np

    p, q = shape
    spans = [(a, min(a + rows, p)) for a in range(0, p, rows)]
    if q <= p:  # X^T X over the columns: one pass, then one more for U = X V / s
        g = np.zeros((q, q))
        for b, sp in enumerate(spans):
            xb = x_rows(b, sp)
            g += xb.T @ xb
    else:  # X X^T over the rows: a pass per pair of blocks
        g = np.zeros((p, p))
        for i, si in enumerate(spans):
            xi = x_rows(i, si)
            for j, sj in enumerate(spans[i:], i):
                xj = xi if j == i else x_rows(j, sj)
                g[si[0]:si[1], sj[0]:sj[1]] = xi @ xj.T
                if j != i:
                    g[sj[0]:sj[1], si[0]:si[1]] = g[si[0]:si[1], sj[0]:sj[1]].T
    lam, w = np.linalg.eigh(g)
    del g
    s2 = np.maximum(lam[::-1], 0.0)
    w = w[:, ::-1]
    r = choose_rank(s2, form)
    if r == 0:
        return None, None, 0, 0.0
    err = math.sqrt(max(0.0, float(s2[r:].sum())) / float(s2.sum()))
    s = np.sqrt(s2[:r])
    keep = s > 0
    s_safe = np.where(keep, s, 1.0)
    if q <= p:
        v = w[:, :r]
        u = np.zeros((p, r))
        for b, (a, z) in enumerate(spans):
            u[a:z] = x_rows(b, (a, z)) @ v / s_safe
    else:
        u = w[:, :r]
        v = np.zeros((q, r))
        for b, (a, z) in enumerate(spans):
            v += x_rows(b, (a, z)).T @ u[a:z]
        v /= s_safe
    u[:, ~keep] = 0.0
    v[:, ~keep] = 0.0
    root = np.sqrt(s)
    if transpose:  # the delta is X^T = V S U^T
        u, v = v, u
    b_ = (u * root[None, :]).astype(np.float32)
    a_ = (root[:, None] * v.T).astype(np.float32)
    return b_, a_, r, err


def factors(backend, delta, form: LowRankForm):
    """(B, A, rank, relative error) of one module's delta, B and A float32 numpy arrays
    (None when the delta is zero)."""
    import numpy as np

    u, s, vt = backend.svd(delta)
    s = np.asarray(backend.to_numpy(s, "float64"), dtype=np.float64)
    s2 = s * s
    r = choose_rank(s2, form)
    total = float(s2.sum())
    if r == 0:
        return None, None, 0, 0.0
    err = math.sqrt(max(0.0, float(s2[r:].sum())) / total)
    root = np.sqrt(s[:r])
    ur = np.asarray(backend.to_numpy(backend.take(u, 1, 0, r), "float64"))
    vr = np.asarray(backend.to_numpy(backend.take(vt, 0, 0, r), "float64"))
    b = (ur * root[None, :]).astype(np.float32)
    a = (root[:, None] * vr).astype(np.float32)
    return b, a, r, err


def adapter_config(form: LowRankForm, ranks: dict[str, int], saved_modules: list[str]) -> dict:
    counts = Counter(ranks.values())
    r0 = max(counts, key=lambda r: (counts[r], r))
    pattern = {m: r for m, r in sorted(ranks.items()) if r != r0}
    base = form.base
    task = None
    base_path = None
    if base is not None:
        archs = (base.config or {}).get("architectures") or []
        if any(str(a).endswith("ForCausalLM") for a in archs):
            task = "CAUSAL_LM"
        ref = getattr(base.checkpoint, "ref", None)
        if ref is not None:
            base_path = str(base.checkpoint.root) if ref.local else ref.repo_id
    return {
        "peft_type": "LORA",
        "task_type": task,
        "base_model_name_or_path": base_path,
        "r": r0,
        "lora_alpha": r0,
        "rank_pattern": pattern,
        "alpha_pattern": dict(pattern),  # alpha = r: every scale is 1
        "target_modules": sorted(ranks),
        "modules_to_save": sorted(saved_modules) or None,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": form.fan_in_fan_out,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
    }


def build_adapter(lo: LoweredOutput, checked: CheckedProgram, target: Path, backend, *,
                  force: bool = False, progress=None,
                  max_memory: int | None = None) -> AdapterResult:
    """Compute every factored module's SVD (keeping only the factors), find the other
    tensors that changed, then write the adapter atomically."""
    import numpy as np

    from mergec.io.writer import OutputWriter
    from mergec.ir.nodes import Graph
    from mergec.runtime.interpreter import convert, evaluate
    from mergec.runtime.prepass import host_f32

    t0 = time.perf_counter()
    form: LowRankForm = lo.output.form
    by_name = {t.name: t for t in lo.tensors}

    def delta_of(name: str):
        node = by_name[name].node
        return evaluate(node.args[0] if node.op == "cast" else node, checked, backend,
                        for_kernel=True)

    def blocked(name: str, rows: int):
        """Block b of rows (start, stop) of the stored delta, float64, computed as a build
        computes a tensor in blocks (with the passes its merges need)."""
        from mergec.runtime.prepass import Blocks, kept_values, tensor_stats

        value = _value(by_name[name].node)
        p = by_name[name].shape[0]
        spans = Blocks([(a, min(a + rows, p)) for a in range(0, p, rows)], None)
        ctx = tensor_stats(value, backend, None, spans,
                           lambda call, b, sp, c: evaluate(call, checked, backend, None,
                                                           rows=sp, ctx=c, block=b,
                                                           args_of_root=True))

        def x_rows(b: int, sp):
            v = evaluate(value, checked, backend, None, rows=sp, ctx=ctx, block=b,
                         given=kept_values(ctx, value, b), for_kernel=True)
            return np.asarray(host_f32(backend, v), dtype=np.float64)

        return x_rows

    from mergec.runtime.schedule import node_chunkable

    modules: list[ModuleResult] = []
    kept: dict[str, tuple] = {}
    for name in form.lora:
        t = by_name[name]
        stored = tuple(t.shape)
        rows = gram_rows(stored, max_memory) if needs_blocks(stored, max_memory) else None
        if rows is not None and node_chunkable(_value(t.node)):
            b, a, r, err = gram_factors(blocked(name, rows), stored, rows, form,
                                        form.fan_in_fan_out)
            shape = stored[::-1] if form.fan_in_fan_out else stored
        else:
            d = backend.to_float32(delta_of(name))
            if form.fan_in_fan_out:  # stored [in, out]: PEFT adds (B @ A)^T
                d = backend.transpose(d)
            b, a, r, err = factors(backend, d, form)
            shape = tuple(backend.shape(d))
        modules.append(ModuleResult(module_of(name), shape, r, err))
        if r:
            kept[module_of(name)] = (convert(b, t.dtype), convert(a, t.dtype))
        if progress:
            progress(lo.output.name, len(modules), 0)
    changed = {module_of(n) for n in form.saved
               if np.any(host_f32(backend, delta_of(n)) != 0)}
    saved = [n for n in form.saved if module_of(n) in changed]
    decl = []
    for m, (b, a) in kept.items():
        decl.append((f"{PREFIX}{m}.lora_A.weight", a.shape, by_name[m + ".weight"].dtype))
        decl.append((f"{PREFIX}{m}.lora_B.weight", b.shape, by_name[m + ".weight"].dtype))
    decl += [(PREFIX + n, by_name[n].shape, by_name[n].dtype) for n in saved]
    g = Graph()
    with OutputWriter(target, decl, force=force, single_file=WEIGHTS,
                      metadata={"mergec_version": __version__}) as writer:
        for m, (b, a) in kept.items():
            writer.write(f"{PREFIX}{m}.lora_A.weight", a)
            writer.write(f"{PREFIX}{m}.lora_B.weight", b)
        for n in saved:
            t = by_name[n]
            base = evaluate(g.load(form.base.name, n, t.shape, form.base.tensors[n].dtype),
                            checked, backend, for_kernel=True)
            value = backend.add(backend.to_float32(base), backend.to_float32(delta_of(n)))
            writer.write(PREFIX + n, convert(host_f32(backend, value), t.dtype))
        ranks = {m.module: m.rank for m in modules if m.rank}
        cfg = adapter_config(form, ranks, sorted(changed))
        writer.add_file(CONFIG, json.dumps(cfg, indent=2) + "\n")
        path = writer.commit()
    nbytes = sum(math.prod(s) * itemsize(d) for _, s, d in decl)
    if progress:  # the plan's totals are upper bounds: the bar ends full
        progress(lo.output.name, *planned_bytes(lo))
    result = AdapterResult(lo.output.name, path, len(decl), nbytes,
                           time.perf_counter() - t0, modules, sorted(changed))
    result.notes = report_lines(result)
    return result


def report_lines(result: AdapterResult) -> list[str]:
    """What the build says about an adapter: ranks and the achieved relative errors."""
    done = [m for m in result.modules if m.rank]
    lines = []
    if done:
        ranks = Counter(m.rank for m in done)
        rank_text = ", ".join(f"rank {r} x{c}" for r, c in sorted(ranks.items()))
        worst = max(done, key=lambda m: m.error)
        lines.append(f"{len(done)} modules ({rank_text}); relative error: largest "
                     f"{worst.error:.4f} ({worst.module})")
    zero = [m for m in result.modules if not m.rank]
    if zero:
        lines.append(f"{len(zero)} modules unchanged, left out (first: {zero[0].module})")
    if result.saved_modules:
        lines.append(f"{len(result.saved_modules)} modules written whole (modules_to_save)")
    width = max((len(m.module) for m in done), default=0)
    lines += [f"  {m.module.ljust(width)}  rank {m.rank:<4} error {m.error:.4f}" for m in done]
    return lines
