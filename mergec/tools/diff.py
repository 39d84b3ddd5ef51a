"""`mergec diff A B`: what differs between two checkpoints, or between two recipes.

* Two checkpoints: per tensor, shape and dtype changes and, for tensors of one shape, the
  relative L2 change ``|B - A| / |A|``, the cosine of A and B and the largest absolute
  difference, summed up per block (``model.layers.N``). Tensors are read a block of rows
  at a time from both sides (float64 sums), so memory stays bounded by the block size,
  not the model's.
* Two recipes: which outputs and which of their tensors would be computed differently,
  from the checked programs alone (config.json files and tensor headers, never tensor
  data): each output tensor's IR after the passes is hashed with its inputs named by
  their location and header fingerprint (:mod:`mergec.ir.keys`), and the hashes compared.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: float64 entries per block read from each side
BLOCK_ENTRIES = 1 << 22


# --- checkpoints -----------------------------------------------------------------------


@dataclass
class TensorDiff:
    name: str
    status: str  # "same" | "changed" | "added" | "removed" | "shape"
    shape_a: list[int] | None = None
    shape_b: list[int] | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    rel_l2: float | None = None  # |B - A| / |A|; None where |A| = 0 and B != A
    cosine: float | None = None  # None where exactly one of them is zero
    max_abs: float | None = None
    # sums for the per-layer figures
    sq_a: float = 0.0
    sq_diff: float = 0.0


@dataclass
class LayerDiff:
    layer: str
    tensors: int = 0
    changed: int = 0
    rel_l2: float | None = 0.0
    min_cosine: float | None = None
    max_abs: float = 0.0


@dataclass
class CheckpointDiff:
    a: str
    b: str
    tensors: list[TensorDiff] = field(default_factory=list)
    layers: list[LayerDiff] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b,
                "layers": [asdict(x) for x in self.layers],
                "tensors": [{k: v for k, v in asdict(t).items() if k not in ("sq_a", "sq_diff")}
                            for t in self.tensors]}


def open_any(spec: str):
    """A checkpoint from a folder path, or a recipe-style source (a hub id)."""
    from mergec.io.checkpoint import open_checkpoint, open_input

    p = Path(spec).expanduser()
    if p.is_dir():
        return open_checkpoint(p.resolve())
    return open_input(spec, Path.cwd())


def diff_checkpoints(a: str, b: str, *, block_entries: int = BLOCK_ENTRIES) -> CheckpointDiff:
    ca, cb = open_any(a), open_any(b)
    try:
        out = CheckpointDiff(ca.name, cb.name)
        names = list(ca.tensors) + [n for n in cb.tensors if n not in ca.tensors]
        for name in names:
            out.tensors.append(_tensor(ca, cb, name, block_entries))
        out.layers = _layers(out.tensors)
        return out
    finally:
        ca.close()
        cb.close()


def _tensor(ca, cb, name: str, block_entries: int) -> TensorDiff:
    import numpy as np

    ia, ib = ca.tensors.get(name), cb.tensors.get(name)
    if ib is None:
        return TensorDiff(name, "removed", list(ia.shape), None, ia.dtype, None)
    if ia is None:
        return TensorDiff(name, "added", None, list(ib.shape), None, ib.dtype)
    t = TensorDiff(name, "same", list(ia.shape), list(ib.shape), ia.dtype, ib.dtype)
    if tuple(ia.shape) != tuple(ib.shape):
        t.status = "shape"
        return t
    aa = bb = ab = dd = 0.0
    mx = 0.0
    rows = ia.shape[0] if ia.shape else 1
    row = math.prod(ia.shape[1:]) if ia.shape else 1
    step = max(1, block_entries // max(row, 1))
    for start in range(0, rows, step):
        if ia.shape:
            x = ca.read_rows(name, start, start + step)
            y = cb.read_rows(name, start, start + step)
        else:
            x, y = ca.read(name), cb.read(name)
        x = np.asarray(x).astype(np.float64).ravel()
        y = np.asarray(y).astype(np.float64).ravel()
        d = y - x
        aa += float(x @ x)
        bb += float(y @ y)
        ab += float(x @ y)
        dd += float(d @ d)
        if d.size:
            mx = max(mx, float(np.abs(d).max()))
    t.sq_a, t.sq_diff, t.max_abs = aa, dd, mx
    t.rel_l2 = math.sqrt(dd / aa) if aa > 0 else (0.0 if dd == 0 else None)
    if aa > 0 and bb > 0:
        t.cosine = max(-1.0, min(1.0, ab / math.sqrt(aa * bb)))
    elif aa == 0 and bb == 0:
        t.cosine = 1.0
    if dd > 0 or ia.dtype != ib.dtype:
        t.status = "changed"
    return t


def layer_of(name: str) -> str:
    from mergec.arch import block_index

    i = block_index(name)
    return f"block {i}" if i is not None else "outside blocks"


def _layers(tensors: list[TensorDiff]) -> list[LayerDiff]:
    groups: dict[str, LayerDiff] = {}
    sums: dict[str, list[float]] = {}
    for t in tensors:
        key = layer_of(t.name)
        g = groups.setdefault(key, LayerDiff(key))
        s = sums.setdefault(key, [0.0, 0.0])
        g.tensors += 1
        if t.status != "same":
            g.changed += 1
        s[0] += t.sq_a
        s[1] += t.sq_diff
        if t.cosine is not None:
            g.min_cosine = t.cosine if g.min_cosine is None else min(g.min_cosine, t.cosine)
        if t.max_abs is not None:
            g.max_abs = max(g.max_abs, t.max_abs)
    for key, g in groups.items():
        aa, dd = sums[key]
        g.rel_l2 = math.sqrt(dd / aa) if aa > 0 else (0.0 if dd == 0 else None)

    def order(g: LayerDiff):
        head, _, i = g.layer.partition(" ")
        return (0, int(i)) if head == "block" and i.isdigit() else (1, 0)
    return sorted(groups.values(), key=order)


def _num(x: float | None, spec: str = ".3e") -> str:
    return "-" if x is None else format(x, spec)


def checkpoint_table(d: CheckpointDiff, all_tensors: bool = False) -> str:
    lines = [f"A: {d.a}", f"B: {d.b}", ""]
    head = f"{'layer':<16} {'tensors':>7} {'changed':>7} {'rel L2':>10} {'min cos':>10} " \
           f"{'max |B-A|':>10}"
    lines += [head, "-" * len(head)]
    for g in d.layers:
        cos = "-" if g.min_cosine is None else f"{g.min_cosine:.6f}"
        lines.append(f"{g.layer:<16} {g.tensors:>7} {g.changed:>7} {_num(g.rel_l2):>10} "
                     f"{cos:>10} {_num(g.max_abs):>10}")
    changed = [t for t in d.tensors if t.status != "same"]
    lines += ["", f"{len(changed)} of {len(d.tensors)} tensors differ"]
    for t in d.tensors:
        if t.status in ("added", "removed"):
            shape = t.shape_a or t.shape_b
            lines.append(f"  {t.status:<8} {t.name} {t.dtype_a or t.dtype_b}{shape}")
        elif t.status == "shape":
            lines.append(f"  shape    {t.name} {t.shape_a} -> {t.shape_b}")
        elif t.dtype_a != t.dtype_b:
            lines.append(f"  dtype    {t.name} {t.dtype_a} -> {t.dtype_b}")
    if all_tensors:
        lines += ["", f"{'tensor':<48} {'rel L2':>10} {'cosine':>10} {'max |B-A|':>10}"]
        for t in d.tensors:
            if t.status in ("same", "changed"):
                cos = "-" if t.cosine is None else f"{t.cosine:.6f}"
                lines.append(f"{t.name:<48} {_num(t.rel_l2):>10} {cos:>10} "
                             f"{_num(t.max_abs):>10}")
    return "\n".join(lines)


# --- recipes ---------------------------------------------------------------------------


@dataclass
class OutputDiff:
    output: str
    status: str  # "same" | "changed" | "added" | "removed"
    tensors: int = 0  # in B (A for a removed output)
    changed: list[str] = field(default_factory=list)  # computed differently
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # "config" / "tokenizer" from elsewhere


@dataclass
class RecipeDiff:
    a: str
    b: str
    outputs: list[OutputDiff] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "outputs": [asdict(o) for o in self.outputs]}


def source_identity(checked, name: str) -> str:
    """What a recipe input is, without reading tensor data: its location and the
    fingerprint of its config and weight headers."""
    src = checked.source(name)
    ref = getattr(src, "ref", None)
    where = ref.display() if ref is not None and not getattr(ref, "local", True) else \
        str(Path(getattr(src, "root", "")).resolve())
    return f"{where}#{src.fingerprint()}"


def output_keys(checked, lowered) -> dict[str, dict[str, str]]:
    """output -> tensor -> key, for a compiled recipe."""
    from mergec.ir.keys import tensor_keys

    ids: dict[str, str] = {}

    def source_id(name: str) -> str:
        if name not in ids:
            ids[name] = source_identity(checked, name)
        return ids[name]

    return {lo.output.name: dict(zip([t.name for t in lo.tensors],
                                     tensor_keys([t.node for t in lo.tensors], source_id)))
            for lo in lowered}


def _compiled(recipe: str, text: str | None):
    import mergec.api

    checked = mergec.api.check(recipe, text=text)
    from mergec.ir.lower import lower, optimize

    lowered = optimize(lower(checked))
    return checked, lowered


def _file_source(checked, out, which: str) -> str | None:
    inp = getattr(out, f"{which}_from")
    return None if inp is None else source_identity(checked, inp.name)


def diff_recipes(a: str, b: str, *, text_a: str | None = None,
                 text_b: str | None = None) -> RecipeDiff:
    ca, la = _compiled(a, text_a)
    cb, lb = _compiled(b, text_b)
    ka, kb = output_keys(ca, la), output_keys(cb, lb)
    outs_a = {o.name: o for o in ca.outputs}
    outs_b = {o.name: o for o in cb.outputs}
    res = RecipeDiff(a if text_a is None else f"{a} (given)", b)
    for name in list(kb) + [n for n in ka if n not in kb]:
        if name not in ka:
            res.outputs.append(OutputDiff(name, "added", len(kb[name]), added=list(kb[name])))
            continue
        if name not in kb:
            res.outputs.append(OutputDiff(name, "removed", len(ka[name]),
                                          removed=list(ka[name])))
            continue
        ta, tb = ka[name], kb[name]
        o = OutputDiff(name, "same", len(tb))
        o.changed = [t for t in tb if t in ta and ta[t] != tb[t]]
        o.added = [t for t in tb if t not in ta]
        o.removed = [t for t in ta if t not in tb]
        for which in ("config", "tokenizer"):
            if _file_source(ca, outs_a[name], which) != _file_source(cb, outs_b[name], which):
                o.files.append(which)
        if o.changed or o.added or o.removed or o.files:
            o.status = "changed"
        res.outputs.append(o)
    return res


def recipe_table(d: RecipeDiff, all_tensors: bool = False) -> str:
    lines = [f"A: {d.a}", f"B: {d.b}", ""]
    for o in d.outputs:
        if o.status == "added":
            lines.append(f"{o.output}: new output ({o.tensors} tensors)")
        elif o.status == "removed":
            lines.append(f"{o.output}: removed ({o.tensors} tensors)")
        elif o.status == "same":
            lines.append(f"{o.output}: unchanged ({o.tensors} tensors)")
        else:
            parts = [f"{len(o.changed)} of {o.tensors} tensors change"]
            if o.added:
                parts.append(f"{len(o.added)} added")
            if o.removed:
                parts.append(f"{len(o.removed)} removed")
            if o.files:
                parts.append(" and ".join(o.files) + " from another model")
            lines.append(f"{o.output}: " + ", ".join(parts))
            if all_tensors or len(o.changed) + len(o.added) + len(o.removed) <= 12:
                lines += [f"  changed  {t}" for t in o.changed]
                lines += [f"  added    {t}" for t in o.added]
                lines += [f"  removed  {t}" for t in o.removed]
            else:
                by = {}
                for t in o.changed:
                    by[layer_of(t)] = by.get(layer_of(t), 0) + 1
                lines += [f"  {n:>5} changed in {k}" for k, n in by.items()]
    n = sum(o.status != "same" for o in d.outputs)
    lines += ["", f"{n} of {len(d.outputs)} outputs differ"]
    return "\n".join(lines)


def git_text(recipe: Path, rev: str) -> str:
    """The text of ``recipe`` at git revision ``rev`` (`git show REV:PATH`)."""
    import subprocess

    from mergec.diagnostics import Diagnostic, UsageError

    folder = recipe.resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=folder,
                             capture_output=True, text=True, timeout=30, check=True)
        rel = recipe.resolve().relative_to(Path(top.stdout.strip()).resolve())
        shown = subprocess.run(["git", "show", f"{rev}:{rel.as_posix()}"], cwd=folder,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError, ValueError) as e:
        raise UsageError(Diagnostic("E502", f"cannot read {recipe} from git: {e}",
                                    help="--git needs the recipe inside a git work tree")) \
            from None
    if shown.returncode != 0:
        raise UsageError(Diagnostic("E502", f"git has no `{rel}` at `{rev}`: "
                                    f"{shown.stderr.strip()}"))
    return shown.stdout
