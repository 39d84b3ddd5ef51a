"""Statistics: `stats` declarations and the `stats=` / `fallback=` of the methods that read
them (Fisher merging, RegMean).

A `stats` statement opens a statistics folder (stats.json and safetensors headers, see
docs/stats.md) and binds a value of kind Stats. A call of a method with statistics
(`Method.stats`) takes `stats=[...]`, one folder per input, and `fallback=`, a Model for
the tensors the statistics do not cover. Before any weight is read, each folder is held
to its input: the kind the method needs, the tensor names and shapes (the method's
`stats_shape`), then the fingerprint of the model it was computed on; and every tensor
either has statistics in every folder or a fallback.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mergec.check.program import (
    ERROR, LIST, MODEL, STATS, CCall, CExpr, CInput, CStats, kind_text,
)
from mergec.check.report import Reporter
from mergec.check.scope import Const, is_error
from mergec.diagnostics import Label
from mergec.io.errors import CheckpointError
from mergec.io.stats_files import model_fingerprint
from mergec.lang import ast

if TYPE_CHECKING:  # exprs imports calls, which imports this module
    from mergec.check.exprs import Exprs

#: (source as written, folder of the recipe) -> a StatsFolder; raises CheckpointError
StatsLoader = Callable[[str, Path], Any]

KIND_NAMES = {"fisher": "Fisher", "gram": "Gram"}
#: tensors named in one diagnostic before "and N more"
SHOWN = 3


def read_stats(report: Reporter, st: ast.StatsStmt, loader: StatsLoader,
               base_dir: Path) -> Const:
    """The value a `stats` statement binds: Stats, or an error (reported)."""
    try:
        folder = loader(st.source.value, base_dir)
    except CheckpointError as e:
        report.add(e.to_diagnostic(st.source.span))
        return Const(ERROR, None, st.span)
    return Const(STATS, CStats(st.name.name, st.name.span, folder), st.name.span)


def covered(call: CCall, name: str) -> bool:
    """Whether `call` computes tensor `name` from its statistics (else its fallback)."""
    shape = call.tensors[name].shape
    return call.method.stats_shape(tuple(shape)) is not None and all(
        name in s.folder.tensors for s in call.stats)


def shape_text(shape) -> str:
    return "[" + ", ".join(str(int(d)) for d in shape) + "]"


def _names_text(names: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _input_name(inp: CExpr, i: int) -> str:
    return f"`{inp.name}`" if isinstance(inp, CInput) else f"input {i + 1}"


def check_call(exprs: "Exprs", e: ast.Call, method, inputs: list[CExpr], kind: str,
               tensors: dict | None, kwargs: dict[str, ast.Kwarg]):
    """The statistics and fallback of a call of a method with statistics:
    (stats, fallback), or None when they are not valid (reported)."""
    report, fname = exprs.report, e.func.name
    err = report.error
    ok = True
    if kind != MODEL:
        err("E250", f"`{fname}` merges whole models, not {kind_text(kind)}", e.span,
            "statistics describe a whole model: pass the models themselves")
        return None
    fb_kw = kwargs.get("fallback")
    fallback = None
    if fb_kw is not None:
        fv = exprs.whole(exprs.value(fb_kw.value))
        if is_error(fv):
            ok = False
        elif isinstance(fv, Const) or fv.kind != MODEL:
            err("E253", f"`fallback=` expects a Model, found a {fv.kind}", fb_kw.value.span,
                "a merge of the same models, e.g. `fallback=linear(...)`")
            ok = False
        else:
            fallback = fv
    kw = kwargs.get("stats")
    if kw is None:
        err("E250", f"`{fname}` needs `stats=[...]`: one statistics folder per input", e.span,
            f"declare them with `stats NAME = \"folder\"` (made by `mergec stats ... --kind "
            f"{method.stats}`) and write `stats=[s1, s2, ...]`")
        return None
    v = exprs.value(kw.value)
    if is_error(v):
        return None
    items = v.value if isinstance(v, Const) and v.kind == LIST else [v]
    if not (isinstance(v, Const) and v.kind == LIST):
        err("E250", f"`stats=` of `{fname}` takes a list with one statistics folder per "
            "input", kw.value.span, "write `stats=[s1, s2, ...]`, in the order of the inputs")
        return None
    stats: list[CStats] = []
    spans = [x.span for x in kw.value.items] if isinstance(kw.value, ast.ListExpr) else []
    for i, item in enumerate(items):
        if is_error(item):
            return None
        if not (isinstance(item, Const) and item.kind == STATS):
            err("E250", f"`stats=` expects Stats, found a {item.kind}", spans[i],
                "declare statistics with `stats NAME = \"folder\"`")
            return None
        stats.append(item.value)
    if len(stats) != len(inputs):
        err("E250", f"`stats=` has {len(stats)} statistics folder"
            f"{'s' if len(stats) != 1 else ''} for {len(inputs)} inputs", kw.value.span,
            "give one per input, in the order of the inputs")
        return None
    seen: dict[Path, int] = {}
    for i, (s, span, inp, arg) in enumerate(zip(stats, spans, inputs, e.args)):
        root = Path(s.folder.root).resolve()
        if root in seen:
            report.warn("W340", f"`{s.name}` is given for two inputs", span,
                        "each model needs the statistics of its own data")
        seen.setdefault(root, i)
        if not _fits(report, fname, method, s, span, inp, i, arg.span):
            ok = False
    if not ok or tensors is None:
        return None if not ok else (tuple(stats), fallback)
    call = CCall(kind, e.span, tensors, method=method, stats=tuple(stats))
    missing = [n for n in tensors if not covered(call, n)]
    partial = [n for n in missing if any(n in s.folder.tensors for s in stats)]
    if partial:
        report.warn("W342", f"{len(partial)} tensor{'s' if len(partial) != 1 else ''} "
                    f"{'have' if len(partial) != 1 else 'has'} statistics for some inputs "
                    f"only and {'take' if len(partial) != 1 else 'takes'} the fallback: "
                    f"{_names_text(partial)}", kw.value.span,
                    "compute every input's statistics over the same tensors")
    if missing and fallback is None:
        what = ("tensor that is not a linear weight with a Gram matrix"
                if method.stats == "gram" else "tensor without Fisher statistics")
        err("E252", f"`{fname}` has no statistics for {len(missing)} tensor"
            f"{'s' if len(missing) != 1 else ''} and no `fallback=`: "
            f"{_names_text(missing)}", e.span,
            f"say how to merge every {what}, e.g. `fallback=linear(...)` of the same models")
        return None
    if fallback is not None and fallback.tensors is not None:
        for n in missing:
            meta = fallback.tensors.get(n)
            if meta is None or tuple(meta.shape) != tuple(tensors[n].shape):
                got = ("has no tensor" if meta is None
                       else f"has shape {shape_text(meta.shape)} for")
                err("E253", f"`fallback=` {got} `{n}`, which the statistics do not cover"
                    + ("" if meta is None else f" (shape {shape_text(tensors[n].shape)})"),
                    fb_kw.value.span, "the fallback is a merge of the same models")
                return None
    if fallback is not None and not missing:
        report.warn("W341", "every tensor has statistics: `fallback=` is never used",
                    fb_kw.value.span, "remove it, or keep it for other statistics")
    return tuple(stats), fallback


def _fits(report: Reporter, fname: str, method, s: CStats, span, inp: CExpr, i: int,
          arg_span) -> bool:
    """Whether statistics `s` fit input `inp` (reported when not): their kind, tensor
    names and shapes, and the fingerprint of the model they were computed on."""
    err = report.error
    folder = s.folder
    labels = (Label(arg_span, "the input it is paired with"),)
    if folder.kind != method.stats:
        err("E251", f"`{s.name}` holds {KIND_NAMES[folder.kind]} statistics; `{fname}` needs "
            f"{KIND_NAMES[method.stats]} statistics", span,
            f"compute them with `mergec stats MODEL --data FILE --kind {method.stats} "
            "--out DIR`")
        return False
    if inp.tensors is None:
        return True
    who = _input_name(inp, i)
    extra = [n for n in folder.tensors if n not in inp.tensors]
    if extra:
        err("E341", f"statistics `{s.name}` have {len(extra)} tensor"
            f"{'s' if len(extra) != 1 else ''} that {who} does not have: "
            f"{_names_text(extra)}", span,
            "were they computed on another model? pair each input with the statistics of "
            "its own data", labels)
        return False
    for name, info in folder.tensors.items():
        shape = tuple(inp.tensors[name].shape)
        want = method.stats_shape(shape)
        got = tuple(info.shape)
        if want is None:
            err("E342", f"statistics `{s.name}` do not fit {who}: `{name}` has statistics "
                f"of shape {shape_text(got)}, but `{fname}` uses none for a tensor of shape "
                f"{shape_text(shape)}", span,
                "a Gram matrix belongs to a 2-D linear weight [out, in]", labels)
            return False
        if got != want:
            err("E342", f"statistics `{s.name}` do not fit {who}: `{name}` has shape "
                f"{shape_text(got)}, expected {shape_text(want)} for the tensor of shape "
                f"{shape_text(shape)}", span,
                "were they computed on another model? pair each input with the statistics "
                "of its own data", labels)
            return False
    if isinstance(inp, CInput):
        mine = model_fingerprint((n, m.shape) for n, m in inp.tensors.items())
        if folder.model != mine:
            err("E340", f"statistics `{s.name}` were computed on another model than {who}",
                span, f"stats.json names the model {folder.model[:12]}…, {who} is "
                f"{mine[:12]}… (fingerprints of the tensor names and shapes); compute them "
                "on this model with `mergec stats`", labels)
            return False
    return True
