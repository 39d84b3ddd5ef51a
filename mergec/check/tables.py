"""Tensor tables: the tensors (name -> shape, dtype) each value produces.

The table of a merge comes from its operands, which must agree: the same tensor names,
shapes and vocabulary, floating-point dtypes, the same number of blocks. A LoRA adapter
covers some tensors of the model it is combined with. A slice renumbers a run of blocks
from 0; a stack renumbers its runs one after the other, whose blocks must fit together.
All of this is found from the headers, before any tensor byte is read.
"""

from __future__ import annotations

from typing import NamedTuple

from mergec import arch
from mergec.check.program import CExpr, TensorMeta
from mergec.check.report import Reporter
from mergec.check.stacks import first_only, layout, part_prefixes
from mergec.check.walk import first_input, part_model
from mergec.diagnostics import Label
from mergec.io.dtypes import MERGE_DTYPES

_MAX_LISTED = 3


class Table(NamedTuple):
    """The table of a value (None where an input could not be read or the operands do not
    agree: reported already), its number of blocks, and whether it covers only some
    tensors of a model (the others zero: LoRA deltas)."""

    tensors: dict[str, TensorMeta] | None
    n_layers: int | None
    sparse: bool = False


def merged(report: Reporter, operands: list[CExpr], spans) -> Table:
    """The table of a value computed from `operands`, which must agree; reports where
    they do not (`spans`: where each operand is written)."""
    if any(o.tensors is None for o in operands) or not operands:
        return Table(None, operands[0].n_layers if operands else None)
    spans = list(spans or [o.span for o in operands])
    if any(o.sparse for o in operands):
        return _with_adapters(report, operands, spans)
    ref, ref_span = operands[0], spans[0]
    ok = True
    for o, sp in zip(operands[1:], spans[1:]):
        if o is ref:
            continue
        missing = [n for n in ref.tensors if n not in o.tensors]
        extra = [n for n in o.tensors if n not in ref.tensors]
        if (missing or extra) and ref.n_layers and o.n_layers and ref.n_layers != o.n_layers:
            ok = False
            report.error("E303", f"the inputs have different numbers of blocks: {o.n_layers} "
                         f"here, {ref.n_layers} in the other input", sp,
                         "merge runs of equal length (`a.layers[0:4]`), or combine blocks "
                         "with `stack(...)`", (Label(ref_span, f"{ref.n_layers} blocks here"),))
            continue
        tied = _tied_mismatch(ref, o, missing, extra)
        if tied is not None:
            ok = False
            report.error("E313", f"one input ties its output head to its embeddings and the "
                         f"other has a head of its own (`{tied}`)", sp,
                         'choose: `set heads = "untie"` (tied inputs read their head from '
                         'their embeddings; the output gets its own) or `set heads = "tie"` '
                         '(untied heads are not used; the output ties its head)',
                         (Label(ref_span, "compared with this input"),))
            continue
        if missing or extra:
            ok = False
            parts = []
            if missing:
                parts.append(f"{len(missing)} tensor{'s' if len(missing) != 1 else ''} "
                             f"missing here ({_list_names(missing)})")
            if extra:
                parts.append(f"{len(extra)} extra ({_list_names(extra)})")
            report.error("E303", "the inputs do not have the same tensors: " +
                         "; ".join(parts), sp,
                         "merged inputs must share every tensor name; check that they "
                         "are the same architecture",
                         (Label(ref_span, "compared with this input"),))
            continue
        vocab_diag = None
        bad = []
        buffers = []
        for name, m in ref.tensors.items():
            m2 = o.tensors[name]
            if m.shape != m2.shape:
                if is_buffer(m.dtype) and is_buffer(m2.dtype):
                    buffers.append((name, f"{m.dtype}{_shape(m.shape)}",
                                    f"{m2.dtype}{_shape(m2.shape)}"))
                elif arch.is_vocab_tensor(name) and len(m.shape) == len(m2.shape) and \
                        m.shape[1:] == m2.shape[1:]:
                    vocab_diag = (name, m.shape[0], m2.shape[0])
                else:
                    bad.append((name, m.shape, m2.shape))
            elif m.dtype not in MERGE_DTYPES or m2.dtype not in MERGE_DTYPES:
                if is_buffer(m.dtype) and m.dtype == m2.dtype:
                    continue  # carried over; the build checks that the bytes agree
                if is_buffer(m.dtype) and is_buffer(m2.dtype):
                    buffers.append((name, m.dtype, m2.dtype))
                else:
                    bad.append((name, m.dtype, m2.dtype))
        if vocab_diag:
            ok = False
            name, va, vb = vocab_diag
            report.error("E305", f"the vocabulary sizes differ: {vb} tokens here, {va} in the "
                         f"other input (`{name}`)", sp,
                         "mergec never truncates embeddings; give both models the same "
                         "vocabulary first (e.g. transformers' `resize_token_embeddings`), "
                         "or merge only models built on the same tokenizer",
                         (Label(ref_span, f"{va} tokens here"),))
        if buffers:
            ok = False
            name, a, b = buffers[0]
            more = f" (and {len(buffers) - 1} more tensors)" if len(buffers) > 1 else ""
            report.error("E310", f"the non-float tensor `{name}` differs between the inputs: "
                         f"{b} here, {a} in the other input{more}", sp,
                         "integer and boolean tensors (buffers such as `position_ids`) are "
                         "not merged but carried over, so every input must hold the same one",
                         (Label(ref_span, f"{a} here"),))
        if bad:
            ok = False
            name, a, b = bad[0]
            more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
            if isinstance(a, tuple):
                report.error("E304", f"shape mismatch for `{name}`: {_shape(b)} here, "
                             f"{_shape(a)} in the other input{more}", sp,
                             "merged inputs must have the same shapes; are they the same "
                             "model size?", (Label(ref_span, f"{_shape(a)} here"),))
            else:
                odd = b if b not in MERGE_DTYPES else a
                why = ("float8 tensors are read but not merged" if odd.startswith("float8")
                       else "only floating-point tensors can be merged")
                report.error("E306", f"`{name}` holds {b} values here and {a} in the other "
                             f"input; {why}{more}", sp,
                             f"merge tensors of {', '.join(MERGE_DTYPES)}; "
                             "dequantize float8 checkpoints first" if odd.startswith("float8")
                             else None)
    return Table(dict(ref.tensors) if ok else None, ref.n_layers)


