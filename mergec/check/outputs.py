"""`output` statements: the value must be a Model; the option block chooses the storage
dtype and the inputs the config and tokenizer come from."""

from __future__ import annotations

from mergec.check.exprs import Exprs
from mergec.check.program import DELTA, ERROR, MODEL, STRING, CExpr, CInput, Output
from mergec.check.scope import Const, is_error
from mergec.check.suggest import did_you_mean
from mergec.check.walk import first_input
from mergec.io.dtypes import normalize_dtype
from mergec.lang import ast

#: the storage dtypes an output's `dtype` option can choose
OUTPUT_DTYPES = ("float32", "float16", "bfloat16")
OUTPUT_OPTIONS = ("dtype", "tokenizer", "config", "files")


def check_output(exprs: Exprs, st: ast.OutputStmt, value) -> Output | None:
    """The output of statement `st` whose value checked to `value`; None when it is not a
    Model or its options are wrong (reported)."""
    err = exprs.report.error
    if isinstance(value, Const) or value.kind == ERROR:
        return None
    if value.kind != MODEL:
        help_ = ("add it to a base model: `base + (...)`" if value.kind == DELTA else
                 "put the run of blocks into a model with `stack(...)`")
        err("E214", f"output `{st.name.name}` is a {value.kind}, not a Model", st.expr.span,
            help_)
        return None
    dtype, cfg, tok, files = None, None, None, None
    seen: set[str] = set()
    for e in st.options or ():
        key = e.name.name
        if key in seen:
            err("E220", f"option `{key}` is given twice", e.name.span, "remove one of them")
            continue
        seen.add(key)
        if key not in OUTPUT_OPTIONS:
            err("E219", f"unknown output option `{key}`", e.name.span,
                did_you_mean(key, OUTPUT_OPTIONS, "output options are"))
            continue
        if key == "dtype":
            v = exprs.const(e.value)
            if v is None:
                continue
            try:
                d = normalize_dtype(str(v.value)) if v.kind == STRING else None
            except ValueError:
                d = None
            if d not in OUTPUT_DTYPES:
                err("E208", "`dtype` must be \"bfloat16\", \"float16\" or \"float32\"",
                    e.value.span, 'for example `dtype = "bfloat16"`')
                continue
            dtype = d
        else:
            src = _input_ref(exprs, e.value, key)
            if key == "config":
                cfg = src
            elif key == "files":
                files = src
            else:
                tok = src
    first = first_input(value)
    return Output(st.name.name, value, dtype, cfg or first, tok or first, st.span,
                  files_from=files or tok or first)


def _input_ref(exprs: Exprs, e: ast.Expr, key: str) -> CInput | None:
    """The `model` input an option names; None when it names none (reported)."""
    if isinstance(e, ast.Name):
        b = exprs.scope.lookup(e)
        if b is None:
            return None
        if isinstance(b.value, CInput):
            return b.value
        if isinstance(b.value, CExpr) and b.value.kind == ERROR:
            return None
    what = ""
    if isinstance(e, ast.Name) or not isinstance(e, (ast.Num, ast.Str, ast.Bool)):
        v = exprs.value(e) if not isinstance(e, ast.Name) else None
        if v is not None and not is_error(v):
            what = f", found a {v.kind}"
    exprs.report.error("E207", f"`{key}` must name a `model` input{what}", e.span,
                       f"write the name of a `model` statement, e.g. `{key} = base`")
    return None


def select_outputs(checked, names) -> None:
    """Keep only the outputs named in `names` (in the recipe's order) in `checked`; raises
    E312 for a name that is not an output, with the closest one."""
    from mergec.diagnostics import Diagnostic, UsageError

    have = [o.name for o in checked.outputs]
    wanted = list(dict.fromkeys(names))
    unknown = [n for n in wanted if n not in have]
    if unknown:
        raise UsageError([Diagnostic(
            "E312", f"the recipe has no output `{n}`",
            help=did_you_mean(n, have, "its outputs are")) for n in unknown])
    checked.outputs = [o for o in checked.outputs if o.name in wanted]

