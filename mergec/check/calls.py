"""Calls: merge methods validated against the method registry, and the built-ins
`ramp` and `stack`.

A method call is checked for its number of inputs, the kinds of its inputs (all Models,
all Deltas or all Layers; Models with `base=` for the methods over task vectors), and each
parameter: known to the method, given once, of the right type, in range; lists only for
parameters with one value per input, ramps only for those that may vary with depth.
Defaults fill in every parameter the call does not give.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from mergec.check import tables
from mergec.check.methods import BUILTINS, FORMS, REGISTRY, Method, Param, get
from mergec.check.program import (
    BOOL, ERROR, LAYERS, LIST, MODEL, NUMBER, RAMP, STRING, CCall, CExpr, CStack, Ramp,
    kind_text, kinds_text,
)
from mergec.check.scope import Const, is_error
from mergec.check.stats import check_call as check_stats_call
from mergec.check.suggest import did_you_mean
from mergec.diagnostics import Label, Span
from mergec.lang import ast
from mergec.lang.fmt import expr as expr_text, literal

if TYPE_CHECKING:  # exprs imports this module: importing it here at run time is a cycle
    from mergec.check.exprs import Exprs

#: what `param_value` returns for a value that is not valid (reported)
INVALID = object()

_ALTERNATIVES = {"slerp": "for more than two models use `multislerp` or `linear`",
                 "nearswap": "nearswap takes one model and `base=`",
                 "passthrough": "passthrough takes one input"}


class Calls:
    def __init__(self, exprs: Exprs) -> None:
        self.exprs, self.report = exprs, exprs.report

    def call(self, e: ast.Call):
        fname = e.func.name
        if fname == "ramp":
            return self._ramp(e)
        if fname == "stack":
            return self._stack(e)
        if fname == "sweep":
            self.report.error("E272", "`sweep(...)` is allowed only as the whole value of a "
                              "`param`", e.span, "declare `param w = sweep(0.1, 0.2)` and use "
                              "`w` here; each point of the sweep is built as its own output")
            return CExpr(ERROR, e.span)
        if fname in FORMS:
            self.report.error("E261", f"`{fname}(...)` makes an output of its own and cannot be "
                              "part of an expression", e.span,
                              f"write it as the whole value of an output: `output NAME = "
                              f"{fname}(...)`")
            for a in e.args:
                self.exprs.value(a)
            return CExpr(ERROR, e.span)
        method = get(fname)
        if method is None:
            if self.exprs.scope.defines(fname):
                self.report.error("E204", f"`{fname}` is not a merge method", e.func.span,
                                  f"`{fname}` is a value; call a method such as `linear(...)`")
            else:
                self.report.error("E204", f"unknown merge method `{fname}`", e.func.span,
                                  did_you_mean(fname, [*REGISTRY, *BUILTINS, *FORMS],
                                               "methods are"))
            for a in e.args:
                self.exprs.value(a)
            return CExpr(ERROR, e.span)
        return self._method_call(e, method)

    def _method_call(self, e: ast.Call, method: Method):
        err = self.report.error
        fname = e.func.name
        inputs = [self.exprs.whole(self.exprs.value(a)) for a in e.args]
        ok = True
        stray = []  # values written where inputs go: likely parameters without a name
        missing_required = [p for p in method.params if p.required and e.kwarg(p.name) is None]
        for i, (a, v) in enumerate(zip(e.args, inputs)):
            if isinstance(v, Const) and v.kind == LIST:
                err("E207", f"the inputs of `{fname}` are written one by one, not as a list",
                    a.span, f"write `{fname}(a, b, ...)`")
                ok = False
                stray.append(i)
            elif isinstance(v, Const) and v.kind != ERROR:
                guess = (f"did you mean `{missing_required[0].name}={expr_text(a)}`?"
                         if len(missing_required) == 1 else
                         "parameters are passed by name, e.g. `t=0.5`")
                err("E207", f"input {i + 1} of `{fname}` is a {v.kind}; "
                    "inputs are models, deltas or layer runs", a.span, guess)
                ok = False
                stray.append(i)
            elif is_error(v):
                ok = False
        inputs = [v for i, v in enumerate(inputs) if i not in stray]
        n = len(inputs)
        if not stray and (n < method.min_inputs or
                          (method.max_inputs is not None and n > method.max_inputs)):
            err("E206", f"`{fname}` takes {method.arity_text()}, got {n}", e.span,
                _ALTERNATIVES.get(fname) or f"see `mergec methods {fname}`")
            ok = False
        params: dict[str, Any] = {}
        base = None
        seen: dict[str, Span] = {}
        stats_kw: dict[str, ast.Kwarg] = {}  # `stats=` and `fallback=` (mergec.check.stats)
        for kw in e.kwargs:
            key = kw.name.name
            if key in seen:
                err("E220", f"`{key}` is given twice", kw.name.span, "remove one of them",
                    (Label(seen[key], "first given here"),))
                ok = False
                continue
            seen[key] = kw.name.span
            if key in ("stats", "fallback"):
                if method.stats is None:
                    err("E250", f"`{fname}` does not take `{key}=`", kw.name.span,
                        "statistics are read by " + ", ".join(
                            f"`{m.name}`" for m in REGISTRY.values() if m.stats))
                    ok = False
                else:
                    stats_kw[key] = kw
                continue
            if key == "base":
                if method.base != "delta":
                    err("E216", f"`{fname}` does not take `base=`", kw.name.span,
                        f"`{fname}` merges its inputs as they are")
                    ok = False
                    continue
                bv = self.exprs.whole(self.exprs.value(kw.value))
                if is_error(bv):
                    ok = False
                elif isinstance(bv, Const) or bv.kind != MODEL:
                    err("E207", f"`base=` expects a Model, found a {bv.kind}", kw.value.span)
                    ok = False
                else:
                    base = bv
                continue
            p = method.param(key)
            if p is None:
                err("E205", f"unknown parameter `{key}` for `{fname}`", kw.name.span,
                    did_you_mean(key, list(method.param_names) +
                                 (["base"] if method.base == "delta" else []),
                                 f"`{fname}` takes"))
                ok = False
                continue
            pv = self.param_value(fname, p, kw.value, n)
            if pv is INVALID:
                ok = False
                continue
            params[key] = pv
        for p in method.params:
            if p.name not in params:
                if p.name in seen or stray:
                    ok = False  # given but invalid (already reported), or written unnamed
                elif p.required:
                    err("E209", f"`{fname}` needs the parameter `{p.name}`", e.span,
                        f"add `{p.name}=...` ({p.doc})")
                    ok = False
                else:
                    params[p.name] = (tuple([p.default] * len(inputs)) if p.per_input
                                      else p.default)
        if not ok:
            return CExpr(ERROR, e.span)
        problem = method.check(params, n) if method.check is not None else None
        if problem:  # the method's own rule on its parameters together
            err("E208", f"`{fname}`: {problem}", e.span, f"see `mergec methods {fname}`")
            return CExpr(ERROR, e.span)
        result = self._result_kind(e, method, inputs, base)
        if result is None:
            return CExpr(ERROR, e.span)
        table = tables.merged(self.report, list(inputs) + ([base] if base is not None else []),
                              [a.span for a in e.args] +
                              ([e.kwarg("base").value.span] if base is not None else []))
        if "weight" in params and method.traits.normalizes(params):
            w = params["weight"]
            block = zero_sum_block(w, [None, *range(table.n_layers or 0)], table.n_layers)
            if block is not False:
                err("E208", f"the weights of `{fname}` sum to 0{zero_sum_text(w, block)}, "
                    "so they cannot be "
                    "normalized", e.kwarg("weight").value.span, zero_sum_help(method))
                return CExpr(ERROR, e.span)
        stats, fallback = (), None
        if method.stats is not None:
            got = check_stats_call(self.exprs, e, method, inputs, result, table.tensors,
                                   stats_kw)
            if got is None:
                return CExpr(ERROR, e.span)
            stats, fallback = got
        return CCall(result, e.span, table.tensors, table.n_layers, table.sparse,
                     method=method, inputs=tuple(inputs), base=base, params=params,
                     stats=stats, fallback=fallback)

    def _result_kind(self, e: ast.Call, method: Method, inputs: list[CExpr],
                     base: CExpr | None) -> str | None:
        """The kind of a call's value from its inputs' (which must be alike); None when
        they do not fit the method (reported)."""
        fname = e.func.name
        kinds = {v.kind for v in inputs}
        if len(kinds) > 1:
            first = inputs[0].kind
            odd = next(i for i, v in enumerate(inputs) if v.kind != first)
            self.report.error(
                "E223", f"the inputs of `{fname}` mix {kinds_text(first)} and "
                f"{kinds_text(inputs[odd].kind)}",
                e.args[odd].span, "pass only models, only deltas (`a - base`), or only "
                "layer runs", (Label(e.args[0].span, f"this one is {kind_text(first)}"),))
            return None
        kind = kinds.pop()
        if method.base != "delta":
            return kind
        if base is not None:
            if kind != MODEL:
                self.report.error(
                    "E207", f"with `base=`, the inputs of `{fname}` are models; found "
                    f"{kinds_text(kind)}", e.span, "pass the fine-tuned models themselves: "
                    f"`{fname}(a, b, base=base)`")
                return None
            return MODEL
        if kind == MODEL and not method.models_without_base:
            self.report.error(
                "E216", f"`{fname}` merges task vectors: give it `base=` or deltas", e.span,
                f"write `{fname}(a, b, base=base)` or `{fname}(a - base, b - base)`")
            return None
        return kind

    def param_value(self, fname: str, p: Param, value: ast.Expr, n_inputs: int):
        """The value of parameter `p` of method `fname` over `n_inputs` inputs: a constant,
        a Ramp, or a tuple of those with one per input; INVALID when it is not valid
        (reported)."""
        v = self.exprs.value(value)
        if is_error(v):
            return INVALID
        if isinstance(v, CExpr):
            self.report.error("E207", f"`{p.name}` expects a {p.type_text}, found a {v.kind}",
                              value.span)
            return INVALID
        if v.kind == LIST:
            if not p.per_input:
                self.report.error("E207", f"`{p.name}` of `{fname}` takes one value, not a "
                                  "list", value.span)
                return INVALID
            if len(v.value) != n_inputs:
                self.report.error(
                    "E210", f"`{p.name}` has {len(v.value)} value"
                    f"{'s' if len(v.value) != 1 else ''} for {n_inputs} input"
                    f"{'s' if n_inputs != 1 else ''}", value.span,
                    "give one value per input, in the order of the inputs, or one value for all")
                return INVALID
            items = []
            for item in v.value:
                one = self._scalar_param(p, item, fname)
                if one is INVALID:
                    return INVALID
                items.append(one)
            return tuple(items)
        one = self._scalar_param(p, v, fname)
        if one is INVALID:
            return INVALID
        if p.per_input:
            return tuple([one] * max(n_inputs, 1))
        return one

    def _scalar_param(self, p: Param, v, fname: str):
        err = self.report.error
        if isinstance(v, CExpr) or v.kind == ERROR:
            if isinstance(v, CExpr) and v.kind != ERROR:
                err("E207", f"`{p.name}` expects a {p.type_text}, found a {v.kind}", v.span)
            return INVALID
        if v.kind == RAMP:
            if p.type not in ("number",) or not p.rampable:
                err("E207", f"`{p.name}` of `{fname}` cannot vary with depth", v.span)
                return INVALID
            for a in v.value.anchors:
                msg = p.check_value(a)
                if msg:
                    err("E208", f"`{p.name}` of `{fname}` {msg}; the ramp reaches {a:g}",
                        v.span)
                    return INVALID
            return v.value
        expected = {"number": NUMBER, "int": NUMBER, "bool": BOOL, "string": STRING}[p.type]
        if v.kind == STRING and expected == NUMBER and _is_number_text(v.value):
            err("E207", f"`{p.name}` of `{fname}` expects a number, found a String", v.span,
                f"remove the quotes: `{p.name}={v.value}`")
            return INVALID
        if v.kind == NUMBER and not math.isfinite(v.value):
            err("E208", f"`{p.name}` of `{fname}` is not a finite number", v.span)
            return INVALID
        if v.kind != expected:
            err("E207", f"`{p.name}` of `{fname}` expects a {p.type_text}, found a {v.kind}",
                v.span, (f"write `{p.name}=true` or `{p.name}=false`" if p.type == "bool" else
                         f"one of {p.range_text()}" if p.choices else None))
            return INVALID
        msg = p.check_value(v.value)
        if msg:
            err("E208", f"`{p.name}` of `{fname}` {msg}, got {literal(v.value)}", v.span)
            return INVALID
        return v.value

    def _ramp(self, e: ast.Call) -> Const:
        if e.kwargs:
            self.report.error("E218", "`ramp` takes only numbers", e.kwargs[0].span)
            return Const(ERROR, None, e.span)
        if not e.args:
            self.report.error("E218", "`ramp` needs at least one value", e.span,
                              "e.g. `ramp(0, 0.5, 1)`: anchors placed evenly from the first "
                              "block to the last")
            return Const(ERROR, None, e.span)
        vals = []
        for a in e.args:
            v = self.exprs.value(a)
            if is_error(v):
                return Const(ERROR, None, e.span)
            if isinstance(v, CExpr) or v.kind != NUMBER:
                self.report.error("E218", f"`ramp` takes numbers, found a {v.kind}", a.span)
                return Const(ERROR, None, e.span)
            if not math.isfinite(v.value):
                self.report.error("E208", "`ramp` takes finite numbers, found "
                                  f"{v.value}", a.span)
                return Const(ERROR, None, e.span)
            vals.append(float(v.value))
        return Const(RAMP, Ramp(tuple(vals)), e.span)

    def _stack(self, e: ast.Call) -> CExpr:
        err = self.report.error
        parts = [self.exprs.whole(self.exprs.value(a)) for a in e.args]
        ok = True
        if not parts:
            err("E206", "`stack` takes at least 1 input, got 0", e.span)
            ok = False
        for a, v in zip(e.args, parts):
            if is_error(v):
                ok = False
            elif isinstance(v, Const) or v.kind not in (LAYERS, MODEL):
                err("E207", "`stack` takes runs of layers (`x.layers[a:b]`) or models, "
                    f"found a {v.kind}", a.span)
                ok = False
        embed = head = None
        for kw in e.kwargs:
            if kw.name.name not in ("embed", "head"):
                err("E205", f"unknown parameter `{kw.name.name}` for `stack`", kw.name.span,
                    did_you_mean(kw.name.name, ["embed", "head"], "`stack` takes"))
                ok = False
                continue
            v = self.exprs.whole(self.exprs.value(kw.value))
            if is_error(v):
                ok = False
            elif isinstance(v, Const) or v.kind != MODEL:
                err("E207", f"`{kw.name.name}=` expects a Model, found a {v.kind}",
                    kw.value.span)
                ok = False
            elif kw.name.name == "embed":
                embed = v
            else:
                head = v
        if not ok:
            return CExpr(ERROR, e.span)
        table = tables.stacked(self.report, parts, e.args, embed, head, e.kwargs)
        return CStack(MODEL, e.span, table.tensors, table.n_layers, parts=tuple(parts),
                      embed=embed, head=head, routes=table.routes, counts=table.counts)


def _is_number_text(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def zero_sum_block(weights, blocks, n_layers: int | None) -> int | None | bool:
    """Where normalizing `weights` (numbers and ramps, one per input) would divide by zero:
    the first of `blocks` (layer indices, None for the tensors outside the layers) whose
    weights sum to 0, or False when there is none. Ramps are evaluated as the lowering
    evaluates them."""
    if not isinstance(weights, tuple):
        return False
    for block in blocks:
        vals = [w.at(block, n_layers) if isinstance(w, Ramp) else w for w in weights]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            return False
        try:
            total = math.fsum(vals)
        except OverflowError:  # weights near 1e308: their sum is not 0
            continue
        if abs(total) < 1e-12:
            return block
    return False


def zero_sum_help(method: Method) -> str:
    return "use weights with a non-zero sum at every layer" + (
        ", or `normalize=false`" if method.param("normalize") is not None else "")


def zero_sum_text(weights, block) -> str:
    """How an E208 "sum to 0" message says where."""
    if not any(isinstance(w, Ramp) for w in weights):
        return ""
    if block is None:
        return (" outside the layers (embeddings, final norm, head), where a ramp takes its "
                "first value")
    return f" at layer {block} (counting from 0)"
