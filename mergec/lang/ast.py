"""Syntax tree of a recipe: frozen dataclasses, every node with its source span."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from mergec.diagnostics import Span


@dataclass(frozen=True)
class Ident:
    name: str
    span: Span


# Expressions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    value: float | int
    text: str
    span: Span


@dataclass(frozen=True)
class Str:
    value: str
    span: Span


@dataclass(frozen=True)
class Bool:
    value: bool
    span: Span


@dataclass(frozen=True)
class Name:
    ident: Ident
    span: Span

    @property
    def id(self) -> str:
        return self.ident.name


@dataclass(frozen=True)
class Kwarg:
    name: Ident
    value: "Expr"
    span: Span


@dataclass(frozen=True)
class Call:
    func: Ident
    args: tuple["Expr", ...]
    kwargs: tuple[Kwarg, ...]
    span: Span

    def kwarg(self, name: str) -> Kwarg | None:
        for k in self.kwargs:
            if k.name.name == name:
                return k
        return None


@dataclass(frozen=True)
class ListExpr:
    items: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True)
class BinOp:
    op: str  # one of + - * /
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class Neg:
    operand: "Expr"
    span: Span


@dataclass(frozen=True)
class LayerSlice:
    target: "Expr"
    start: int | None
    stop: int | None
    span: Span
    #: the layer stack named (`m.encoder.layers[0:2]`), None for `m.layers[...]`
    stack: str | None = None


Expr = Union[Num, Str, Bool, Name, Call, ListExpr, BinOp, Neg, LayerSlice]


# Statements ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Comment:
    text: str  # including the leading '#'
    span: Span


@dataclass(frozen=True)
class Entry:
    """`name = expr` inside an option block or a where block."""

    name: Ident
    value: Expr
    span: Span


@dataclass(frozen=True)
class GlobSel:
    pattern: str
    span: Span


@dataclass(frozen=True)
class LayersSel:
    start: int | None
    stop: int | None
    span: Span


Selector = Union[GlobSel, LayersSel]


@dataclass(frozen=True)
class Where:
    selectors: tuple[Selector, ...]  # joined with `and`
    entries: tuple[Entry, ...]
    span: Span


@dataclass(frozen=True)
class ModelStmt:
    name: Ident
    source: Str
    span: Span
    keyword = "model"


@dataclass(frozen=True)
class AdapterStmt:
    name: Ident
    source: Str
    span: Span
    keyword = "adapter"


@dataclass(frozen=True)
class StatsStmt:
    """`stats NAME = "folder"`: statistics of a model's data (Fisher or Gram matrices)."""

    name: Ident
    source: Str
    span: Span
    keyword = "stats"


@dataclass(frozen=True)
class ParamStmt:
    name: Ident
    value: Expr
    span: Span
    keyword = "param"


@dataclass(frozen=True)
class SetStmt:
    name: Ident
    value: Expr
    span: Span
    keyword = "set"


@dataclass(frozen=True)
class LetStmt:
    name: Ident
    expr: Expr
    wheres: tuple[Where, ...]
    span: Span
    keyword = "let"


@dataclass(frozen=True)
class OutputStmt:
    name: Ident
    expr: Expr
    wheres: tuple[Where, ...]
    options: tuple[Entry, ...] | None
    span: Span
    keyword = "output"


Statement = Union[ModelStmt, AdapterStmt, StatsStmt, ParamStmt, SetStmt, LetStmt, OutputStmt]


@dataclass(frozen=True)
class Program:
    statements: tuple[Statement, ...]
    comments: tuple[Comment, ...] = field(default=())
    file: str = "<recipe>"
    text: str = ""