def _tied_mismatch(a: CExpr, b: CExpr, missing: list, extra: list) -> str | None:
    """The head tensor, when the only difference between two tables is that one of them
    has the output head of a tied pair (`arch.TIED_HEADS`) and the other, whose config
    ties its head (`tie_word_embeddings` true or absent), does not."""
    pair = arch.head_pair(a.tensors)
    if pair is None or pair[0] not in b.tensors or len(missing) + len(extra) != 1:
        return None
    if pair[1] not in missing + extra:
        return None
    lacking = first_input(b if pair[1] in missing else a)
    cfg = getattr(lacking, "config", None) or {}
    return None if cfg.get("tie_word_embeddings") is False else pair[1]


def is_buffer(dtype: str) -> bool:
    """An integer or boolean tensor (a buffer such as `position_ids`): never merged, carried
    over from the inputs when they all hold the same one."""
    return dtype not in MERGE_DTYPES and not dtype.startswith("float")


def _with_adapters(report: Reporter, operands: list[CExpr], spans: list) -> Table:
    """Tables with LoRA deltas: an adapter covers some tensors of the model it is
    combined with (the others are zero); it must name only tensors the model has, with
    the model's shapes."""
    dense = [(o, sp) for o, sp in zip(operands, spans) if not o.sparse]
    sparse = [(o, sp) for o, sp in zip(operands, spans) if o.sparse]
    if dense:
        base = merged(report, [o for o, _ in dense], [sp for _, sp in dense])
        if base.tensors is None:
            return base
        table, ref_span, what = base.tensors, dense[0][1], "the model it is combined with"
    else:
        base = Table(None, None)
        table, ref_span, what = {}, sparse[0][1], "the other adapter"
    ok = True
    for o, sp in sparse:
        if dense:
            missing = [n for n in o.tensors if n not in table]
            if missing:
                ok = False
                report.error("E303", f"the adapter adapts {len(missing)} tensor"
                             f"{'s' if len(missing) != 1 else ''} that {what} lacks "
                             f"({_list_names(missing)})", sp,
                             "is it an adapter for this model? PEFT names modules after the "
                             "model it was trained on", (Label(ref_span, "this model"),))
                continue
        bad = [(n, m.shape, table[n].shape) for n, m in o.tensors.items()
               if n in table and tuple(table[n].shape) != tuple(m.shape)]
        if bad:
            ok = False
            name, a, b = bad[0]
            report.error("E304", f"the adapter's delta for `{name}` is {_shape(a)}, but it is "
                         f"{_shape(b)} in {what}" +
                         (f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""), sp,
                         "is it an adapter for a model of this size?",
                         (Label(ref_span, f"{_shape(b)} here"),))
        if not dense:
            for n, m in o.tensors.items():
                table.setdefault(n, m)
    if not ok:
        return Table(None, base.n_layers)
    if not dense:
        return Table(dict(table), None, sparse=True)
    return base


def sliced(target: CExpr, start: int, stop: int,
           prefix: str | None = None) -> dict[str, TensorMeta] | None:
    """The table of blocks `start` to `stop - 1` of `target` (of the stack `prefix` when
    given), renumbered from 0."""
    if target.tensors is None:
        return None
    tensors = {}
    for name, meta in target.tensors.items():
        bi = arch.block_index(name)
        if bi is not None and start <= bi < stop and \
                (prefix is None or arch.stack_prefix(name) == prefix):
            tensors[arch.with_block_index(name, bi - start)] = meta
    return tensors


class Stacked(NamedTuple):
    tensors: dict[str, TensorMeta] | None
    n_layers: int | None
    routes: dict | None = None
    counts: dict | None = None


