"""Expressions and their kinds.

Every expression checks to a `Const` (a Number, Bool, String, List or Ramp) or to a
tensor-valued `CExpr` whose kind is Model, Delta or Layers. Arithmetic over tensors folds
into one linear combination, whose kind follows from its weights: a Model when the models'
weights sum to 1, a Delta when they sum to 0, and otherwise a scaled model, which is only
an operand of more arithmetic. An expression that already failed is marked with the kind
`<error>` and produces no further diagnostics.
"""

from __future__ import annotations

import math

from mergec.check import tables
from mergec.check.calls import Calls
from mergec.check.program import (
    BOOL, DELTA, ERROR, FORM, LAYERS, LIST, MODEL, NUMBER, RAMP, SCALED, STRING, CExpr, CLinear,
    CSlice,
)
from mergec.check.report import Reporter
from mergec.check.scope import Const, Scope, is_error
from mergec.diagnostics import Span
from mergec.lang import ast


def literal_num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


class Exprs:
    def __init__(self, report: Reporter, scope: Scope) -> None:
        self.report, self.scope = report, scope
        self.calls = Calls(self)

    def value(self, e: ast.Expr):
        """The checked value of `e`: a Const or a CExpr."""
        if isinstance(e, ast.Num):
            return Const(NUMBER, e.value, e.span)
        if isinstance(e, ast.Str):
            return Const(STRING, e.value, e.span)
        if isinstance(e, ast.Bool):
            return Const(BOOL, e.value, e.span)
        if isinstance(e, ast.Name):
            b = self.scope.lookup(e)
            if b is None:
                return CExpr(ERROR, e.span)
            v = b.value
            if isinstance(v, Const):
                return Const(v.kind, v.value, e.span)
            if v.kind == FORM:
                self.report.error("E261", f"`{e.id}` is written as an adapter or a mixture "
                                  "of experts; it is not a value other statements can use",
                                  e.span, "use the expression it is made from instead: "
                                  "`let` a name for it and use that name in both places")
                return CExpr(ERROR, e.span)
            return v
        if isinstance(e, ast.ListExpr):
            items = [self.value(i) for i in e.items]
            return Const(LIST, items, e.span)
        if isinstance(e, ast.Neg):
            v = self.value(e.operand)
            if isinstance(v, Const):
                if v.kind == NUMBER:
                    return Const(NUMBER, -v.value, e.span)
                if v.kind != ERROR:
                    self.report.error("E221", f"cannot negate a {v.kind}", e.span)
                return Const(ERROR, None, e.span)
            return self._linear(e.span, [(v, -1.0)], [e.operand.span])
        if isinstance(e, ast.BinOp):
            return self._binop(e)
        if isinstance(e, ast.LayerSlice):
            return self._slice(e)
        if isinstance(e, ast.Call):
            return self.calls.call(e)
        raise TypeError(type(e))  # pragma: no cover

    def const(self, e: ast.Expr) -> Const | None:
        """The value of `e` where a value that is not a tensor is expected; None when it
        is not one (reported)."""
        v = self.value(e)
        if isinstance(v, CExpr):
            if v.kind != ERROR:
                self.report.error("E207", f"expected a value, found a {v.kind}", e.span)
            return None
        if v.kind == ERROR:
            return None
        return v

    def whole(self, v):
        """`v` where a Model, Delta or Layers value is consumed: a scaled model is not one."""
        if isinstance(v, CExpr) and v.kind == SCALED:
            self.report.error(
                "E215", f"this combination of models has total weight {v.weight:g}: "
                "it is neither a Model (weights summing to 1) nor a Delta (summing to 0)",
                v.span, "average models with weights that sum to 1 (`0.5 * a + 0.5 * b`); "
                "scale task vectors instead of models (`base + 2 * (a - base)`)")
            return CExpr(ERROR, v.span)
        return v

    def _binop(self, e: ast.BinOp):
        err = self.report.error
        a, b = self.value(e.left), self.value(e.right)
        if is_error(a) or is_error(b):
            return CExpr(ERROR, e.span)
        ca, cb = isinstance(a, Const), isinstance(b, Const)
        if ca and cb:
            if a.kind == NUMBER and b.kind == NUMBER:
                x, y = a.value, b.value
                if e.op == "/" and y == 0:
                    err("E221", "division by zero", e.right.span)
                    return Const(ERROR, None, e.span)
                try:
                    r = {"+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y,
                         "/": lambda: x / y}[e.op]()
                except OverflowError:
                    r = math.inf
                if not math.isfinite(r):
                    err("E221", f"`{literal_num(x)} {e.op} {literal_num(y)}` is not a finite "
                        "number", e.span, "weights and parameters are finite numbers")
                    return Const(ERROR, None, e.span)
                return Const(NUMBER, r, e.span)
            err("E221", f"`{e.op}` is not defined for {a.kind} and {b.kind}", e.span)
            return Const(ERROR, None, e.span)
        if e.op in ("+", "-"):
            if ca or cb:
                c = a if ca else b
                err("E221", f"cannot {'add' if e.op == '+' else 'subtract'} a {c.kind} "
                    f"{'to' if e.op == '+' else 'from'} a {(b if ca else a).kind}", e.span,
                    "scale tensors with `*`: `0.5 * a + 0.5 * b`" if c.kind == NUMBER
                    else None)
                return CExpr(ERROR, e.span)
            return self._linear(e.span, [(a, 1.0), (b, 1.0 if e.op == "+" else -1.0)],
                                [e.left.span, e.right.span])
        # * and /
        a_span = e.left.span
        if e.op == "*":
            if ca and not cb:
                a, b = b, a
                ca, cb = cb, ca
                a_span = e.right.span
            if not cb:
                err("E221", f"cannot multiply a {a.kind} by a {b.kind}", e.span,
                    "multiply by a number: `0.5 * (a - base)`")
                return CExpr(ERROR, e.span)
        elif ca or not cb:
            err("E221", "only division of a tensor value by a number is defined", e.span)
            return CExpr(ERROR, e.span)
        if b.kind != NUMBER:
            what = "a ramp" if b.kind == RAMP else f"a {b.kind}"
            err("E207", f"a tensor value can only be scaled by a number, not {what}",
                b.span, "to vary a weight with depth, use a method parameter, e.g. "
                "`task_arithmetic(a - base, weight=ramp(0, 1))`" if b.kind == RAMP else None)
            return CExpr(ERROR, e.span)
        if e.op == "/" and b.value == 0:
            err("E221", "division by zero", b.span)
            return CExpr(ERROR, e.span)
        coef = float(b.value) if e.op == "*" else 1.0 / float(b.value)
        if not math.isfinite(coef) or isinstance(a, CLinear) and any(
                not math.isfinite(c * coef) for _, c in a.terms):
            err("E221", "this scaling gives a weight that is not a finite number", e.span,
                "weights and parameters are finite numbers")
            return CExpr(ERROR, e.span)
        return self._linear(e.span, [(a, coef)], [a_span])

    def _linear(self, span: Span, terms, spans) -> CExpr:
        # flattened, with the coefficients of a term written several times added up: a
        # combination has one entry per distinct operand however it was written (`let a2 =
        # a1 + a1` does not double its size)
        coef: dict[int, float] = {}
        first: dict[int, tuple[CExpr, Span]] = {}
        for (t, c), sp in zip(terms, spans):
            inner = [(x, c * k, s) for (x, k), s in zip(t.terms, t.term_spans)] \
                if isinstance(t, CLinear) else [(t, c, sp)]
            for x, k, s in inner:
                if id(x) in coef:
                    coef[id(x)] += k
                else:
                    coef[id(x)] = k
                    first[id(x)] = (x, s)
        flat = [(first[i][0], k) for i, k in coef.items()]
        flat_spans = [first[i][1] for i in coef]
        kinds = {t.kind for t, _ in flat}
        if ERROR in kinds:
            return CExpr(ERROR, span)
        per_term: dict = {}
        for t, c in flat:  # the same input several times adds up
            key = getattr(t, "name", None) or id(t)
            per_term[key] = per_term.get(key, 0.0) + c
        if not all(math.isfinite(c) for _, c in flat) or not all(
                math.isfinite(c) for c in per_term.values()) or not math.isfinite(
                sum(c for t, c in flat if t.kind in (MODEL, LAYERS))):
            self.report.error("E221", "this combination has a weight that is not a finite "
                              "number", span, "weights and parameters are finite numbers")
            return CExpr(ERROR, span)
        if LAYERS in kinds and kinds != {LAYERS}:
            self.report.error("E223", "cannot combine a run of layers with whole models or "
                              "deltas", span, "slice every operand with `.layers[a:b]`, or none")
            return CExpr(ERROR, span)
        weight = sum(c for t, c in flat if t.kind in (MODEL, LAYERS))
        if abs(weight - 1.0) < 1e-9:
            kind = LAYERS if LAYERS in kinds else MODEL
        elif abs(weight) < 1e-9:
            if LAYERS in kinds:
                self.report.error("E215", "differences of layer runs are not supported", span,
                                  "merge whole models, then slice the result: "
                                  "`(base + 0.5 * (math - base)).layers[0:2]`")
                return CExpr(ERROR, span)
            kind = DELTA
        else:
            # a part of a combination (`0.5 * a` in `0.5 * a + 0.5 * b`): fine as an
            # operand of more arithmetic, an error anywhere else (see `whole`)
            kind = SCALED
        if any(t.tensors is None for t, _ in terms):
            # already reported, or inputs not readable
            table = tables.Table(None, next((t.n_layers for t, _ in terms if t.n_layers), None))
        else:
            table = tables.merged(self.report, [t for t, _ in flat], flat_spans)
        return CLinear(kind, span, table.tensors, table.n_layers, table.sparse,
                       terms=tuple(flat), weight=weight, term_spans=tuple(flat_spans))

    def _slice(self, e: ast.LayerSlice):
        target = self.whole(self.value(e.target))
        if is_error(target):
            return CExpr(ERROR, e.span)
        if isinstance(target, Const) or target.kind != MODEL:
            self.report.error("E207", f"`.layers[...]` slices a Model, not a {target.kind}",
                              e.span)
            return CExpr(ERROR, e.span)
        n = target.n_layers
        prefix = None
        if target.tensors is not None and n is not None:
            found = self._stack_of(e, target)
            if found is False:
                return CExpr(ERROR, e.span)
            if found is not None:
                prefix, n = found
        if target.tensors is not None and n is None:
            self.report.error("E308", "this model has no numbered transformer blocks",
                              e.target.span,
                              "`.layers[a:b]` needs tensor names such as `model.layers.0. ...`")
            return CExpr(ERROR, e.span)
        start = 0 if e.start is None else e.start
        stop = e.stop if e.stop is not None else n
        if stop is None:
            return CSlice(LAYERS, e.span, None, None, target=target, start=start, stop=start)
        if stop <= start:
            self.report.error("E302", f"empty layer range `[{start}:{stop}]`", e.span,
                              "the range is half-open: `[a:b]` takes blocks a to b-1, so b > a")
            return CExpr(ERROR, e.span)
        if n is not None and stop > n:
            self.report.error("E301", f"layer range `[{start}:{stop}]` is out of bounds: the "
                              f"model has {n} blocks (0 to {n - 1})", e.span,
                              f"did you mean `[{start}:{n}]`?" if start < n else
                              f"the largest range is `[0:{n}]`")
            return CExpr(ERROR, e.span)
        return CSlice(LAYERS, e.span, tables.sliced(target, start, stop, prefix), stop - start,
                      target=target, start=start, stop=stop, prefix=prefix)

    def _stack_of(self, e: ast.LayerSlice, target):
        """The stack a slice takes blocks from and its block count: None where the model
        has one stack and the slice says `.layers` (the count is the model's); False
        when the stack is ambiguous or unknown (reported)."""
        from mergec import arch
        from mergec.check.suggest import did_you_mean
        from mergec.check.walk import first_input

        names = arch.stack_names(target.tensors)
        prefixes = list(arch.stacks(target.tensors))
        if e.stack is None and len(prefixes) <= 1:
            return None
        what = ", ".join(k for k in names if k != "layers")
        src = e.target.id if isinstance(e.target, ast.Name) else "m"
        if e.stack is None:
            first = next(k for k in names if k != "layers")
            self.report.error("E314", f"this model has {len(prefixes)} layer stacks "
                              f"({what}); `.layers` does not say which", e.span,
                              f"name the stack: `{src}.{first}.layers[...]`")
            return False
        if e.stack not in names:
            self.report.error("E316", f"this model has no layer stack `{e.stack}`", e.span,
                              did_you_mean(e.stack, [k for k in names if k != "layers"] or
                                           list(names), "its stacks are"))
            return False
        prefix = names[e.stack]
        inp = first_input(target)
        key = arch.stack_count_key(getattr(inp, "config", None), prefix)
        count = arch.config_get(inp.config, key) if key else None
        return prefix, count if count is not None else arch.stacks(target.tensors)[prefix]
