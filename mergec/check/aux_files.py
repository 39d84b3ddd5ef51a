"""The auxiliary files of an output (sentence-transformers modules, generation config,
processor configs) come from one input; W310 when the inputs it merges disagree on what
changes the model's behaviour: the sentence-transformers modules (pooling mode,
normalization, dense layers) and their settings."""

from __future__ import annotations

from mergec.check.program import CInput, Output
from mergec.check.walk import walk
from mergec.diagnostics import Diagnostic
from mergec.io import hf_files


def _describe(behaviour: dict[str, str]) -> str:
    if not behaviour:
        return "no sentence-transformers modules"
    return " -> ".join(k.split(":", 1)[1] for k in behaviour)


def aux_warnings(out: Output) -> list[Diagnostic]:
    src = out.files_from
    if src is None or src.checkpoint is None:
        return []
    mine = hf_files.st_behaviour(src.checkpoint.root)
    diags = []
    seen = {src.name}
    for e in walk(out.expr):
        if not isinstance(e, CInput) or e.name in seen or e.checkpoint is None:
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
            "pooling and normalization change the embeddings; choose the input with "
            "`{ files = NAME }` on the output to silence this",
            severity="warning"))
    dense = [k.split(":", 1)[0] for k in mine if k.endswith(":Dense")]
    if dense and len(seen) > 1:
        paths = [m.get("path", "") for m in hf_files.st_modules(src.checkpoint.root)
                 if str(m.get("type", "")).endswith("Dense")]
        diags.append(Diagnostic(
            "W311", f"output `{out.name}`: the sentence-transformers dense layer"
            f"{'s' if len(paths) != 1 else ''} ({', '.join(f'`{p}`' for p in paths)}) "
            f"{'are' if len(paths) != 1 else 'is'} copied from `{src.name}`, not merged",
            out.span, "this version merges the weights of the transformer itself; the "
            "weights of dense modules come from the `files` input",
            severity="warning"))
    return diags


def _short(cfg: str, limit: int = 80) -> str:
    return cfg if len(cfg) <= limit else cfg[:limit - 3] + "..."
