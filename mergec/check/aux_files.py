"""The auxiliary files of an output (sentence-transformers modules, generation config,
processor configs) come from one input; W310 when the inputs it merges disagree on what
changes the model's behaviour: the sentence-transformers modules (pooling mode,
normalization, dense layers) and their settings."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mergec.check.program import MODEL, CCall, CExpr, CInput, CLinear, Output, TensorMeta
from mergec.check.walk import walk
from mergec.diagnostics import Diagnostic
from mergec.io import hf_files
from mergec.io.errors import CheckpointError


def _describe(behaviour: dict[str, str]) -> str:
    if not behaviour:
        return "no sentence-transformers modules"
    return " -> ".join(k.split(":", 1)[1] for k in behaviour)


def aux_warnings(out: Output) -> list[Diagnostic]:
    src = out.files_from
    if src is None or getattr(src.checkpoint, "root", None) is None:
        return []
    mine = hf_files.st_behaviour(src.checkpoint.root)
    diags = []
    seen = {src.name}
    for e in walk(out.expr):
        if not isinstance(e, CInput) or e.name in seen or \
                getattr(e.checkpoint, "root", None) is None:
            continue
        seen.add(e.name)
        other = hf_files.st_behaviour(e.checkpoint.root)
        if other == mine:
            continue
        if list(other) == list(mine):
            key = next(k for k in mine if mine[k] != other[k])
            what = (f"the settings of module {key.split(':', 1)[1]} differ "
                    f"({_short(other[key])} in `{e.name}`, {_short(mine[key])} in `{src.name}`)")
        else:
            what = (f"`{e.name}` has {_describe(other)}, `{src.name}` has {_describe(mine)}")
        diags.append(Diagnostic(
            "W310", f"output `{out.name}`: the inputs disagree on their sentence-transformers "
            f"modules: {what}; the output takes those of `{src.name}`", out.span,
            "pooling and normalization change the embeddings; name the input they should "
            "come from with `{ files = NAME }` on the output",
            severity="warning"))
    _, copied = dense_modules(out)
    if copied:
        diags.append(Diagnostic(
            "W311", f"output `{out.name}`: the sentence-transformers dense layer"
            f"{'s' if len(copied) != 1 else ''} ({', '.join(f'`{p}`' for p, _ in copied)}) "
            f"{'are' if len(copied) != 1 else 'is'} copied from `{src.name}`, not merged: "
            f"{copied[0][1]}", out.span,
            "dense modules are merged like the transformer when every input has them with "
            "the same tensors, and the output is a merge of whole models",
            severity="warning"))
    return diags


def dense_modules(out: Output) -> tuple[list[tuple[str, dict, CExpr]], list[tuple[str, str]]]:
    """The sentence-transformers `Dense` modules of the output's `files` input: those
    merged like the transformer, as (folder, the inputs' dense modules by input name, the
    output's expression over them), and those copied, as (folder, why). Reads the
    modules' headers only."""
    from mergec.io import open_checkpoint  # lazily, as the checker opens inputs

    src = out.files_from
    if src is None or getattr(src.checkpoint, "root", None) is None:
        return [], []
    paths = [m.get("path", "") for m in hf_files.st_modules(src.checkpoint.root)
             if str(m.get("type", "")).endswith("Dense") and m.get("path")]
    inputs = []
    for e in walk(out.expr):
        if isinstance(e, CInput) and all(e.name != x.name for x in inputs):
            inputs.append(e)
    if not paths or len(inputs) < 2:
        return [], []
    merged, copied = [], []
    for path in paths:
        dense, why = {}, None
        for inp in inputs:
            root = getattr(inp.checkpoint, "root", None)
            try:
                ck = open_checkpoint(Path(root) / path) if root is not None else None
            except CheckpointError:
                ck = None
            if ck is None:
                why = f"`{inp.name}` has no dense module `{path}`"
                break
            table = {n: TensorMeta(tuple(t.shape), t.dtype) for n, t in ck.tensors.items()}
            first = next(iter(dense.values()), None)
            if first is not None and first.tensors != table:
                why = f"the dense modules of `{first.name}` and `{inp.name}` differ in shape"
                break
            dense[inp.name] = CInput(MODEL, inp.span, table, None, name=inp.name,
                                     checkpoint=ck, config=ck.config)
        expr = None
        if why is None:
            expr = _substitute(out.expr, dense, next(iter(dense.values())).tensors)
            if expr is None:
                why = "the output stacks or slices layers, or adds an adapter"
        if why is None:
            merged.append((path, dense, expr))
        else:
            copied.append((path, why))
    return merged, copied


def _substitute(e: CExpr, dense: dict, table: dict) -> CExpr | None:
    """`e` over the inputs' dense modules instead of the inputs; None where `e` holds a
    slice, a stack or an adapter."""
    if isinstance(e, CInput):
        return dense.get(e.name)
    if isinstance(e, CLinear):
        terms = [(_substitute(t, dense, table), c) for t, c in e.terms]
        if any(t is None for t, _ in terms):
            return None
        return replace(e, terms=tuple(terms), tensors=table, n_layers=None)
    if isinstance(e, CCall):
        ins = [_substitute(i, dense, table) for i in e.inputs]
        base = _substitute(e.base, dense, table) if e.base is not None else None
        if any(i is None for i in ins) or (e.base is not None and base is None):
            return None
        return replace(e, inputs=tuple(ins), base=base, tensors=table, n_layers=None)
    return None


def _short(cfg: str, limit: int = 80) -> str:
    return cfg if len(cfg) <= limit else cfg[:limit - 3] + "..."
