"""Syntax tree -> checked program, reading only config.json and tensor headers.

The checker walks the statements in order, resolving names, computing the kind of every
expression (Model, Delta, Layers, Number, ...), validating calls against the method
registry, and — for tensor-valued expressions — the table of tensors each produces, so that
missing tensors, shape and vocabulary mismatches and layer ranges are found before any
tensor byte is read. It keeps going after a problem, so a recipe's problems are all
reported at once; an expression that already failed is marked with the kind `<error>` and
produces no further diagnostics.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable

from mergec import arch
from mergec.check.program import (
    BOOL, DEFAULT_SEED, DELTA, ERROR, LAYERS, LIST, MODEL, NUMBER, RAMP, SCALED, STRING,
    CAdapter, CCall, CExpr, CheckedProgram, CInput, CLinear, CSlice, CStack, Output, Override, Ramp,
    Settings, TensorMeta,
)
from mergec.check.suggest import did_you_mean
from mergec.diagnostics import Diagnostic, Label, MergecError, Span
from mergec.lang import ast
from mergec import methods as registry

FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
OUTPUT_DTYPES = ("float32", "float16", "bfloat16")
OUTPUT_OPTIONS = ("dtype", "tokenizer", "config")
BUILTINS = ("stack", "ramp")
SETTINGS = {
    "seed": "a whole number >= 0",
    "backend": '"auto", "torch", "jax" or "reference"',
    "device": '"auto", "cpu", "cuda", "cuda:N" or "gpu"',
    "shard_size": 'a size such as "5GB"',
    "max_memory": 'a size such as "8GB"',
}
_MAX_LISTED = 3
_SETTING_HELP = {
    "seed": "for example `set seed = 42`; it seeds every random method, per tensor",
    "backend": 'for example `set backend = "torch"`',
    "device": 'for example `set device = "cpu"`',
    "shard_size": 'for example `set shard_size = "2GB"`',
    "max_memory": 'for example `set max_memory = "8GB"`',
}


class _Const:
    """A non-tensor value during checking."""

    def __init__(self, kind: str, value: Any, span: Span):
        self.kind, self.value, self.span = kind, value, span


class _Binding:
    def __init__(self, kind_of_stmt: str, value, span: Span):
        self.stmt, self.value, self.span = kind_of_stmt, value, span


InputLoader = Callable[[str, Path], Any]


def _default_loader(raw: str, base_dir: Path):
    from mergec.io import open_input

    return open_input(raw, base_dir)


def _default_adapter_loader(raw: str, base_dir: Path):
    from mergec.io.adapter import open_adapter

    return open_adapter(raw, base_dir)


class Checker:
    def __init__(self, program: ast.Program, *, overrides: dict[str, str] | None = None,
                 loader: InputLoader | None = None, base_dir: Path | None = None,
                 adapter_loader: InputLoader | None = None):
        self.program = program
        self.overrides = dict(overrides or {})
        self.loader = loader or _default_loader
        self.adapter_loader = adapter_loader or _default_adapter_loader
        self.base_dir = base_dir if base_dir is not None else \
            Path(program.file).resolve().parent
        self.diags: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []
        self.env: dict[str, _Binding] = {}
        self.later_defs: dict[str, Span] = {}
        self.inputs: dict[str, CInput] = {}
        self.params: dict[str, Any] = {}
        self.settings: dict[str, Any] = {}
        self.outputs: list[Output] = []

    # -- reporting ----------------------------------------------------------------------
    def err(self, code: str, message: str, span: Span | None, help: str | None = None,
            labels: tuple[Label, ...] = ()) -> None:
        self.diags.append(Diagnostic(code, message, span, help, labels))

    # -- entry ----------------------------------------------------------------------------
    def run(self) -> CheckedProgram:
        stmts = self.program.statements
        for st in stmts:
            self.later_defs.setdefault(st.name.name, st.name.span)
        used_overrides: set[str] = set()
        for st in stmts:
            name = st.name.name
            if isinstance(st, ast.SetStmt):
                self._setting(st)
                continue
            if name in self.env:
                first = self.env[name].span
                self.err("E202", f"`{name}` is defined twice", st.name.span,
                         "give each value its own name",
                         (Label(first, "first defined here"),))
                continue
            if isinstance(st, ast.ModelStmt):
                value = self._model(st)
            elif isinstance(st, ast.AdapterStmt):
                value = self._adapter(st)
            elif isinstance(st, ast.ParamStmt):
                value = self._param(st)
                used_overrides.add(name)
            elif isinstance(st, ast.LetStmt):
                value = self._tensor_stmt(st)
            else:
                value = self._tensor_stmt(st)
                self._output(st, value)
            self.env[name] = _Binding(st.keyword, value, st.name.span)
        for name, raw in self.overrides.items():
            if name not in used_overrides:
                params = [s.name.name for s in stmts if isinstance(s, ast.ParamStmt)]
                self.err("E212", f"`--set {name}={raw}`: the recipe has no param `{name}`",
                         None, did_you_mean(name, params, "its params are") or
                         "the recipe declares no `param`; add `param "
                         f"{name} = ...` to make it settable")
        if not self.outputs and not any(d.severity == "error" for d in self.diags):
            self.err("E224", "the recipe has no `output`", None,
                     "add a statement such as `output merged = linear(a, b)`")
        if not self.diags:
            from mergec.io.errors import CheckpointError

            for out in self.outputs:
                try:
                    derive_output_config(out)
                except CheckpointError as e:
                    self.diags.append(e.to_diagnostic(out.span))
        if self.diags:
            raise MergecError(sorted(self.diags + self.warnings, key=_diag_key))
        return CheckedProgram(self.program.file, self.program.text, self.inputs, self.params,
                              self._settings(), self.outputs, self.program,
                              overrides=dict(self.overrides), warnings=list(self.warnings))

    # -- statements -----------------------------------------------------------------------
    def _model(self, st: ast.ModelStmt) -> CExpr:
        from mergec.io.errors import CheckpointError

        try:
            ckpt = self.loader(st.source.value, self.base_dir)
        except CheckpointError as e:
            self.diags.append(e.to_diagnostic(st.source.span))
            return CExpr(ERROR, st.span)
        tensors = {n: TensorMeta(tuple(t.shape), t.dtype) for n, t in ckpt.tensors.items()}
        n_layers = arch.layer_count(ckpt.config, tensors)
        node = CInput(MODEL, st.name.span, tensors, n_layers, name=st.name.name,
                      checkpoint=ckpt, config=ckpt.config)
        self.inputs[st.name.name] = node
        return node

    def _adapter(self, st: ast.AdapterStmt) -> CExpr:
        from mergec.io.errors import CheckpointError

        try:
            ad = self.adapter_loader(st.source.value, self.base_dir)
        except CheckpointError as e:
            self.diags.append(e.to_diagnostic(st.source.span))
            return CExpr(ERROR, st.span)
        tensors = {n: TensorMeta(p.shape, "float32") for n, p in ad.pairs.items()}
        node = CAdapter(DELTA, st.name.span, tensors, None, sparse=True, name=st.name.name,
                        adapter=ad)
        self.inputs[st.name.name] = node
        return node

    def _param(self, st: ast.ParamStmt):
        name = st.name.name
        raw = self._expr(st.value)
        if isinstance(raw, CExpr) and raw.kind != ERROR:
            self.err("E222", f"param `{name}` must be a number, true/false or a string, found "
                     f"a {raw.kind}", st.value.span,
                     "params hold settings that `--set` can change; use `let` for models")
            return _Const(ERROR, None, st.span)
        value = self._const_expr(st.value)
        if value is None:
            return _Const(ERROR, None, st.span)
        if value.kind not in (NUMBER, BOOL, STRING):
            self.err("E222", f"param `{name}` must be a number, true/false or a string",
                     st.value.span)
            return _Const(ERROR, None, st.span)
        if name in self.overrides:
            raw = self.overrides[name]
            parsed = _parse_literal(raw)
            kind = _kind_of_literal(parsed)
            if kind != value.kind:
                self.err("E213", f"`--set {name}={raw}` gives a {kind}, but param `{name}` "
                         f"is a {value.kind}", st.value.span,
                         f"give a {value.kind.lower()}, like the recipe's "
                         f"`{_literal_text(value.value)}`")
                return _Const(ERROR, None, st.span)
            value = _Const(kind, parsed, st.value.span)
        self.params[name] = value.value
        return value

    def _setting(self, st: ast.SetStmt) -> None:
        name = st.name.name
        if name not in SETTINGS:
            self.err("E211", f"unknown setting `{name}`", st.name.span,
                     did_you_mean(name, SETTINGS, "settings are"))
            return
        if name in self.settings:
            self.err("E202", f"setting `{name}` is set twice", st.name.span)
            return
        v = self._const_expr(st.value)
        if v is None:
            return
        val, ok = v.value, True
        if name == "seed":
            ok = v.kind == NUMBER and float(val).is_integer() and val >= 0
        elif name == "backend":
            ok = val in ("auto", "torch", "jax", "reference")
        elif name == "device":
            ok = isinstance(val, str) and (val in ("auto", "cpu", "cuda", "gpu") or
                                           re.fullmatch(r"cuda:\d+", val) is not None)
        elif name in ("shard_size", "max_memory"):
            from mergec.io.sizes import parse_size

            try:
                val = parse_size(str(val)) if v.kind in (STRING, NUMBER) else None
                ok = val is not None and val > 0
            except ValueError:
                ok = False
        if not ok:
            self.err("E208", f"`set {name}` expects {SETTINGS[name]}, found "
                     f"{_literal_text(v.value)}", st.value.span, _SETTING_HELP[name])
            return
        self.settings[name] = int(val) if name == "seed" else val

    def _settings(self) -> Settings:
        s = self.settings
        return Settings(seed=s.get("seed", DEFAULT_SEED), seed_explicit="seed" in s,
                        backend=s.get("backend", "auto"), device=s.get("device", "auto"),
                        shard_size=s.get("shard_size"), max_memory=s.get("max_memory"))

    def _tensor_stmt(self, st) -> CExpr:
        value = self._expr(st.expr)
        if isinstance(st, ast.OutputStmt):
            value = self._whole(value)
        if isinstance(value, _Const):
            if value.kind != ERROR:
                if isinstance(st, ast.OutputStmt):
                    self.err("E214", f"output `{st.name.name}` is a {value.kind}, not a Model",
                             st.expr.span, "an output is a merge of models, such as "
                             "`linear(a, b)`")
                elif st.wheres:
                    self.err("E217", "`where` applies to merge calls; this is a "
                             f"{value.kind}", st.wheres[0].span)
            return value
        if st.wheres:
            # the overrides belong to this statement only: give it its own copy of the calls
            # (a `let` used elsewhere keeps its own parameters)
            value = _copy_tree(value)
            self._apply_wheres(value, st.wheres)
        return value

    def _output(self, st: ast.OutputStmt, value) -> None:
        if isinstance(value, _Const) or value.kind == ERROR:
            return
        if value.kind != MODEL:
            help_ = ("add it to a base model: `base + (...)`" if value.kind == DELTA else
                     "put the run of blocks into a model with `stack(...)`")
            self.err("E214", f"output `{st.name.name}` is a {value.kind}, not a Model",
                     st.expr.span, help_)
            return
        dtype, cfg, tok = None, None, None
        seen: set[str] = set()
        for e in st.options or ():
            key = e.name.name
            if key in seen:
                self.err("E220", f"option `{key}` is given twice", e.name.span,
                         "remove one of them")
                continue
            seen.add(key)
            if key not in OUTPUT_OPTIONS:
                self.err("E219", f"unknown output option `{key}`", e.name.span,
                         did_you_mean(key, OUTPUT_OPTIONS, "output options are"))
                continue
            if key == "dtype":
                v = self._const_expr(e.value)
                if v is None:
                    continue
                from mergec.io.dtypes import normalize_dtype

                try:
                    d = normalize_dtype(str(v.value)) if v.kind == STRING else None
                except ValueError:
                    d = None
                if d not in OUTPUT_DTYPES:
                    self.err("E208", "`dtype` must be \"bfloat16\", \"float16\" or \"float32\"",
                             e.value.span, 'for example `dtype = "bfloat16"`')
                    continue
                dtype = d
            else:
                src = self._input_ref(e.value, key)
                if key == "config":
                    cfg = src
                else:
                    tok = src
        first = _first_input(value)
        self.outputs.append(Output(st.name.name, value, dtype, cfg or first, tok or first,
                                   st.span))

    def _input_ref(self, e: ast.Expr, key: str) -> CInput | None:
        if isinstance(e, ast.Name):
            b = self._lookup(e)
            if b is None:
                return None
            if isinstance(b.value, CInput):
                return b.value
            if isinstance(b.value, CExpr) and b.value.kind == ERROR:
                return None
        what = ""
        if isinstance(e, ast.Name) or not isinstance(e, (ast.Num, ast.Str, ast.Bool)):
            v = self._expr(e) if not isinstance(e, ast.Name) else None
            if v is not None and not _is_err(v):
                what = f", found a {v.kind}"
        self.err("E207", f"`{key}` must name a `model` input{what}", e.span,
                 f"write the name of a `model` statement, e.g. `{key} = base`")
        return None

    # -- where -----------------------------------------------------------------------------
    def _apply_wheres(self, value: CExpr, wheres) -> None:
        calls = [c for c in _walk(value) if isinstance(c, CCall) and c.method is not None]
        for w in wheres:
            globs = tuple(s.pattern for s in w.selectors if isinstance(s, ast.GlobSel))
            layers = tuple((s.start, s.stop) for s in w.selectors
                           if isinstance(s, ast.LayersSel))
            for s in w.selectors:
                if isinstance(s, ast.LayersSel) and s.start is not None and \
                        s.stop is not None and s.stop <= s.start:
                    self.err("E302", f"empty layer range `layers[{s.start}:{s.stop}]`", s.span)
                elif isinstance(s, ast.LayersSel):
                    frames = [c.n_layers for c in calls if c.n_layers is not None]
                    n = max(frames) if frames and len(frames) == len(calls) else None
                    lo = s.start or 0
                    if n is not None and (lo >= n or (s.stop is not None and s.stop > n)):
                        self.err("E301", f"`layers[{_slice_text(s.start, s.stop)}]` is out of "
                                 f"bounds: the merged blocks are numbered 0 to {n - 1}", s.span,
                                 f"the largest range is `layers[0:{n}]`")
            values = []
            for en in w.entries:
                key = en.name.name
                takers = [c for c in calls if c.method.param(key) is not None]
                if not takers:
                    names = sorted({p for c in calls for p in c.method.param_names})
                    self.err("E217", f"no merge call in this expression takes `{key}`",
                             en.name.span, did_you_mean(key, names, "their parameters are")
                             if names else "`where` applies to merge calls")
                    continue
                pv = self._param_value(takers[0], takers[0].method.param(key), en.value,
                                       len(takers[0].inputs))
                if pv is _BAD:
                    continue
                for c in takers[1:]:
                    self._param_value(c, c.method.param(key), en.value, len(c.inputs))
                values.append((key, pv))
            ov = Override(globs, layers, tuple(values), w.span)
            for c in calls:
                c.overrides = c.overrides + (ov,)
            tables = [c.tensors for c in calls if c.tensors is not None]
            if tables and len(tables) == len(calls) and not any(
                    ov.matches(n, arch.block_index(n)) for t in tables for n in t):
                self.warnings.append(Diagnostic(
                    "W301", "this `where` matches no tensor, so it changes nothing", w.span,
                    "globs match full tensor names: `\"*.mlp.*\"`, not `\"mlp\"`; "
                    "`mergec plan --tensors` lists the names", severity="warning"))

    # -- expressions -----------------------------------------------------------------------
    def _lookup(self, e: ast.Name) -> _Binding | None:
        b = self.env.get(e.id)
        if b is not None:
            return b
        if e.id in self.later_defs and self.later_defs[e.id].start > e.span.start:
            self.err("E203", f"`{e.id}` is used before it is defined", e.span,
                     "move its definition above this line",
                     (Label(self.later_defs[e.id], "defined here"),))
            return None
        names = list(self.env) + [n for n in self.later_defs if n not in self.env]
        self.err("E201", f"unknown name `{e.id}`", e.span,
                 did_you_mean(e.id, [n for n in names if n in self.env] or names,
                              "names defined so far are"))
        return None

    def _const_expr(self, e: ast.Expr) -> _Const | None:
        v = self._expr(e)
        if isinstance(v, CExpr):
            if v.kind != ERROR:
                self.err("E207", f"expected a value, found a {v.kind}", e.span)
            return None
        if v.kind == ERROR:
            return None
        return v

    def _expr(self, e: ast.Expr):
        if isinstance(e, ast.Num):
            return _Const(NUMBER, e.value, e.span)
        if isinstance(e, ast.Str):
            return _Const(STRING, e.value, e.span)
        if isinstance(e, ast.Bool):
            return _Const(BOOL, e.value, e.span)
        if isinstance(e, ast.Name):
            b = self._lookup(e)
            if b is None:
                return CExpr(ERROR, e.span)
            v = b.value
            if isinstance(v, _Const):
                return _Const(v.kind, v.value, e.span)
            return v
        if isinstance(e, ast.ListExpr):
            items = [self._expr(i) for i in e.items]
            return _Const(LIST, items, e.span)
        if isinstance(e, ast.Neg):
            v = self._expr(e.operand)
            if isinstance(v, _Const):
                if v.kind == NUMBER:
                    return _Const(NUMBER, -v.value, e.span)
                if v.kind != ERROR:
                    self.err("E221", f"cannot negate a {v.kind}", e.span)
                return _Const(ERROR, None, e.span)
            return self._linear(e.span, [(v, -1.0)], [e.operand.span])
        if isinstance(e, ast.BinOp):
            return self._binop(e)
        if isinstance(e, ast.LayerSlice):
            return self._slice(e)
        if isinstance(e, ast.Call):
            return self._call(e)
        raise TypeError(type(e))  # pragma: no cover

    def _binop(self, e: ast.BinOp):
        a, b = self._expr(e.left), self._expr(e.right)
        if _is_err(a) or _is_err(b):
            return CExpr(ERROR, e.span)
        ca, cb = isinstance(a, _Const), isinstance(b, _Const)
        if ca and cb:
            if a.kind == NUMBER and b.kind == NUMBER:
                x, y = a.value, b.value
                if e.op == "/" and y == 0:
                    self.err("E221", "division by zero", e.right.span)
                    return _Const(ERROR, None, e.span)
                r = {"+": lambda: x + y, "-": lambda: x - y, "*": lambda: x * y,
                     "/": lambda: x / y}[e.op]()
                return _Const(NUMBER, r, e.span)
            self.err("E221", f"`{e.op}` is not defined for {a.kind} and {b.kind}", e.span)
            return _Const(ERROR, None, e.span)
        if e.op in ("+", "-"):
            if ca or cb:
                c = a if ca else b
                self.err("E221", f"cannot {'add' if e.op == '+' else 'subtract'} a {c.kind} "
                         f"{'to' if e.op == '+' else 'from'} a "
                         f"{(b if ca else a).kind}", e.span,
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
                self.err("E221", f"cannot multiply a {a.kind} by a {b.kind}", e.span,
                         "multiply by a number: `0.5 * (a - base)`")
                return CExpr(ERROR, e.span)
        elif ca or not cb:
            self.err("E221", "only division of a tensor value by a number is defined",
                     e.span)
            return CExpr(ERROR, e.span)
        if b.kind != NUMBER:
            what = "a ramp" if b.kind == RAMP else f"a {b.kind}"
            self.err("E207", f"a tensor value can only be scaled by a number, not {what}",
                     b.span, "to vary a weight with depth, use a method parameter, e.g. "
                     "`task_arithmetic(a - base, weight=ramp(0, 1))`"
                     if b.kind == RAMP else None)
            return CExpr(ERROR, e.span)
        if e.op == "/" and b.value == 0:
            self.err("E221", "division by zero", b.span)
            return CExpr(ERROR, e.span)
        coef = float(b.value) if e.op == "*" else 1.0 / float(b.value)
        return self._linear(e.span, [(a, coef)], [a_span])

    def _linear(self, span: Span, terms, spans) -> CExpr:
        flat: list[tuple[CExpr, float]] = []
        flat_spans: list[Span] = []
        for (t, c), sp in zip(terms, spans):
            if isinstance(t, CLinear):
                flat += [(x, c * k) for x, k in t.terms]
                flat_spans += list(t.term_spans)
            else:
                flat.append((t, c))
                flat_spans.append(sp)
        kinds = {t.kind for t, _ in flat}
        if ERROR in kinds:
            return CExpr(ERROR, span)
        if LAYERS in kinds and kinds != {LAYERS}:
            self.err("E223", "cannot combine a run of layers with whole models or deltas",
                     span, "slice every operand with `.layers[a:b]`, or none")
            return CExpr(ERROR, span)
        weight = sum(c for t, c in flat if t.kind in (MODEL, LAYERS))
        if abs(weight - 1.0) < 1e-9:
            kind = LAYERS if LAYERS in kinds else MODEL
        elif abs(weight) < 1e-9:
            if LAYERS in kinds:
                self.err("E215", "differences of layer runs are not supported", span,
                         "merge whole models, then slice the result: "
                         "`(base + 0.5 * (math - base)).layers[0:2]`")
                return CExpr(ERROR, span)
            kind = DELTA
        else:
            # a part of a combination (`0.5 * a` in `0.5 * a + 0.5 * b`): fine as an
            # operand of more arithmetic, an error anywhere else (see _whole)
            kind = SCALED
        node = CLinear(kind, span, terms=tuple(flat))
        node.weight = weight
        node.term_spans = tuple(flat_spans)
        if any(t.tensors is None for t, _ in terms):
            node.tensors = None  # already reported below, or inputs not readable
            node.n_layers = next((t.n_layers for t, _ in terms if t.n_layers), None)
        else:
            self._merge_tables(node, [t for t, _ in flat], flat_spans)
        return node

    def _whole(self, v):
        """`v` where a Model, Delta or Layers value is consumed: a scaled model is not one."""
        if isinstance(v, CExpr) and v.kind == SCALED:
            self.err("E215", f"this combination of models has total weight {v.weight:g}: "
                     "it is neither a Model (weights summing to 1) nor a Delta (summing to 0)",
                     v.span, "average models with weights that sum to 1 (`0.5 * a + 0.5 * b`); "
                     "scale task vectors instead of models (`base + 2 * (a - base)`)")
            return CExpr(ERROR, v.span)
        return v

    def _slice(self, e: ast.LayerSlice):
        target = self._whole(self._expr(e.target))
        if _is_err(target):
            return CExpr(ERROR, e.span)
        if isinstance(target, _Const) or target.kind != MODEL:
            self.err("E207", f"`.layers[...]` slices a Model, not a {target.kind}", e.span)
            return CExpr(ERROR, e.span)
        n = target.n_layers
        if target.tensors is not None and n is None:
            self.err("E308", "this model has no numbered transformer blocks", e.target.span,
                     "`.layers[a:b]` needs tensor names such as `model.layers.0. ...`")
            return CExpr(ERROR, e.span)
        start = 0 if e.start is None else e.start
        stop = e.stop if e.stop is not None else n
        if stop is None:
            return CSlice(LAYERS, e.span, None, None, target=target, start=start, stop=start)
        if stop <= start:
            self.err("E302", f"empty layer range `[{start}:{stop}]`", e.span,
                     "the range is half-open: `[a:b]` takes blocks a to b-1, so b > a")
            return CExpr(ERROR, e.span)
        if n is not None and stop > n:
            self.err("E301", f"layer range `[{start}:{stop}]` is out of bounds: the model has "
                     f"{n} blocks (0 to {n - 1})", e.span,
                     f"did you mean `[{start}:{n}]`?" if start < n else
                     f"the largest range is `[0:{n}]`")
            return CExpr(ERROR, e.span)
        tensors = None
        if target.tensors is not None:
            tensors = {}
            for name, meta in target.tensors.items():
                bi = arch.block_index(name)
                if bi is not None and start <= bi < stop:
                    tensors[arch.with_block_index(name, bi - start)] = meta
        return CSlice(LAYERS, e.span, tensors, stop - start, target=target, start=start,
                      stop=stop)

    # -- calls -----------------------------------------------------------------------------
    def _call(self, e: ast.Call):
        fname = e.func.name
        if fname == "ramp":
            return self._ramp(e)
        if fname == "stack":
            return self._stack(e)
        method = registry.get(fname)
        if method is None:
            if fname in self.env or fname in self.later_defs:
                self.err("E204", f"`{fname}` is not a merge method", e.func.span,
                         f"`{fname}` is a value; call a method such as `linear(...)`")
            else:
                self.err("E204", f"unknown merge method `{fname}`", e.func.span,
                         did_you_mean(fname, list(registry.REGISTRY) + list(BUILTINS),
                                      "methods are"))
            for a in e.args:
                self._expr(a)
            return CExpr(ERROR, e.span)
        inputs = [self._whole(self._expr(a)) for a in e.args]
        ok = True
        stray = []  # values written where inputs go: likely parameters without a name
        missing_required = [p for p in method.params if p.required and e.kwarg(p.name) is None]
        for i, (a, v) in enumerate(zip(e.args, inputs)):
            if isinstance(v, _Const) and v.kind == LIST:
                self.err("E207", f"the inputs of `{fname}` are written one by one, "
                         "not as a list", a.span,
                         f"write `{fname}(a, b, ...)`")
                ok = False
                stray.append(i)
            elif isinstance(v, _Const) and v.kind != ERROR:
                guess = (f"did you mean `{missing_required[0].name}={_src(a)}`?"
                         if len(missing_required) == 1 else
                         "parameters are passed by name, e.g. `t=0.5`")
                self.err("E207", f"input {i + 1} of `{fname}` is a {v.kind}; "
                         "inputs are models, deltas or layer runs", a.span, guess)
                ok = False
                stray.append(i)
            elif _is_err(v):
                ok = False
        inputs = [v for i, v in enumerate(inputs) if i not in stray]
        n = len(inputs)
        if not stray and (n < method.min_inputs or
                          (method.max_inputs is not None and n > method.max_inputs)):
            alt = {"slerp": "for more than two models use `multislerp` or `linear`",
                   "nearswap": "nearswap takes one model and `base=`",
                   "passthrough": "passthrough takes one input"}.get(fname)
            self.err("E206", f"`{fname}` takes {method.arity_text()}, got {n}", e.span,
                     alt or f"see `mergec methods {fname}`")
            ok = False
        node = CCall(ERROR, e.span, method=method)
        params: dict[str, Any] = {}
        base = None
        seen: dict[str, Span] = {}
        for kw in e.kwargs:
            key = kw.name.name
            if key in seen:
                self.err("E220", f"`{key}` is given twice", kw.name.span,
                         "remove one of them", (Label(seen[key], "first given here"),))
                ok = False
                continue
            seen[key] = kw.name.span
            if key == "base":
                if method.base != "delta":
                    self.err("E216", f"`{fname}` does not take `base=`", kw.name.span,
                             f"`{fname}` merges its inputs as they are")
                    ok = False
                    continue
                bv = self._whole(self._expr(kw.value))
                if _is_err(bv):
                    ok = False
                elif isinstance(bv, _Const) or bv.kind != MODEL:
                    self.err("E207", f"`base=` expects a Model, found a {bv.kind}", kw.value.span)
                    ok = False
                else:
                    base = bv
                continue
            p = method.param(key)
            if p is None:
                self.err("E205", f"unknown parameter `{key}` for `{fname}`", kw.name.span,
                         did_you_mean(key, list(method.param_names) +
                                      (["base"] if method.base == "delta" else []),
                                      f"`{fname}` takes"))
                ok = False
                continue
            pv = self._param_value(node, p, kw.value, n)
            if pv is _BAD:
                ok = False
                continue
            params[key] = pv
        for p in method.params:
            if p.name not in params:
                if p.name in seen or stray:
                    ok = False  # given but invalid (already reported), or written unnamed
                elif p.required:
                    self.err("E209", f"`{fname}` needs the parameter `{p.name}`", e.span,
                             f"add `{p.name}=...` ({p.doc})")
                    ok = False
                else:
                    params[p.name] = (tuple([p.default] * len(inputs)) if p.per_input
                                      else p.default)
        if ok and "weight" in params and params.get("normalize") is True:
            w = params["weight"]
            if isinstance(w, tuple) and all(isinstance(x, (int, float)) for x in w) and \
                    abs(sum(w)) < 1e-12:
                self.err("E208", f"the weights of `{fname}` sum to 0, so they cannot be "
                         "normalized", e.kwarg("weight").value.span,
                         "use weights with a non-zero sum, or `normalize=false`")
                ok = False
        if not ok:
            return CExpr(ERROR, e.span)
        # kinds of inputs and result
        kinds = {v.kind for v in inputs}
        if len(kinds) > 1:
            first = inputs[0].kind
            odd = next(i for i, v in enumerate(inputs) if v.kind != first)
            self.err("E223", f"the inputs of `{fname}` mix {first}s and {inputs[odd].kind}s",
                     e.args[odd].span,
                     "pass only models, only deltas (`a - base`), or only layer runs",
                     (Label(e.args[0].span, f"this one is a {first}"),))
            return CExpr(ERROR, e.span)
        kind = kinds.pop()
        if method.base == "delta":
            if base is not None:
                if kind != MODEL:
                    self.err("E207", f"with `base=`, the inputs of `{fname}` are models; "
                             f"found {kind}s", e.span,
                             "pass the fine-tuned models themselves: "
                             f"`{fname}(a, b, base=base)`")
                    return CExpr(ERROR, e.span)
                result = MODEL
            elif kind == MODEL and not method.models_without_base:
                self.err("E216", f"`{fname}` merges task vectors: give it `base=` or deltas",
                         e.span, f"write `{fname}(a, b, base=base)` or "
                         f"`{fname}(a - base, b - base)`")
                return CExpr(ERROR, e.span)
            else:
                result = kind
        else:
            result = kind
        node.kind = result
        node.inputs = tuple(inputs)
        node.base = base
        node.params = params
        self._merge_tables(node, list(inputs) + ([base] if base is not None else []),
                           [a.span for a in e.args] +
                           ([e.kwarg("base").value.span] if base is not None else []))
        return node

    def _param_value(self, node, p: registry.Param, value: ast.Expr, n_inputs: int):
        fname = node.method.name if getattr(node, "method", None) else "call"
        v = self._expr(value)
        if _is_err(v):
            return _BAD
        if isinstance(v, CExpr):
            self.err("E207", f"`{p.name}` expects a {_ptype(p)}, found a {v.kind}", value.span)
            return _BAD
        if v.kind == LIST:
            if not p.per_input:
                self.err("E207", f"`{p.name}` of `{fname}` takes one value, not a list",
                         value.span)
                return _BAD
            if len(v.value) != n_inputs:
                self.err("E210", f"`{p.name}` has {len(v.value)} value"
                         f"{'s' if len(v.value) != 1 else ''} for {n_inputs} input"
                         f"{'s' if n_inputs != 1 else ''}", value.span,
                         "give one value per input, in the order of the inputs, "
                         "or one value for all")
                return _BAD
            items = []
            for item in v.value:
                one = self._scalar_param(p, item, fname)
                if one is _BAD:
                    return _BAD
                items.append(one)
            return tuple(items)
        one = self._scalar_param(p, v, fname)
        if one is _BAD:
            return _BAD
        if p.per_input:
            return tuple([one] * max(n_inputs, 1))
        return one

    def _scalar_param(self, p, v: _Const, fname: str):
        if isinstance(v, CExpr) or v.kind == ERROR:
            if isinstance(v, CExpr) and v.kind != ERROR:
                self.err("E207", f"`{p.name}` expects a {_ptype(p)}, found a {v.kind}", v.span)
            return _BAD
        if v.kind == RAMP:
            if p.type not in ("number",) or not p.rampable:
                self.err("E207", f"`{p.name}` of `{fname}` cannot vary with depth", v.span)
                return _BAD
            for a in v.value.anchors:
                msg = p.check_value(a)
                if msg:
                    self.err("E208", f"`{p.name}` of `{fname}` {msg}; the ramp reaches "
                             f"{a:g}", v.span)
                    return _BAD
            return v.value
        expected = {"number": NUMBER, "int": NUMBER, "bool": BOOL, "string": STRING}[p.type]
        if v.kind == STRING and expected == NUMBER and _is_number_text(v.value):
            self.err("E207", f"`{p.name}` of `{fname}` expects a number, found a String",
                     v.span, f"remove the quotes: `{p.name}={v.value}`")
            return _BAD
        if v.kind == NUMBER and not math.isfinite(v.value):
            self.err("E208", f"`{p.name}` of `{fname}` is not a finite number", v.span)
            return _BAD
        if v.kind != expected:
            self.err("E207", f"`{p.name}` of `{fname}` expects a {_ptype(p)}, found a "
                     f"{v.kind}", v.span,
                     (f"write `{p.name}=true` or `{p.name}=false`" if p.type == "bool" else
                      f"one of {p.range_text()}" if p.choices else None))
            return _BAD
        msg = p.check_value(v.value)
        if msg:
            self.err("E208", f"`{p.name}` of `{fname}` {msg}, got {_literal_text(v.value)}",
                     v.span)
            return _BAD
        return v.value

    def _ramp(self, e: ast.Call):
        if e.kwargs:
            self.err("E218", "`ramp` takes only numbers", e.kwargs[0].span)
            return _Const(ERROR, None, e.span)
        if not e.args:
            self.err("E218", "`ramp` needs at least one value", e.span,
                     "e.g. `ramp(0, 0.5, 1)`: anchors placed evenly from the first block "
                     "to the last")
            return _Const(ERROR, None, e.span)
        vals = []
        for a in e.args:
            v = self._expr(a)
            if _is_err(v):
                return _Const(ERROR, None, e.span)
            if isinstance(v, CExpr) or v.kind != NUMBER:
                self.err("E218", f"`ramp` takes numbers, found a {v.kind}", a.span)
                return _Const(ERROR, None, e.span)
            vals.append(float(v.value))
        return _Const(RAMP, Ramp(tuple(vals)), e.span)

    def _stack(self, e: ast.Call):
        parts = [self._whole(self._expr(a)) for a in e.args]
        ok = True
        if not parts:
            self.err("E206", "`stack` takes at least 1 input, got 0", e.span)
            ok = False
        for a, v in zip(e.args, parts):
            if _is_err(v):
                ok = False
            elif isinstance(v, _Const) or v.kind not in (LAYERS, MODEL):
                self.err("E207", f"`stack` takes runs of layers (`x.layers[a:b]`) or models, "
                         f"found a {v.kind}", a.span)
                ok = False
        embed = head = None
        for kw in e.kwargs:
            if kw.name.name not in ("embed", "head"):
                self.err("E205", f"unknown parameter `{kw.name.name}` for `stack`",
                         kw.name.span, did_you_mean(kw.name.name, ["embed", "head"],
                                                    "`stack` takes"))
                ok = False
                continue
            v = self._whole(self._expr(kw.value))
            if _is_err(v):
                ok = False
            elif isinstance(v, _Const) or v.kind != MODEL:
                self.err("E207", f"`{kw.name.name}=` expects a Model, found a {v.kind}",
                         kw.value.span)
                ok = False
            elif kw.name.name == "embed":
                embed = v
            else:
                head = v
        if not ok:
            return CExpr(ERROR, e.span)
        node = CStack(MODEL, e.span, parts=tuple(parts), embed=embed, head=head)
        # table: renumbered blocks, then embeddings from the first part, the rest from the last
        if all(p.tensors is not None for p in parts) and \
                all(x is None or x.tensors is not None for x in (embed, head)):
            tensors: dict[str, TensorMeta] = {}
            first_src = embed or _part_model(parts[0])
            last_src = head or _part_model(parts[-1])
            offset = 0
            outside_first = {n: m for n, m in (first_src.tensors or {}).items()
                             if arch.block_index(n) is None and arch.is_embedding(n)}
            tensors.update(outside_first)
            shapes_ok = True
            for part in parts:
                count = part.n_layers or 0
                for name, meta in part.tensors.items():
                    bi = arch.block_index(name)
                    if bi is None:
                        continue
                    tensors[arch.with_block_index(name, bi + offset)] = meta
                offset += count
            for n_, m in (last_src.tensors or {}).items():
                if arch.block_index(n_) is None and not arch.is_embedding(n_):
                    tensors[n_] = m
            shapes_ok = self._stack_shapes(parts, e.args, [(embed, "embed"), (head, "head")],
                                           e.kwargs)
            node.tensors = tensors if shapes_ok else None
            node.n_layers = offset
        return node

    def _stack_shapes(self, parts, args, extra, kwargs) -> bool:
        """Blocks from different models must have the same shapes to follow each other."""
        def suffixes(p):
            out = {}
            for n, m in p.tensors.items():
                bi = arch.block_index(n)
                if bi is not None:
                    out[arch.with_block_index(n, 0)] = m.shape
            return out

        ref = suffixes(parts[0])
        ok = True
        for p, a in zip(parts[1:], args[1:]):
            mine = suffixes(p)
            bad = [(n, ref[n], s) for n, s in mine.items() if n in ref and ref[n] != s]
            missing = [n for n in ref if n not in mine] + [n for n in mine if n not in ref]
            if bad:
                name, s0, s1 = bad[0]
                generic = name.replace(".0.", ".N.", 1)
                self.err("E304", f"these blocks do not fit the first run: `{generic}` is "
                         f"{_shape(s1)} here, {_shape(s0)} there"
                         + (f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""),
                         a.span, "stacked blocks must come from models of the same size",
                         (Label(args[0].span, f"{_shape(s0)} here"),))
                ok = False
            elif missing:
                self.err("E303", "these blocks do not have the same tensors as the first "
                         f"run ({_list_names(missing)})", a.span,
                         "stacked blocks must come from models of the same architecture",
                         (Label(args[0].span, "the first run"),))
                ok = False
        first = _part_model(parts[0])
        sources = dict((key, src) for src, key in extra)
        emb_src = sources.get("embed") or first
        head_src = sources.get("head") or _part_model(parts[-1])
        if ok and emb_src is not head_src and emb_src.tensors and head_src.tensors:
            def rows(src, embedding):
                return {m.shape[0] for n, m in src.tensors.items() if arch.is_vocab_tensor(n)
                        and arch.is_embedding(n) == embedding and m.shape}
            ve, vh = rows(emb_src, True), rows(head_src, False) or rows(head_src, True)
            if len(ve) == 1 and len(vh) == 1 and ve != vh:
                where = next((k.value.span for k in kwargs if k.name.name == "head"),
                             args[-1].span)
                self.err("E305", f"the embeddings come from a model with {ve.pop()} tokens and "
                         f"the output head from one with {vh.pop()}", where,
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
                self.err("E304", f"`{key}=` does not fit the blocks: `{name}` is {_shape(s1)} "
                         f"here, {_shape(s0)} in the first run's model", kw.value.span)
                ok = False
        return ok

    # -- tensor tables ---------------------------------------------------------------------
    def _merge_sparse(self, node: CExpr, operands, spans) -> None:
        """Tables with LoRA deltas: an adapter covers some tensors of the model it is
        combined with (the others are zero); it must name only tensors the model has, with
        the model's shapes."""
        dense = [(o, sp) for o, sp in zip(operands, spans) if not o.sparse]
        sparse = [(o, sp) for o, sp in zip(operands, spans) if o.sparse]
        if dense:
            self._merge_tables(node, [o for o, _ in dense], [sp for _, sp in dense])
            if node.tensors is None:
                return
            table, ref_span, what = node.tensors, dense[0][1], "the model it is combined with"
        else:
            table, ref_span, what = {}, sparse[0][1], "the other adapter"
        ok = True
        for o, sp in sparse:
            if dense:
                missing = [n for n in o.tensors if n not in table]
                if missing:
                    ok = False
                    self.err("E303", f"the adapter adapts {len(missing)} tensor"
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
                self.err("E304", f"the adapter's delta for `{name}` is {_shape(a)}, but it is "
                         f"{_shape(b)} in {what}" +
                         (f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""), sp,
                         "is it an adapter for a model of this size?",
                         (Label(ref_span, f"{_shape(b)} here"),))
            if not dense:
                for n, m in o.tensors.items():
                    table.setdefault(n, m)
        if not ok:
            node.tensors = None
        elif not dense:
            node.tensors, node.sparse, node.n_layers = dict(table), True, None
    def _merge_tables(self, node: CExpr, operands: list[CExpr], spans=None) -> None:
        """Set node.tensors from operands that must agree; report disagreements."""
        if any(o.tensors is None for o in operands) or not operands:
            node.tensors = None
            node.n_layers = operands[0].n_layers if operands else None
            return
        spans = list(spans or [o.span for o in operands])
        if any(o.sparse for o in operands):
            self._merge_sparse(node, operands, spans)
            return
        ref, ref_span = operands[0], spans[0]
        ok = True
        for o, sp in zip(operands[1:], spans[1:]):
            if o is ref:
                continue
            missing = [n for n in ref.tensors if n not in o.tensors]
            extra = [n for n in o.tensors if n not in ref.tensors]
            if (missing or extra) and ref.n_layers and o.n_layers and ref.n_layers != o.n_layers:
                ok = False
                self.err("E303", f"the inputs have different numbers of blocks: {o.n_layers} "
                         f"here, {ref.n_layers} in the other input", sp,
                         "merge runs of equal length (`a.layers[0:4]`), or combine blocks "
                         "with `stack(...)`", (Label(ref_span, f"{ref.n_layers} blocks here"),))
                continue
            if missing or extra:
                ok = False
                parts = []
                if missing:
                    parts.append(f"{len(missing)} tensor{'s' if len(missing) != 1 else ''} "
                                 f"missing here ({_list_names(missing)})")
                if extra:
                    parts.append(f"{len(extra)} extra ({_list_names(extra)})")
                self.err("E303", "the inputs do not have the same tensors: " +
                         "; ".join(parts), sp,
                         "merged inputs must share every tensor name; check that they "
                         "are the same architecture",
                         (Label(ref_span, "compared with this input"),))
                continue
            vocab_diag = None
            bad = []
            for name, m in ref.tensors.items():
                m2 = o.tensors[name]
                if m.shape != m2.shape:
                    if arch.is_vocab_tensor(name) and len(m.shape) == len(m2.shape) and \
                            m.shape[1:] == m2.shape[1:]:
                        vocab_diag = (name, m.shape[0], m2.shape[0])
                    else:
                        bad.append((name, m.shape, m2.shape))
                elif m.dtype not in FLOAT_DTYPES or m2.dtype not in FLOAT_DTYPES:
                    if m.dtype != m2.dtype or not _identity_ok(node):
                        bad.append((name, m.dtype, m2.dtype))
            if vocab_diag:
                ok = False
                name, va, vb = vocab_diag
                self.err("E305", f"the vocabulary sizes differ: {vb} tokens here, {va} in the "
                         f"other input (`{name}`)", sp,
                         "mergec never truncates embeddings; give both models the same "
                         "vocabulary first (e.g. transformers' `resize_token_embeddings`), "
                         "or merge only models built on the same tokenizer",
                         (Label(ref_span, f"{va} tokens here"),))
            if bad:
                ok = False
                name, a, b = bad[0]
                more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
                if isinstance(a, tuple):
                    self.err("E304", f"shape mismatch for `{name}`: {_shape(b)} here, "
                             f"{_shape(a)} in the other input{more}", sp,
                             "merged inputs must have the same shapes; are they the same "
                             "model size?", (Label(ref_span, f"{_shape(a)} here"),))
                else:
                    self.err("E306", f"`{name}` holds {b} values here and {a} in the other "
                             f"input; only floating-point tensors can be merged{more}", sp)
        if ok:
            node.tensors = dict(ref.tensors)
            node.n_layers = ref.n_layers
        else:
            node.tensors = None
            node.n_layers = ref.n_layers


_BAD = object()


def _identity_ok(node) -> bool:
    return False


def _is_err(v) -> bool:
    return getattr(v, "kind", None) == ERROR


def _is_number_text(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def _src(e) -> str:
    from mergec.lang.fmt import expr

    return expr(e)


def _slice_text(a, b) -> str:
    return f"{'' if a is None else a}:{'' if b is None else b}"


def _shape(s) -> str:
    return "[" + ", ".join(str(x) for x in s) + "]"


def _list_names(names: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:_MAX_LISTED])
    return shown + (f", ... {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _ptype(p) -> str:
    return {"number": "number", "int": "whole number", "bool": "true/false",
            "string": "string"}[p.type]


def _literal_text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, float) and v.is_integer():
        return str(int(v)) if abs(v) < 1e15 else repr(v)
    return repr(v) if isinstance(v, float) else str(v)


def _parse_literal(raw: str):
    s = raw.strip()
    if s in ("true", "false"):
        return s == "true"
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        pass
    if len(s) >= 2 and s[0] == s[-1] == '"':
        return s[1:-1]
    return s


def _kind_of_literal(v) -> str:
    if isinstance(v, bool):
        return BOOL
    if isinstance(v, (int, float)):
        return NUMBER
    return STRING


def _copy_tree(e: CExpr) -> CExpr:
    """A copy of the expression tree down to (not including) the inputs."""
    import copy

    if isinstance(e, CInput) or e.kind == ERROR:
        return e
    c = copy.copy(e)
    if isinstance(c, CLinear):
        c.terms = tuple((_copy_tree(t), k) for t, k in c.terms)
    elif isinstance(c, CCall):
        c.inputs = tuple(_copy_tree(i) for i in c.inputs)
        c.base = _copy_tree(c.base) if c.base is not None else None
    elif isinstance(c, CSlice):
        c.target = _copy_tree(c.target)
    elif isinstance(c, CStack):
        c.parts = tuple(_copy_tree(p) for p in c.parts)
        c.embed = _copy_tree(c.embed) if c.embed is not None else None
        c.head = _copy_tree(c.head) if c.head is not None else None
    return c


def _walk(e: CExpr):
    yield e
    if isinstance(e, CLinear):
        for t, _ in e.terms:
            yield from _walk(t)
    elif isinstance(e, CCall):
        for i in e.inputs:
            yield from _walk(i)
        if e.base is not None:
            yield from _walk(e.base)
    elif isinstance(e, CSlice):
        yield from _walk(e.target)
    elif isinstance(e, CStack):
        for p in e.parts:
            yield from _walk(p)
        for x in (e.embed, e.head):
            if x is not None:
                yield from _walk(x)


def _part_model(e: CExpr) -> CExpr:
    """The model a value's tensors outside the blocks come from (its first input)."""
    if isinstance(e, CSlice):
        return e.target
    if isinstance(e, CCall):
        return _part_model(e.inputs[0])
    if isinstance(e, CLinear):
        return _part_model(e.terms[0][0])
    return e


def _first_input(e: CExpr) -> CInput | None:
    """The input whose config and tokenizer an output starts from by default: the base of
    a merge with `base=`, else its first input; for `stack`, the model of its embeddings."""
    if isinstance(e, CInput):
        return e
    if isinstance(e, CCall):
        return _first_input(e.base if e.base is not None else e.inputs[0])
    if isinstance(e, CLinear):
        return next((x for x in (_first_input(t) for t, _ in e.terms) if x is not None), None)
    if isinstance(e, CSlice):
        return _first_input(e.target)
    if isinstance(e, CStack):
        return _first_input(e.embed or _part_model(e.parts[0]))
    return None


def _diag_key(d: Diagnostic):
    s = d.span
    return (0, s.file, s.start, s.line, s.col) if s else (1, "", 0, 0, 0)


def derive_output_config(out: Output) -> dict | None:
    """The config.json of an output: its `config=` input's, with the storage dtype and,
    when the merge changed it, the block count. Raises CheckpointError when the config
    cannot take the new block count."""
    from mergec.io import hf_files

    src = out.config_from
    if src is None or src.config is None:
        return None
    cfg = src.config
    dtype = out.dtype
    if dtype is None:
        d = cfg.get("torch_dtype") or cfg.get("dtype")
        floats = [m.dtype for m in (out.expr.tensors or {}).values() if m.dtype in FLOAT_DTYPES]
        dtype = d if d in FLOAT_DTYPES else (floats[0] if floats else "float32")
    old = arch.layer_count(cfg, src.tensors or {})
    n = out.expr.n_layers
    return hf_files.derive_config(cfg, dtype=dtype,
                                  num_layers=n if n is not None and n != old else None)


def check_program(program: ast.Program, *, overrides: dict[str, str] | None = None,
                  loader: InputLoader | None = None, base_dir: Path | None = None
                  ) -> CheckedProgram:
    return Checker(program, overrides=overrides, loader=loader, base_dir=base_dir).run()
