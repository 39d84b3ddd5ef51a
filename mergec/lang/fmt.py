"""Syntax tree -> canonical recipe text.

The canonical form: one statement per line; one blank line kept where the source had one
or more; two spaces before a trailing comment; `=` aligned inside an option block; `where`
clauses on their own lines, indented four spaces; calls longer than the line limit broken
one argument per line; only the parentheses the precedence needs. ``format(parse(t))`` is
a fixed point and parses to the same program.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mergec.lang import ast

LINE_LIMIT = 100
INDENT = "    "

_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _prec(e: ast.Expr) -> int:
    if isinstance(e, ast.BinOp):
        return _PREC[e.op]
    if isinstance(e, ast.Neg):
        return 3
    return 5


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") \
        .replace("\t", "\\t") + '"'


def literal(value, *, short: bool = False) -> str:
    """A parameter or setting value (bool, string or number) as recipe text.

    Numbers print exactly, a whole float without its `.0` (`2.0` prints `2`); with
    `short=True` floats print with at most six significant digits (`f"{x:g}"`), as the
    method tables do. Strings are put in double quotes as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, float):
        if short:
            return f"{value:g}"
        if value.is_integer():
            return str(int(value)) if abs(value) < 1e15 else repr(value)
        return repr(value)
    return str(value)


def expr(e: ast.Expr) -> str:
    """Print one expression on one line."""
    if isinstance(e, ast.Num):
        return e.text
    if isinstance(e, ast.Str):
        return _quote(e.value)
    if isinstance(e, ast.Bool):
        return "true" if e.value else "false"
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.ListExpr):
        return "[" + ", ".join(expr(i) for i in e.items) + "]"
    if isinstance(e, ast.Call):
        return e.func.name + "(" + ", ".join(_args(e)) + ")"
    if isinstance(e, ast.BinOp):
        p = _PREC[e.op]
        left = expr(e.left)
        if _prec(e.left) < p:
            left = f"({left})"
        right = expr(e.right)
        if _prec(e.right) <= p:
            right = f"({right})"
        return f"{left} {e.op} {right}"
    if isinstance(e, ast.Neg):
        inner = expr(e.operand)
        if _prec(e.operand) < 3:
            inner = f"({inner})"
        return f"-{inner}"
    if isinstance(e, ast.LayerSlice):
        t = expr(e.target)
        if _prec(e.target) < 5:
            t = f"({t})"
        stack = f".{e.stack}" if e.stack is not None else ""
        return f"{t}{stack}.layers[{slice_text(e.start, e.stop)}]"
    raise TypeError(f"cannot format {type(e).__name__}")  # pragma: no cover


def _args(c: ast.Call) -> list[str]:
    return [expr(a) for a in c.args] + [f"{k.name.name}={expr(k.value)}" for k in c.kwargs]


def slice_text(a: int | None, b: int | None) -> str:
    """A layer range as written in a recipe: `2:5`, `:3`, `4:`."""
    return f"{'' if a is None else a}:{'' if b is None else b}"


def _selector(sels) -> str:
    parts = []
    for s in sels:
        if isinstance(s, ast.GlobSel):
            parts.append(_quote(s.pattern))
        else:
            parts.append(f"layers[{slice_text(s.start, s.stop)}]")
    return " and ".join(parts)


# Comments ------------------------------------------------------------------------------


@dataclass
class _Slot:
    node: object
    start: int
    end: int
    end_line: int
    leading: list[ast.Comment] = field(default_factory=list)
    trailing: list[ast.Comment] = field(default_factory=list)


def _slots(program: ast.Program) -> tuple[dict[int, _Slot], list[_Slot]]:
    slots: list[_Slot] = []

    def add(node):
        s = node.span
        slots.append(_Slot(node, s.start, s.end, s.end_line))

    for st in program.statements:
        add(st)
        for w in getattr(st, "wheres", ()):
            add(w)
            for en in w.entries:
                add(en)
        for en in getattr(st, "options", None) or ():
            add(en)
    return {id(s.node): s for s in slots}, slots


def _attach(program: ast.Program):
    by_id, slots = _slots(program)
    dangling: list[ast.Comment] = []
    for c in program.comments:
        pos, line = c.span.start, c.span.line
        # trailing: the innermost slot ending on this comment's line, before it
        ending = [s for s in slots if s.end <= pos and s.end_line == line]
        if ending:
            best = max(ending, key=lambda s: (s.end, -s.start))
            best.trailing.append(c)
            continue
        after = [s for s in slots if s.start >= pos]
        if after:
            min(after, key=lambda s: (s.start, s.end)).leading.append(c)
        else:
            dangling.append(c)
    return by_id, dangling


