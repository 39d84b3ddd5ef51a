"""`output NAME = lowrank(DELTA, rank=R)` (or `energy=E`): a Delta written as a PEFT LoRA
adapter.

Checked from headers alone: the value is a Delta; exactly one of `rank` (a whole number
>= 1) and `energy` (in (0, 1]) is given; the delta has 2-D weights to factor. Its tensors
are sorted into the three groups of :class:`~mergec.check.program.LowRankForm`: the 2-D
`*.weight` matrices that are not embeddings get factors; the rest (embeddings, norms, other
1-D tensors) are written whole in `modules_to_save` (`others = "save"`, the default, which
needs the model the adapter applies to) or left out with a warning (`others = "drop"`);
biases of factored modules are always left out, with a warning (a LoRA pair carries no bias).
"""

from __future__ import annotations

from mergec import arch
from mergec.check.exprs import Exprs
from mergec.check.program import (
    DELTA, ERROR, FORM, NUMBER, STRING, CCall, CExpr, CInput, CLinear, LowRankForm, Output,
)
from mergec.check.scope import Const, is_error
from mergec.check.suggest import known_entries
from mergec.check.walk import first_input
from mergec.check.wheres import apply_wheres
from mergec.io.dtypes import MERGE_DTYPES, normalize_dtype
from mergec.lang import ast

OPTIONS = ("dtype", "others", "base")
#: model types whose linear layers are GPT-2's Conv1D, with weights stored as [in, out]
CONV1D_MODEL_TYPES = ("gpt2",)
PARAMS = ("rank", "energy")
ADAPTER_DTYPES = ("float32", "float16", "bfloat16")


def is_lowrank(e: ast.Expr) -> bool:
    return isinstance(e, ast.Call) and e.func.name == "lowrank"


def module_of(name: str) -> str:
    """The module a tensor belongs to: its name without the last part (`.weight`)."""
    return name.rsplit(".", 1)[0] if "." in name else name


def factored(name: str, shape, dtype: str) -> bool:
    """A tensor whose delta gets a pair of LoRA factors: a 2-D floating-point `*.weight`
    that is not an embedding table."""
    return (len(shape) == 2 and name.endswith(".weight") and dtype in MERGE_DTYPES
            and not arch.is_embedding(name))


def infer_base(e: CExpr) -> CInput | None:
    """The model a delta is taken from, when the expression says so: the one model with a
    negative weight in `ft - base` (and its sums), the `base=` of a merge."""
    if isinstance(e, CLinear):
        neg = {id(t): t for t, c in e.terms if c < 0 and isinstance(t, CInput)}
        pos_models = [t for t, c in e.terms if c > 0 and isinstance(t, CInput)]
        if len(neg) == 1 and pos_models:
            return next(iter(neg.values()))
        return None
    if isinstance(e, CCall) and isinstance(e.base, CInput):
        return e.base
    return None


