"""`set` statements, `param` statements and the `--set` overrides of params."""

from __future__ import annotations

import math
import re
from typing import Any

from mergec.check.exprs import Exprs
from mergec.check.program import BOOL, DEFAULT_SEED, ERROR, LIST, NUMBER, STRING, CExpr, Settings
from mergec.check.scope import Const
from mergec.backends import BACKEND_NAMES
from mergec.check.suggest import did_you_mean
from mergec.check.sweeps import is_sweep, sweep_kind
from mergec.io.sizes import parse_size
from mergec.lang import ast
from mergec.lang.fmt import expr as expr_text, literal

#: setting -> what it expects, as the diagnostics say it
SETTINGS = {
    "seed": "a whole number >= 0",
    "backend": ", ".join(f'"{n}"' for n in BACKEND_NAMES[:-1]) + f' or "{BACKEND_NAMES[-1]}"',
    "device": '"auto", "cpu", "cuda", "cuda:N" or "gpu"',
    "shard_size": 'a size such as "5GB"',
    "max_memory": 'a size such as "8GB"',
    "allow_nonfinite": "true or false",
    "heads": '"untie" or "tie"',
    "vocab": '"union" or the name of a model',
    "vocab_fill": '"others", "zero", "mean" or "base"',
    "pad_to_multiple_of": "a whole number >= 1",
}
_SETTING_HELP = {
    "seed": "for example `set seed = 42`; it seeds every random method, per tensor",
    "backend": 'for example `set backend = "torch"`',
    "device": 'for example `set device = "cpu"`',
    "shard_size": 'for example `set shard_size = "2GB"`',
    "max_memory": 'for example `set max_memory = "8GB"`',
    "allow_nonfinite": "`set allow_nonfinite = true` writes NaN and infinite values a merge "
                       "produces instead of stopping",
    "heads": 'for example `set heads = "untie"` (tied inputs get a head of their own)',
    "vocab": 'for example `set vocab = "union"` (every input\'s tokens) or '
             '`set vocab = "base"` (the tokens of model `base`)',
    "vocab_fill": 'for example `set vocab_fill = "zero"`: the rows of tokens an input lacks',
    "pad_to_multiple_of": "for example `set pad_to_multiple_of = 64`: the output's "
                          "embedding rows, rounded up",
}


def heads_setting(statements) -> str | None:
    """The value of `set heads = "..."` (read before the inputs, which it changes), when
    it is one of the accepted strings; the statement itself is checked in order."""
    for st in statements:
        if isinstance(st, ast.SetStmt) and st.name.name == "heads" and \
                isinstance(st.value, ast.Str) and st.value.value in ("untie", "tie"):
            return st.value.value
    return None


class SetStatements:
    """The `set` statements of a recipe, checked one by one."""

    def __init__(self, exprs: Exprs) -> None:
        self.exprs, self.report = exprs, exprs.report
        self.values: dict[str, Any] = {}

    def add(self, st: ast.SetStmt) -> None:
        name = st.name.name
        if name not in SETTINGS:
            self.report.error("E211", f"unknown setting `{name}`", st.name.span,
                              did_you_mean(name, SETTINGS, "settings are"))
            return
        if name in self.values:
            self.report.error("E202", f"setting `{name}` is set twice", st.name.span)
            return
        v = self.exprs.const(st.value)
        if v is None:
            return
        val, ok = v.value, True
        if name == "seed":
            ok = v.kind == NUMBER and float(val).is_integer() and val >= 0
        elif name == "backend":
            ok = val in BACKEND_NAMES
        elif name == "device":
            ok = isinstance(val, str) and (val in ("auto", "cpu", "cuda", "gpu") or
                                           re.fullmatch(r"cuda:\d+", val) is not None)
        elif name == "allow_nonfinite":
            ok = v.kind == BOOL
        elif name == "heads":
            ok = val in ("untie", "tie")
        elif name == "vocab":
            ok = v.kind == STRING
        elif name == "vocab_fill":
            ok = val in ("others", "zero", "mean", "base")
        elif name == "pad_to_multiple_of":
            ok = v.kind == NUMBER and float(val).is_integer() and val >= 1
        elif name in ("shard_size", "max_memory"):
            try:
                val = parse_size(str(val)) if v.kind in (STRING, NUMBER) else None
                ok = val is not None and val > 0
            except ValueError:
                ok = False
        if not ok:
            found = literal(v.value) if v.kind != LIST else expr_text(st.value)
            self.report.error("E208", f"`set {name}` expects {SETTINGS[name]}, found "
                              f"{found}", st.value.span, _SETTING_HELP[name])
            return
        self.values[name] = int(val) if name in ("seed", "pad_to_multiple_of") else val

    def settings(self) -> Settings:
        s = self.values
        return Settings(seed=s.get("seed", DEFAULT_SEED), seed_explicit="seed" in s,
                        backend=s.get("backend", "auto"), device=s.get("device", "auto"),
                        shard_size=s.get("shard_size"), max_memory=s.get("max_memory"),
                        allow_nonfinite=s.get("allow_nonfinite", False))


