"""`set vocab`: the output vocabulary, planned from the inputs' tokenizers and tensor
headers before any weight is read (mergec.io.vocab does the reading)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from mergec.check.report import Reporter
from mergec.check.suggest import did_you_mean
from mergec.io.errors import CheckpointError
from mergec.lang import ast


class VocabRequest(NamedTuple):
    mode: str
    span: object  # where the value of `set vocab` is written
    fill: str
    fill_span: object
    multiple: int


def vocab_request(statements) -> VocabRequest | None:
    """The `set vocab`, `set vocab_fill` and `set pad_to_multiple_of` of a recipe (read
    before the inputs, which they change), when `set vocab` is a string; the statements
    themselves are checked in order (mergec.check.settings)."""
    values = {}
    for st in statements:
        if isinstance(st, ast.SetStmt) and st.name.name in ("vocab", "vocab_fill",
                                                            "pad_to_multiple_of"):
            values.setdefault(st.name.name, st.value)
    v = values.get("vocab")
    if not isinstance(v, ast.Str):
        return None
    fill = values.get("vocab_fill")
    mult = values.get("pad_to_multiple_of")
    mult_v = getattr(mult, "value", 1)
    multiple = int(mult_v) if isinstance(mult_v, (int, float)) and \
        not isinstance(mult_v, bool) and float(mult_v).is_integer() and mult_v >= 1 else 1
    return VocabRequest(v.value, v.span,
                        fill.value if isinstance(fill, ast.Str) else "others",
                        fill.span if fill is not None else v.span, multiple)


def unused_vocab_settings(report: Reporter, statements) -> None:
    """W315 for `set vocab_fill` or `set pad_to_multiple_of` in a recipe without
    `set vocab`, where they change nothing."""
    for st in statements:
        if isinstance(st, ast.SetStmt) and st.name.name in ("vocab_fill", "pad_to_multiple_of"):
            report.warn("W315", f"`set {st.name.name}` has no effect without `set vocab`",
                        st.name.span, 'add `set vocab = "union"` (or the name of a model), '
                        "or remove this line")


def plan_vocabulary(report: Reporter, statements, opened: dict, req: VocabRequest):
    """The output vocabulary (mergec.io.vocab.VocabPlan) of the recipe's models, opened in
    `opened` (name -> checkpoint; a model that could not be opened is not there and is
    reported where it is read); None with the problems reported."""
    from mergec.io.vocab import FILLS, plan_vocab, read_vocab, vocab_tensors

    models = [st for st in statements if isinstance(st, ast.ModelStmt)]
    names = [st.name.name for st in models]
    ok = True
    if req.mode != "union" and req.mode not in names:
        report.error("E319", f'`set vocab = "{req.mode}"` names no model of the recipe',
                     req.span, did_you_mean(req.mode, names + ["union"],
                                            'give "union" or a model; models are'))
        ok = False
    if req.fill == "base" and req.mode == "union":
        report.error("E320", '`set vocab_fill = "base"` needs the vocabulary of a named '
                     'model, not "union"', req.fill_span,
                     'the union has tokens its first model lacks; use "others", "zero" or '
                     '"mean", or `set vocab = "NAME"`')
        ok = False
    if req.fill not in FILLS:
        return None  # E208, from the `set` statement
    vocabs = {}
    for st in models:
        ckpt = opened.get(st.name.name)
        if ckpt is None:
            ok = False
            continue
        root = Path(ckpt.root)
        if not (root / "tokenizer.json").is_file():
            report.error("E318", f"`{st.name.name}` has no tokenizer.json (in {root}), and "
                         "`set vocab` matches tokens by their text", st.source.span,
                         "`set vocab` needs a fast tokenizer file in every model; save one "
                         "with transformers' `tokenizer.save_pretrained`")
            ok = False
            continue
        try:
            v = read_vocab(root)
        except Exception as e:  # the tokenizers library's own errors
            report.error("E318", f"`{st.name.name}`: cannot read {root / 'tokenizer.json'}: "
                         f"{e}", st.source.span,
                         "save the tokenizer again with transformers' "
                         "`tokenizer.save_pretrained`")
            ok = False
            continue
        n_ids = max(v.ids.values()) + 1 if v.ids else 0
        for t in _ordered(vocab_tensors(ckpt.tensors)):
            rows = ckpt.tensors[t].shape[0]
            if n_ids > rows:
                report.error("E317", f"`{st.name.name}`'s tokenizer has token ids up to "
                             f"{n_ids - 1}, but its `{t}` has {rows} rows", st.source.span,
                             "the tokenizer and the weights are from different models; "
                             "give each model its own tokenizer.json")
                ok = False
                break
        vocabs[st.name.name] = v
    if not ok:
        return None
    plan = plan_vocab(req.mode, req.fill, req.multiple, vocabs)
    for st in models:
        name = st.name.name
        ckpt = opened[name]
        emb = vocab_tensors(ckpt.tensors)
        lack = plan.missing(name)
        if lack:
            what = {"others": "the mean of the other inputs' rows for the token",
                    "zero": "zeros", "mean": f"the mean of `{name}`'s own rows",
                    "base": f"`{plan.base}`'s row"}[req.fill]
            report.warn("W313", f"`{name}` lacks {lack} of the output's {len(plan.tokens)} "
                        f"tokens: their rows of {_names(emb)} are read as {what}",
                        st.name.span, f'`set vocab_fill = "{req.fill}"` chose this; '
                        'the others are "others", "zero", "mean" and "base"')
        if emb:
            rows = ckpt.tensors[emb[0]].shape[0]
            used = int((plan.index[name] >= 0).sum())
            if rows > used:
                report.warn("W314", f"{rows - used} of `{name}`'s {rows} rows of "
                            f"{_names(emb)} are not tokens of the output's vocabulary and "
                            "are not used", st.name.span,
                            "tokens of other models than the one `set vocab` names, and "
                            "rows past a tokenizer's last token (padding), are not used; "
                            '`set vocab = "union"` keeps every model\'s tokens')
    return plan


def _names(tensors: list[str]) -> str:
    return ", ".join(f"`{t}`" for t in _ordered(tensors))


def _ordered(tensors) -> list[str]:
    """Embeddings, then output heads."""
    return sorted(tensors, key=lambda n: ("head" in n or "embed_out" in n, n))


def caching_loader(loader, opened_by_source: dict):
    """`loader`, answering from the checkpoints already opened (source -> checkpoint)."""
    def load(source: str, base_dir: Path):
        got = opened_by_source.get((source, str(base_dir)))
        return got if got is not None else loader(source, base_dir)
    return load


def open_models(statements, loader, base_dir: Path) -> tuple[dict, dict]:
    """The recipe's models opened once: (name -> checkpoint, (source, folder) ->
    checkpoint); those that cannot be opened are left out (reported when read)."""
    by_name, by_source = {}, {}
    for st in statements:
        if isinstance(st, ast.ModelStmt) and st.name.name not in by_name:
            key = (st.source.value, str(base_dir))
            try:
                ck = by_source.get(key) or loader(st.source.value, base_dir)
            except CheckpointError:
                continue
            by_name[st.name.name] = by_source[key] = ck
    return by_name, by_source
