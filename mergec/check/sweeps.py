"""Sweeps: params that take several values, and the points they make.

A recipe sweeps a param with `param alpha = sweep(0.1, 0.2, 0.3)`; the command line
sweeps any param with `--set alpha=0.1,0.2,0.3` (a comma outside double quotes separates
values; a `--set` replaces the recipe's value, sweep or not). Several swept params make
the cartesian product of their values, the first declared param varying slowest, up to
:data:`MAX_POINTS` points.

Every output is built once per point into a folder named after the output and the point,
``<output>-<param>=<value>[-<param>=<value>...]`` (:meth:`Point.folder`): numbers as the
formatter writes them (`0.2`, `-1`, `1e-05`), `true`/`false`, strings with every
character other than letters, digits and `. _ + -` replaced by `_`.

This module reads only the syntax tree and the `--set` values; the checker then checks
the recipe at every point (:mod:`mergec.api`), with each input opened once.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from typing import Any

from mergec.check.program import BOOL, NUMBER, STRING
from mergec.diagnostics import Diagnostic, Span
from mergec.lang import ast
from mergec.lang.fmt import literal

#: the most points a build may have (the product of the swept params' value counts)
MAX_POINTS = 64
#: the longest folder name a point gives (most file systems allow 255 bytes)
MAX_NAME = 200
SWEEP = "sweep"


@dataclass(frozen=True)
class Swept:
    """One swept param: its values in order, their kind and where they are written."""

    name: str
    values: tuple
    kind: str
    span: Span  # the param's value in the recipe
    origin: str  # "recipe" or "--set"


@dataclass(frozen=True)
class Point:
    """One point of a sweep: a value for every swept param."""

    index: int  # 0-based, in the order of the product
    count: int
    values: tuple[tuple[str, Any], ...]  # (param, value), params in declaration order

    @property
    def suffix(self) -> str:
        """`alpha=0.2-density=0.5`: the point in an output folder's name."""
        return "-".join(f"{k}={value_text(v)}" for k, v in self.values)

    def folder(self, output: str) -> str:
        return f"{output}-{self.suffix}"

    def overrides(self) -> dict[str, str]:
        """The point as `--set` values that read back exactly."""
        return {k: literal(v) for k, v in self.values}

    def label(self) -> str:
        """`alpha=0.2, density=0.5` (in messages and the model card)."""
        return ", ".join(f"{k}={literal(v)}" for k, v in self.values)


