"""`model` and `adapter` statements: the inputs, read as config.json and tensor headers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mergec import arch
from mergec.check.program import DELTA, ERROR, MODEL, CAdapter, CExpr, CInput, TensorMeta
from mergec.check.report import Reporter
from mergec.io.errors import E_CONFIG, CheckpointError
from mergec.lang import ast

#: (source as written, folder of the recipe) -> a checkpoint (or an adapter); raises
#: CheckpointError
InputLoader = Callable[[str, Path], Any]


def read_model(report: Reporter, st: ast.ModelStmt, loader: InputLoader,
               base_dir: Path, heads: str | None = None, vocab=None) -> CExpr:
    """The input of a `model` statement; `heads` ("untie" or "tie", `set heads`) gives a
    tied model a head of its own, or drops an untied model's head; `vocab` (the plan of
    `set vocab`, mergec.io.vocab.VocabPlan) gives its embeddings the output's rows."""
    try:
        ckpt = loader(st.source.value, base_dir)
    except CheckpointError as e:
        report.add(e.to_diagnostic(st.source.span))
        return CExpr(ERROR, st.span)
    if vocab is not None and st.name.name in vocab.vocabs:
        from mergec.io.vocab import VocabView
        ckpt = VocabView(ckpt, st.name.name, vocab)
    tensors = {n: TensorMeta(tuple(t.shape), t.dtype) for n, t in ckpt.tensors.items()}
    problem = arch.layer_count_problem(ckpt.config, tensors)
    if problem is not None:
        report.add(CheckpointError(
            E_CONFIG, f"config.json of `{st.source.value}`: {problem}",
            "restore config.json from the original model").to_diagnostic(st.source.span))
        return CExpr(ERROR, st.span)
    n_layers = arch.layer_count(ckpt.config, tensors)
    aliases = _heads(report, st, tensors, heads)
    return CInput(MODEL, st.name.span, tensors, n_layers, name=st.name.name,
                  checkpoint=ckpt, config=ckpt.config, aliases=aliases)


def _heads(report: Reporter, st: ast.ModelStmt, tensors: dict, heads: str | None) -> dict:
    """Apply `set heads` to the table of one input (W312 says what was done)."""
    pair = arch.head_pair(tensors) if heads else None
    if pair is None:
        return {}
    emb, head = pair
    name = st.name.name
    if heads == "untie" and head not in tensors:
        tensors[head] = tensors[emb]
        report.warn("W312", f"`{name}` ties its output head to its embeddings: its `{head}` "
                    f"is read from `{emb}`, and outputs get a head of their own "
                    "(`tie_word_embeddings: false`)", st.name.span,
                    '`set heads = "untie"` chose this; `"tie"` keeps the heads tied')
        return {head: emb}
    if heads == "tie" and head in tensors:
        del tensors[head]
        report.warn("W312", f"`{name}` has an output head of its own: its `{head}` is not "
                    f"used, and outputs tie their head to `{emb}` "
                    "(`tie_word_embeddings: true`)", st.name.span,
                    '`set heads = "tie"` chose this; `"untie"` keeps the heads')
    return {}


def read_adapter(report: Reporter, st: ast.AdapterStmt, loader: InputLoader,
                 base_dir: Path) -> CExpr:
    try:
        ad = loader(st.source.value, base_dir)
    except CheckpointError as e:
        report.add(e.to_diagnostic(st.source.span))
        return CExpr(ERROR, st.span)
    tensors = {n: TensorMeta(p.shape, "float32") for n, p in ad.pairs.items()}
    return CAdapter(DELTA, st.name.span, tensors, None, sparse=True, name=st.name.name,
                    adapter=ad)

