"""Names: what each statement binds, and resolving a name where it is used.

A statement binds its name to a checked value: a tensor-valued `CExpr` (a `model`,
`adapter`, `let` or `output`) or a `Const` (a `param`, or any value that is not a tensor).
Names resolve to statements above the use; a name defined further down is "used before it
is defined", and an unknown one gets a did-you-mean.
"""

from __future__ import annotations

from typing import Any

from mergec.check.program import ERROR
from mergec.check.report import Reporter
from mergec.check.suggest import did_you_mean
from mergec.diagnostics import Label, Span
from mergec.lang import ast


class Const:
    """A value that is not a tensor (Number, Bool, String, List, Ramp) during checking."""

    def __init__(self, kind: str, value: Any, span: Span):
        self.kind, self.value, self.span = kind, value, span


class Binding:
    """What a statement's name stands for below it."""

    def __init__(self, value, span: Span):
        self.value, self.span = value, span


def is_error(v) -> bool:
    """Whether a checked value is one that failed (and was reported) already."""
    return getattr(v, "kind", None) == ERROR


class Scope:
    def __init__(self, report: Reporter, statements) -> None:
        self.report = report
        self.bindings: dict[str, Binding] = {}
        #: where each name of the recipe is first defined, above or below the current line
        self.definitions: dict[str, Span] = {}
        for st in statements:
            self.definitions.setdefault(st.name.name, st.name.span)

    def get(self, name: str) -> Binding | None:
        return self.bindings.get(name)

    def bind(self, name: str, value, span: Span) -> None:
        self.bindings[name] = Binding(value, span)

    def defines(self, name: str) -> bool:
        """Whether the recipe defines `name` anywhere."""
        return name in self.bindings or name in self.definitions

    def lookup(self, e: ast.Name) -> Binding | None:
        """The binding of a name where it is used; None (reported) when there is none."""
        b = self.bindings.get(e.id)
        if b is not None:
            return b
        later = self.definitions.get(e.id)
        if later is not None and later.start > e.span.start:
            self.report.error("E203", f"`{e.id}` is used before it is defined", e.span,
                              "move its definition above this line",
                              (Label(later, "defined here"),))
            return None
        names = list(self.bindings) + [n for n in self.definitions if n not in self.bindings]
        self.report.error("E201", f"unknown name `{e.id}`", e.span,
                          did_you_mean(e.id, [n for n in names if n in self.bindings] or names,
                                       "names defined so far are"))
        return None
