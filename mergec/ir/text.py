"""Reading the printed IR back: the format of `mergec.ir.nodes.render_many` (its docstring
lists the line forms), one node per line, `%i = ...`. Blank lines and lines starting with
`#` are skipped. The roots are the nodes no other line uses, in order, unless a line
`roots %a, %b, ...` names them.

For every node the lowering and the passes build, `parse_ir(render_many(roots))` gives
nodes equal to `roots` (tests/test_ir_text.py). Used by the pass fixtures
(tests/fixtures/passes)."""

from __future__ import annotations

import ast as pyast
import re
from typing import Any

from mergec.ir.nodes import Graph, Node
from mergec.ir.placeholders import ModelTopK

_SPACE = re.compile(r"[ \t]*")
_REF = re.compile(r"%\d+")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_NAME = re.compile(r"[A-Za-z0-9_.\-/:+]+")
_STRING = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*\"""")
_NUMBER = re.compile(r"[+-]?(?:inf|nan|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?![\w.])")
_INT = re.compile(r"[+-]?\d+(?![\w.])")


class IRSyntaxError(ValueError):
    """A line of IR text that cannot be read; says which line and where."""

    def __init__(self, message: str, line: str, lineno: int, col: int):
        super().__init__(f"IR line {lineno}, column {col + 1}: {message}\n  {line}\n  "
                         f"{' ' * col}^")
        self.lineno, self.col = lineno, col


class _Reader:
    """A cursor over one line."""

    def __init__(self, line: str, lineno: int):
        self.s, self.i, self.lineno = line, 0, lineno

    def fail(self, message: str):
        raise IRSyntaxError(message, self.s, self.lineno, self.i)

    def skip(self) -> None:
        self.i = _SPACE.match(self.s, self.i).end()

    def at(self, lit: str) -> bool:
        self.skip()
        return self.s.startswith(lit, self.i)

    def accept(self, lit: str) -> bool:
        if self.at(lit):
            self.i += len(lit)
            return True
        return False

    def expect(self, lit: str) -> None:
        if not self.accept(lit):
            self.fail(f"expected `{lit}`")

    def match(self, rx: re.Pattern, what: str) -> str:
        self.skip()
        m = rx.match(self.s, self.i)
        if not m:
            self.fail(f"expected {what}")
        self.i = m.end()
        return m.group()

    def end(self) -> None:
        self.skip()
        if self.i != len(self.s):
            self.fail("unexpected text at the end of the line")

    def ref(self) -> str:
        return self.match(_REF, "a node `%N`")

    def word(self) -> str:
        return self.match(_WORD, "a name")

    def string(self) -> str:
        return pyast.literal_eval(self.match(_STRING, "a quoted string"))

    def name(self) -> str:
        """A source or tensor name: bare or quoted."""
        if self.at("'") or self.at('"'):
            return self.string()
        return self.match(_BARE_NAME, "a name")

    def shape(self) -> tuple[int, ...]:
        self.expect("[")
        dims: list[int] = []
        while not self.accept("]"):
            if dims:
                self.expect(",")
            dims.append(int(self.match(_INT, "a dimension")))
        return tuple(dims)

    def refs(self, close: str) -> list[str]:
        """`%a, %b, ...` up to (not including) `close` or `;`."""
        out = [self.ref()]
        while self.accept(","):
            out.append(self.ref())
        if not (self.at(close) or self.at(";")):
            self.fail(f"expected `,`, `;` or `{close}`")
        return out

    def value(self) -> Any:
        """A parameter value (the output of `mergec.ir.nodes.format_value`)."""
        self.skip()
        if self.at("'") or self.at('"'):
            return self.string()
        if self.accept("("):
            items = []
            while not self.accept(")"):
                items.append(self.value())
                if not self.accept(","):
                    self.expect(")")
                    break
            return tuple(items)
        m = _NUMBER.match(self.s, self.i)
        if m:
            self.i = m.end()
            text = m.group()
            return int(text) if _INT.fullmatch(text) else float(text)
        start = self.i
        w = self.word()
        if w in ("True", "False", "None"):
            return {"True": True, "False": False, "None": None}[w]
        if w == "model_topk":
            kw = self.keywords()
            try:
                return ModelTopK(**kw)
            except TypeError as e:
                self.i = start
                self.fail(f"bad model_topk(...): {e}")
        self.i = start
        self.fail("expected a value (number, string, True, False, None, tuple or model_topk)")

    def keywords(self) -> dict[str, Any]:
        self.expect("(")
        out: dict[str, Any] = {}
        while not self.accept(")"):
            if out:
                self.expect(",")
            k = self.word()
            self.expect("=")
            out[k] = self.value()
        return out

    def params(self) -> dict[str, Any]:
        """`name=value, ...` up to (not including) `;` or `)`."""
        out: dict[str, Any] = {}
        while not (self.at(";") or self.at(")")):
            if out:
                self.expect(",")
            k = self.word()
            if k in out:
                self.fail(f"parameter `{k}` given twice")
            self.expect("=")
            out[k] = self.value()
        return out


def _line(r: _Reader, nodes: dict[str, Node], used: set[str], g: Graph) -> Node:
    def arg(name: str) -> Node:
        if name not in nodes:
            r.fail(f"`{name}` is not defined on an earlier line")
        used.add(name)
        return nodes[name]

    start = r.i
    op = r.word()
    if op in ("load", "copy", "convert"):
        src = r.name()
        r.expect("[")
        tensor = r.name()
        r.expect("]")
        dtype = r.word()
        shape = r.shape()
        if op == "load":
            return g.load(src, tensor, shape, dtype)
        to = dtype
        if op == "convert":
            r.expect("->")
            to = r.word()
        return g.node(op, (), (("source", src), ("tensor", tensor), ("from", dtype)), shape, to)
    if op == "zeros" and r.at("["):
        return g.zeros(r.shape())
    if op == "wsum" and r.accept("("):
        terms = []
        while not r.accept(")"):
            if terms:
                r.expect(",")
            c = float(r.match(_NUMBER, "a coefficient"))
            r.expect("*")
            terms.append((arg(r.ref()), c))
        if not terms:
            r.fail("a weighted sum needs at least one term")
        return g.raw_wsum(terms)
    if op == "cast" and r.accept("("):
        x = arg(r.ref())
        r.expect(")")
        r.expect("->")
        return g.cast(x, r.word())
    if op == "lowrank" and r.accept("("):
        b = arg(r.ref())
        r.expect(",")
        a = arg(r.ref())
        r.expect(";")
        r.expect("scale")
        r.expect("=")
        scale = float(r.match(_NUMBER, "a number"))
        transpose = r.accept(",")
        if transpose:
            r.expect("transposed")
        r.expect(")")
        return g.lowrank(b, a, scale, transpose)
    # a merge: METHOD(%a, ...; params; seed=N), or `merge METHOD(...)`
    if op == "merge" and not r.at("("):
        op = r.word()
    elif op in ("load", "copy", "convert", "zeros", "wsum", "cast", "lowrank"):
        r.i = start
        r.fail(f"malformed `{op}`")
    r.expect("(")
    args = [arg(x) for x in r.refs(")")]
    params: dict[str, Any] = {}
    seed = None
    if r.accept(";"):
        params = r.params()
        if r.accept(";"):
            r.expect("seed")
            r.expect("=")
            seed = None if r.accept("None") else int(r.match(_INT, "a seed"))
    r.expect(")")
    return g.merge(op, args, params, seed)


def parse_ir(text: str, g: Graph | None = None) -> list[Node]:
    """The roots of the IR printed in `text`, built in `g` (by default a literal graph,
    so the nodes are exactly the lines)."""
    if g is None:  # (an empty Graph is falsy)
        g = Graph(canonical=False)
    nodes: dict[str, Node] = {}
    used: set[str] = set()
    roots: list[str] | None = None
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        r = _Reader(line, lineno)
        if roots is not None:
            r.fail("nothing may follow the `roots` line")
        if r.accept("roots"):
            roots = r.refs("")
            r.end()
            for x in roots:
                if x not in nodes:
                    r.fail(f"`{x}` is not defined")
            continue
        name = r.ref()
        if name in nodes:
            r.fail(f"`{name}` is defined twice")
        r.expect("=")
        n = _line(r, nodes, used, g)
        r.end()
        nodes[name] = n
    if roots is not None:
        return [nodes[x] for x in roots]
    return [n for k, n in nodes.items() if k not in used]