def check_lowrank_output(exprs: Exprs, st: ast.OutputStmt) -> tuple[CExpr, Output | None]:
    """The value to bind for the output statement `st` (a marker no later statement can
    use) and its Output, or None when something is wrong (reported)."""
    err, warn = exprs.report.error, exprs.report.warn
    call: ast.Call = st.expr
    marker = CExpr(FORM, st.span)
    ok = True
    if len(call.args) != 1:
        err("E260", f"`lowrank` takes one Delta, got {len(call.args)} inputs", call.span,
            "write the difference to extract: `lowrank(tuned - base, rank=16)`")
        for a in call.args:
            exprs.value(a)
        ok = False
        delta = None
    else:
        delta = exprs.whole(exprs.value(call.args[0]))
        if is_error(delta):
            ok = False
        elif isinstance(delta, Const) or delta.kind != DELTA:
            err("E260", f"`lowrank` takes a Delta, found a {delta.kind}", call.args[0].span,
                "subtract the model the adapter will be applied to: `lowrank(tuned - base, "
                "rank=16)`")
            ok = False
    rank = energy = None
    kwargs, good = known_entries(call.kwargs, PARAMS, err, kind="parameter", code="E260",
                                 unknown="for `lowrank`", takes="`lowrank` takes")
    ok = ok and good
    for kw in kwargs:
        key = kw.name.name
        v = exprs.const(kw.value)
        if v is None:
            ok = False
            continue
        x = v.value
        if key == "rank":
            if v.kind != NUMBER or isinstance(x, bool) or float(x) != int(x) or x < 1:
                err("E260", f"`rank` must be a whole number >= 1, found {x!r}", kw.value.span,
                    "for example `rank=16`")
                ok = False
                continue
            rank = int(x)
        else:
            if v.kind != NUMBER or isinstance(x, bool) or not 0 < x <= 1:
                err("E260", f"`energy` must be a number in (0, 1], found {x!r}",
                    kw.value.span, "the share of the delta's squared norm each module "
                    "keeps, for example `energy=0.9`")
                ok = False
                continue
            energy = float(x)
    if ok and (rank is None) == (energy is None):
        err("E260", "`lowrank` takes exactly one of `rank` and `energy`" +
            (", got both" if rank is not None else ""), call.span,
            "`rank=16` keeps 16 singular values per module; `energy=0.9` the fewest that "
            "hold 90% of its squared norm")
        ok = False
    if ok and st.wheres:
        delta = apply_wheres(exprs.calls, delta, st.wheres)
        ok = not is_error(delta)
    dtype, others, base = None, "save", None
    base_span = None
    options, good = known_entries(st.options or (), OPTIONS, err, kind="option", code="E262",
                                  unknown="for an adapter output", takes="adapter outputs take")
    ok = ok and good
    for e in options:
        key = e.name.name
        if key == "base":
            if isinstance(e.value, ast.Name):
                binding = exprs.scope.lookup(e.value)
                b = binding.value if binding is not None else CExpr(ERROR, e.value.span)
            else:
                b = exprs.value(e.value)
            if isinstance(b, CInput):
                base, base_span = b, e.value.span
            elif not is_error(b):
                err("E262", "`base` must name a `model` input", e.value.span,
                    "the model the adapter is applied to, e.g. `base = base`")
                ok = False
            continue
        v = exprs.const(e.value)
        if v is None:
            ok = False
            continue
        if key == "dtype":
            try:
                d = normalize_dtype(str(v.value)) if v.kind == STRING else None
            except ValueError:
                d = None
            if d not in ADAPTER_DTYPES:
                err("E208", "`dtype` must be \"bfloat16\", \"float16\" or \"float32\"",
                    e.value.span, 'for example `dtype = "bfloat16"`')
                ok = False
                continue
            dtype = d
        else:
            if v.kind != STRING or v.value not in ("save", "drop"):
                err("E262", '`others` must be "save" or "drop"', e.value.span,
                    '"save" writes changed embeddings and norms whole (PEFT\'s '
                    'modules_to_save); "drop" leaves them out')
                ok = False
                continue
            others = v.value
    if not ok or delta is None or delta.tensors is None:
        return marker, None
    if base is None:
        base = infer_base(delta)
    lora, saved, dropped, biases = [], [], [], []
    for name, meta in delta.tensors.items():
        if factored(name, meta.shape, meta.dtype):
            lora.append(name)
    modules = {module_of(n) for n in lora}
    for name, meta in delta.tensors.items():
        if name in lora:
            continue
        if module_of(name) in modules:
            biases.append(name)
        elif others == "save" and meta.dtype in MERGE_DTYPES:
            saved.append(name)
        else:
            dropped.append(name)
    if not lora:
        err("E263", "this delta has no 2-D weight to factor", call.args[0].span,
            "`lowrank` extracts a LoRA adapter from the differences of linear layers")
        return marker, None
    if saved and base is None:
        err("E262", f"{len(saved)} tensors of this delta are not low-rank (first: "
            f"`{saved[0]}`) and are written whole, which needs the model the adapter "
            "applies to", call.span,
            "name it with `{ base = MODEL }`, or leave them out with `{ others = \"drop\" }`")
        return marker, None
    if base is not None and base.tensors is not None:
        missing = [n for n in saved if n not in base.tensors]
        if missing:
            err("E303", f"`{missing[0]}` of the delta is not a tensor of `{base.name}`",
                base_span or call.span, "`base` is the model the adapter applies to")
            return marker, None
    if dropped:
        warn("W350", f"{len(dropped)} tensors of the delta are not low-rank and are left out "
             f"of the adapter (first: `{dropped[0]}`)", st.span,
             "the adapter does not change them; `others = \"save\"` writes them whole")
    if biases:
        warn("W351", f"the biases of {len(biases)} factored modules are left out of the "
             f"adapter (first: `{biases[0]}`)", st.span,
             "a LoRA pair changes a module's weight, not its bias")
    src = base or first_input(delta)
    conv1d = (getattr(src, "config", None) or {}).get("model_type") in CONV1D_MODEL_TYPES
    form = LowRankForm(rank, energy, base, tuple(lora), tuple(saved), tuple(dropped),
                       fan_in_fan_out=conv1d)
    return marker, Output(st.name.name, delta, dtype, None, None, st.span, form=form)