def value_text(v) -> str:
    """A swept value in a folder name (see the module docstring)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return re.sub(r"[^A-Za-z0-9._+\-]", "_", v) or "_"
    return literal(v)


def is_sweep(e) -> bool:
    return isinstance(e, ast.Call) and e.func.name == SWEEP


def literal_value(e) -> tuple[str, Any] | None:
    """The kind and value of a literal (a number, maybe negated, a string, true/false);
    None for any other expression."""
    if isinstance(e, ast.Num):
        return NUMBER, e.value
    if isinstance(e, ast.Neg) and isinstance(e.operand, ast.Num):
        return NUMBER, -e.operand.value
    if isinstance(e, ast.Str):
        return STRING, e.value
    if isinstance(e, ast.Bool):
        return BOOL, e.value
    return None


def sweep_kind(e: ast.Call) -> tuple[str, Any] | None:
    """The kind and first value of a well-formed `sweep(...)`; None otherwise."""
    vals = [literal_value(a) for a in e.args]
    if not vals or None in vals or e.kwargs or len({k for k, _ in vals}) != 1:
        return None
    return vals[0]


def split_values(raw: str) -> list[str]:
    """`0.2,0.4,"a,b"` -> ['0.2', '0.4', '"a,b"']: commas outside double quotes."""
    parts, cur, quoted = [], [], False
    for ch in raw:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _parse_value(s: str) -> tuple[str, Any]:
    if s in ("true", "false"):
        return BOOL, s == "true"
    try:
        return NUMBER, int(s)
    except ValueError:
        pass
    try:
        f = float(s)
        if math.isfinite(f):
            return NUMBER, f
    except ValueError:
        pass
    if len(s) >= 2 and s[0] == s[-1] == '"':
        return STRING, s[1:-1]
    return STRING, s


class Sweeps:
    """The swept params of a recipe and `--set` values: what to check at every point."""

    def __init__(self, program: ast.Program, overrides: dict[str, str]):
        self.diagnostics: list[Diagnostic] = []
        self.swept: list[Swept] = []
        #: the `--set` values that are not sweeps, given to every point
        self.fixed: dict[str, str] = {}
        params = {st.name.name: st for st in program.statements
                  if isinstance(st, ast.ParamStmt)}
        for name, raw in overrides.items():
            if "," in raw and len(split_values(raw)) > 1 and name in params:
                self._from_set(name, raw, params.get(name))
            else:
                self.fixed[name] = raw
        from_set = {s.name for s in self.swept}
        for name, st in params.items():
            if is_sweep(st.value) and name not in from_set and name not in self.fixed:
                self._from_recipe(st)
        # declaration order: the order of the product
        order = list(params)
        self.swept.sort(key=lambda s: order.index(s.name))
        count = math.prod(len(s.values) for s in self.swept) if self.swept else 1
        if count > MAX_POINTS:
            sizes = " x ".join(f"{len(s.values)} ({s.name})" for s in self.swept)
            self._error("E273", f"the sweep has {count} points ({sizes}); at most "
                        f"{MAX_POINTS} are built at once", self.swept[0].span,
                        "sweep fewer values, or split the sweep into several builds with "
                        "`--set`")

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "warning"]

    def points(self) -> list[Point]:
        """Every point, the first swept param varying slowest; one empty point when
        nothing is swept."""
        combos = list(itertools.product(*[s.values for s in self.swept]))
        return [Point(i, len(combos), tuple(zip([s.name for s in self.swept], c)))
                for i, c in enumerate(combos)]

    def _error(self, code, message, span=None, help=None, severity="error") -> None:
        self.diagnostics.append(Diagnostic(code, message, span, help, severity=severity))

    def _from_recipe(self, st: ast.ParamStmt) -> None:
        name, call = st.name.name, st.value
        if call.kwargs:
            self._error("E271", "`sweep` takes values only, not `name=value`",
                        call.kwargs[0].span, f"write `param {name} = sweep(0.1, 0.2, 0.3)`")
            return
        if not call.args:
            self._error("E270", f"`sweep()` of param `{name}` has no values", call.span,
                        f"give at least one value: `param {name} = sweep(0.1, 0.2, 0.3)`")
            return
        vals = []
        for a in call.args:
            v = literal_value(a)
            if v is None:
                self._error("E271", "a sweep value must be a literal: a number, a string "
                            "or true/false", a.span, "write the values out, as in "
                            "`sweep(0.1, 0.2, 0.3)`")
                return
            vals.append(v)
        kinds = [k for k, _ in vals]
        if len(set(kinds)) > 1:
            j = next(i for i, k in enumerate(kinds) if k != kinds[0])
            self._error("E271", f"the values of a sweep are of one kind: "
                        f"`{literal(vals[0][1])}` is a {kinds[0]}, `{literal(vals[j][1])}` a "
                        f"{kinds[j]}", call.args[j].span,
                        f"param `{name}` takes one kind of value at every point")
            return
        values = tuple(v for _, v in vals)
        if not self._distinct(name, values, call.span):
            return
        if len(values) == 1:
            self._error("W360", f"`sweep` of param `{name}` has one value: this builds one "
                        f"point, named `{name}={value_text(values[0])}`", call.span,
                        f"write `param {name} = {literal(values[0])}` for a plain build",
                        severity="warning")
        self.swept.append(Swept(name, values, kinds[0], call.span, "recipe"))

    def _from_set(self, name: str, raw: str, st: ast.ParamStmt) -> None:
        items = split_values(raw)
        if any(not s for s in items):
            self._error("E270", f"`--set {name}={raw}` has an empty value", None,
                        f"separate the values with single commas: `--set {name}=0.1,0.2`")
            return
        vals = [_parse_value(s) for s in items]
        want = sweep_kind(st.value) if is_sweep(st.value) else literal_value(st.value)
        kind = want[0] if want is not None else vals[0][0]
        for s, (k, _) in zip(items, vals):
            if k != kind:
                like = f", like the recipe's `{literal(want[1])}`" if want else ""
                self._error("E274", f"`--set {name}={raw}`: `{s}` is not a {kind}",
                            st.value.span,
                            f"every value of param `{name}` must be a {kind.lower()}{like}")
                return
        values = tuple(v for _, v in vals)
        if self._distinct(name, values, None, f"`--set {name}={raw}`"):
            self.swept.append(Swept(name, values, kind, st.value.span, "--set"))

    def _distinct(self, name, values, span, where=None) -> bool:
        seen: dict = {}
        for v in values:
            key = (type(v) is bool, v)
            if key in seen:
                self._error("E275", f"{where or '`sweep`'} gives the value "
                            f"`{literal(v)}` of param `{name}` twice", span,
                            "each point is built once: remove the repeated value")
                return False
            seen[key] = True
        return True


def check_folders(points: list[Point], outputs: list[tuple[str, Span]]) -> list[Diagnostic]:
    """The output folders of a sweep are distinct, and their names not too long."""
    diags: list[Diagnostic] = []
    seen: dict[str, str] = {}
    names = {o for o, _ in outputs}
    for out, span in outputs:
        for p in points:
            folder = p.folder(out)
            if len(folder.encode()) > MAX_NAME:
                diags.append(Diagnostic(
                    "E361", f"output folder `{folder[:60]}...` of the sweep is "
                    f"{len(folder.encode())} bytes long; at most {MAX_NAME} are allowed",
                    span, "sweep shorter strings, or give the output a shorter name"))
                return diags
            other = seen.get(folder)
            if other is not None or folder in names:
                diags.append(Diagnostic(
                    "E360", f"two outputs of the sweep would be written to `{folder}`"
                    + (f" (points {other} and {p.label()})" if other else
                       f" (output `{folder}` of the recipe)"), span,
                    "strings that differ only in characters outside letters, digits and "
                    "`. _ + -` get the same folder name; sweep values that differ there"
                    if other else "rename one of the outputs"))
                return diags
            seen[folder] = p.label()
    return diags