class Params:
    """The `param` statements of a recipe, with the `--set name=value` overrides."""

    def __init__(self, exprs: Exprs, overrides: dict[str, str]) -> None:
        self.exprs, self.report = exprs, exprs.report
        self.overrides = overrides
        self.values: dict[str, Any] = {}
        self.declared: set[str] = set()

    def add(self, st: ast.ParamStmt) -> Const:
        name = st.name.name
        self.declared.add(name)
        if is_sweep(st.value):  # checked at each point, with its value as a `--set`
            first = sweep_kind(st.value)
            if first is None:  # reported by mergec.check.sweeps
                return Const(ERROR, None, st.span)
            value = Const(first[0], first[1], st.value.span)
            return self._overridden(name, st, value)
        raw = self.exprs.value(st.value)
        if isinstance(raw, CExpr) and raw.kind != ERROR:
            self.report.error("E222", f"param `{name}` must be a number, true/false or a "
                              f"string, found a {raw.kind}", st.value.span,
                              "params hold settings that `--set` can change; use `let` for "
                              "models")
            return Const(ERROR, None, st.span)
        value = self.exprs.const(st.value)
        if value is None:
            return Const(ERROR, None, st.span)
        if value.kind not in (NUMBER, BOOL, STRING):
            self.report.error("E222", f"param `{name}` must be a number, true/false or a "
                              "string", st.value.span)
            return Const(ERROR, None, st.span)
        return self._overridden(name, st, value)

    def _overridden(self, name: str, st: ast.ParamStmt, value: Const) -> Const:
        """The param's value: the recipe's, or the `--set` one."""
        if name in self.overrides:
            raw = self.overrides[name]
            parsed = _parse_literal(raw)
            kind = _kind_of_literal(parsed)
            if isinstance(parsed, float) and not math.isfinite(parsed):
                self.report.error("E208", f"`--set {name}={raw}` is not a finite number",
                                  st.value.span, "give a finite number, like the recipe's "
                                  f"`{literal(value.value)}`")
                return Const(ERROR, None, st.span)
            if kind != value.kind:
                self.report.error("E213", f"`--set {name}={raw}` gives a {kind}, but param "
                                  f"`{name}` is a {value.kind}", st.value.span,
                                  f"give a {value.kind.lower()}, like the recipe's "
                                  f"`{literal(value.value)}`")
                return Const(ERROR, None, st.span)
            value = Const(kind, parsed, st.value.span)
        self.values[name] = value.value
        return value

    def check_overrides_used(self, statements) -> None:
        """Report each `--set` that names no `param` of the recipe."""
        for name, raw in self.overrides.items():
            if name not in self.declared:
                params = [s.name.name for s in statements if isinstance(s, ast.ParamStmt)]
                self.report.error(
                    "E212", f"`--set {name}={raw}`: the recipe has no param `{name}`", None,
                    did_you_mean(name, params, "its params are") or
                    "the recipe declares no `param`; add `param "
                    f"{name} = ...` to make it settable")


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