def stacked(report: Reporter, parts: list[CExpr], args, embed: CExpr | None,
            head: CExpr | None, kwargs) -> Stacked:
    """The table of `stack(parts, embed=, head=)` (see `mergec.check.stacks`): the blocks
    of each stack renumbered one run after the other, the tensors outside the blocks from
    `embed=` / `head=` or the parts of their stack."""
    if not (all(p.tensors is not None for p in parts) and
            all(x is None or x.tensors is not None for x in (embed, head))):
        return Stacked(None, None)
    routes, counts = layout(parts, embed, head)
    value = {"embed": embed, "head": head}
    tensors = {n: (value.get(w[0]) or (parts[w[1]] if w[0] == "part" else
                                       part_model(parts[w[1]]))).tensors[inner]
               for n, (w, inner) in routes.items()}
    ok = _stack_fits(report, parts, args, [(embed, "embed"), (head, "head")], kwargs)
    n = next(iter(counts.values()), 0) if counts else 0
    return Stacked(tensors if ok else None, n, routes, counts)


def _stack_fits(report: Reporter, parts, args, extra, kwargs) -> bool:
    """Blocks from different models must have the same shapes to follow each other."""
    def suffixes(p, prefix):
        skip = first_only(part_model(p).tensors or {}, prefix)
        return {arch.with_block_index(n, 0): m.shape for n, m in p.tensors.items()
                if arch.stack_prefix(n) == prefix and arch.with_block_index(n, 0) not in skip}

    ok = True
    groups: dict[str, list] = {}
    for p, a in zip(parts, args):
        for prefix in part_prefixes(p):
            groups.setdefault(prefix, []).append((p, a))
    for prefix, members in groups.items():
        if not _group_fits(report, members, lambda p, prefix=prefix: suffixes(p, prefix)):
            ok = False
    return ok and _stack_ends_fit(report, parts, args, extra, kwargs)


def _group_fits(report: Reporter, members, suffixes) -> bool:
    ok = True
    (p0, a0) = members[0]
    ref = suffixes(p0)
    for p, a in members[1:]:
        mine = suffixes(p)
        bad = [(n, ref[n], s) for n, s in mine.items() if n in ref and ref[n] != s]
        missing = [n for n in ref if n not in mine] + [n for n in mine if n not in ref]
        if bad:
            name, s0, s1 = bad[0]
            generic = name.replace(".0.", ".N.", 1)
            report.error("E304", f"these blocks do not fit the first run: `{generic}` is "
                         f"{_shape(s1)} here, {_shape(s0)} there"
                         + (f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""),
                         a.span, "stacked blocks must come from models of the same size",
                         (Label(a0.span, f"{_shape(s0)} here"),))
            ok = False
        elif missing:
            report.error("E303", "these blocks do not have the same tensors as the first "
                         f"run ({_list_names(missing)})", a.span,
                         "stacked blocks must come from models of the same architecture",
                         (Label(a0.span, "the first run"),))
            ok = False
    return ok


def _stack_ends_fit(report: Reporter, parts, args, extra, kwargs) -> bool:
    """`embed=` and `head=` must fit the blocks and share their vocabulary."""
    ok = True
    first = part_model(parts[0])
    sources = dict((key, src) for src, key in extra)
    emb_src = sources.get("embed") or first
    head_src = sources.get("head") or part_model(parts[-1])
    if ok and emb_src is not head_src and emb_src.tensors and head_src.tensors:
        def rows(src, embedding):
            return {m.shape[0] for n, m in src.tensors.items() if arch.is_vocab_tensor(n)
                    and arch.is_embedding(n) == embedding and m.shape}
        ve, vh = rows(emb_src, True), rows(head_src, False) or rows(head_src, True)
        if len(ve) == 1 and len(vh) == 1 and ve != vh:
            where = next((k.value.span for k in kwargs if k.name.name == "head"),
                         args[-1].span)
            report.error("E305", f"the embeddings come from a model with {ve.pop()} tokens "
                         f"and the output head from one with {vh.pop()}", where,
                         "take the embeddings and the head from models with the same "
                         "vocabulary (`embed=` and `head=` choose them)")
            ok = False
    for kw in kwargs:
        key = kw.name.name
        src = sources.get(key)
        if src is None or src.tensors is None or first.tensors is None:
            continue
        bad = [(n, m.shape, first.tensors[n].shape) for n, m in src.tensors.items()
               if arch.block_index(n) is None and n in first.tensors
               and first.tensors[n].shape != m.shape]
        if bad:
            name, s1, s0 = bad[0]
            report.error("E304", f"`{key}=` does not fit the blocks: `{name}` is {_shape(s1)} "
                         f"here, {_shape(s0)} in the first run's model", kw.value.span)
            ok = False
    return ok


def _shape(s) -> str:
    return "[" + ", ".join(str(x) for x in s) + "]"


def _list_names(names: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:_MAX_LISTED])
    return shown + (f", ... {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")