# Statements ----------------------------------------------------------------------------


def _trail(slot: _Slot) -> str:
    return "".join("  " + c.text for c in slot.trailing)


def _lead(slot: _Slot, indent: str) -> list[str]:
    """Leading comments, keeping one blank line where the source separates paragraphs."""
    out: list[str] = []
    for i, c in enumerate(slot.leading):
        if i and c.span.line - slot.leading[i - 1].span.line > 1:
            out.append("")
        out.append(indent + c.text)
    return out


def _entries_block(entries, by_id, indent: str, align: bool) -> list[str]:
    width = max((len(e.name.name) for e in entries), default=0) if align else 0
    out = []
    for e in entries:
        slot = by_id[id(e)]
        out += _lead(slot, indent)
        out.append(f"{indent}{e.name.name.ljust(width)} = {expr(e.value)}{_trail(slot)}")
    return out


def _call_lines(head: str, e: ast.Expr) -> list[str]:
    """`head + expr`, broken one argument per line when too long and it is a call."""
    one = head + expr(e)
    if len(one) <= LINE_LIMIT or not isinstance(e, ast.Call) or not (e.args or e.kwargs):
        return [one]
    lines = [f"{head}{e.func.name}("]
    lines += [f"{INDENT}{a}," for a in _args(e)]
    lines.append(")")
    return lines


def _statement(st, by_id) -> list[str]:
    slot = by_id[id(st)]
    lines = _lead(slot, "")
    if isinstance(st, (ast.ModelStmt, ast.AdapterStmt, ast.StatsStmt)):
        lines.append(f"{st.keyword} {st.name.name} = {_quote(st.source.value)}{_trail(slot)}")
        return lines
    if isinstance(st, (ast.ParamStmt, ast.SetStmt)):
        lines.append(f"{st.keyword} {st.name.name} = {expr(st.value)}{_trail(slot)}")
        return lines
    body = _call_lines(f"{st.keyword} {st.name.name} = ", st.expr)
    for w in st.wheres:
        wslot = by_id[id(w)]
        body += _lead(wslot, INDENT)
        sel = _selector(w.selectors)
        entries = w.entries
        simple = len(entries) <= 1 and not any(by_id[id(e)].leading for e in entries)
        if simple:
            inner = " ".join(f"{e.name.name} = {expr(e.value)}" for e in entries)
            etrail = "".join(_trail(by_id[id(e)]) for e in entries)
            text = f"{INDENT}where {sel} {{ {inner} }}" if inner else f"{INDENT}where {sel} {{}}"
            body.append(text + etrail + _trail(wslot))
        else:
            body.append(f"{INDENT}where {sel} {{")
            body += _entries_block(entries, by_id, INDENT * 2, align=False)
            body.append(f"{INDENT}}}{_trail(wslot)}")
    options = getattr(st, "options", None)
    if options is not None:
        if options:
            body[-1] += " {"
            body += _entries_block(options, by_id, INDENT, align=True)
            body.append("}" + _trail(slot))
        else:
            body[-1] += " {}" + _trail(slot)
    else:
        body[-1] += _trail(slot)
    return lines + body


def format_program(program: ast.Program) -> str:
    by_id, dangling = _attach(program)
    out: list[str] = []
    prev_end_line = None
    for st in program.statements:
        slot = by_id[id(st)]
        first_line = slot.leading[0].span.line if slot.leading else st.span.line
        block = _statement(st, by_id)
        if prev_end_line is not None and first_line - prev_end_line > 1:
            out.append("")
        # keep one blank line between a leading comment block and its statement
        if slot.leading:
            last_c = slot.leading[-1].span.line
            if st.span.line - last_c > 1:
                n = len(_lead(slot, ""))
                block = block[:n] + [""] + block[n:]
        out += block
        prev_end_line = max([st.span.end_line] + [c.span.line for c in slot.trailing])
    if dangling:
        if out and prev_end_line is not None and dangling[0].span.line - prev_end_line > 1:
            out.append("")
        out += [c.text for c in dangling]
    return "\n".join(out) + "\n" if out else ""


def format_text(text: str, file: str = "<recipe>") -> str:
    # imported here: the CLI imports this module for `literal` on every command, and the
    # parser brings lark
    from mergec.lang.parser import parse
    from mergec.limits import deep_recursion

    with deep_recursion():  # a long chain of `+` is printed by recursion
        return format_program(parse(text, file))
