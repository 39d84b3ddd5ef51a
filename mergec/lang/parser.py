"""Text -> syntax tree.

The grammar is loaded once (package resource when installed from a wheel, the repository's
``grammar/`` folder otherwise) and compiled to an LALR parser with positions on. Syntax
errors become E1xx diagnostics. When a recipe has several broken statements, each statement
is parsed on its own so that every syntax error is reported at once.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from dataclasses import replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

import lark
from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import (
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
    VisitError,
)

from mergec.diagnostics import Diagnostic, Label, MergecError, Span
from mergec.lang import ast
from mergec.limits import deep_recursion, paused_gc

KEYWORDS = ("model", "adapter", "param", "set", "let", "output", "where", "and", "true", "false")
STATEMENT_KEYWORDS = ("model", "adapter", "param", "set", "let", "output")

#: the deepest nesting of an expression (calls, brackets, operators): far beyond any real
#: recipe, well within what the recursive stages after the parser can walk
MAX_NESTING = 100
#: the most terms of one chain of `+`/`-` (or `*`/`/`): a soup of hundreds of models fits
MAX_TERMS = 1000
#: the longest number literal, in characters, and the largest magnitude of one
MAX_NUMBER_CHARS = 100
MAX_NUMBER = 1e308
#: names of layer stacks (mergec.arch.STACK_KINDS), for the help of `m.encoder[0:2]`
STACK_WORDS = frozenset({"encoder", "decoder", "vision", "text"})

#: the longest block index in `.layers[a:b]` and `where layers[a:b]`, in digits
MAX_INDEX_CHARS = 9


def grammar_text() -> str:
    try:
        res = resources.files("mergec").joinpath("grammar/mergec.lark")
        if res.is_file():
            return res.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):  # pragma: no cover
        pass
    repo = Path(__file__).resolve().parents[2] / "grammar" / "mergec.lark"
    return repo.read_text(encoding="utf-8")


_COMMENTS: list[Token] = []


def _cache_dir() -> Path:
    """Where the compiled parser is kept between runs: $MERGEC_CACHE_DIR, else the user's
    cache directory ($XDG_CACHE_HOME or ~/.cache) under mergec/."""
    env = os.environ.get("MERGEC_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mergec"


def _cache_file(grammar: str) -> Path:
    key = hashlib.sha256(f"{grammar}\0{lark.__version__}\0{sys.version}".encode()).hexdigest()
    return _cache_dir() / f"parser-{key[:32]}.lark"


@lru_cache(maxsize=1)
def _lark() -> Lark:
    """The LALR parser. Building it from the grammar takes a noticeable part of a `check`, so
    the built tables are cached on disk (keyed on the grammar, lark and Python versions) and
    loaded on later runs. The cache file is written under a unique name and renamed into
    place, so concurrent runs never see half a file; where no cache can be written the
    parser is simply built each time."""
    grammar = grammar_text()
    options = dict(parser="lalr", propagate_positions=True, maybe_placeholders=True,
                   lexer_callbacks={"COMMENT": _COMMENTS.append})
    try:
        final = _cache_file(grammar)
        if final.is_file():
            return Lark(grammar, cache=str(final), **options)
        final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}.{os.getpid()}.tmp")
        parser = Lark(grammar, cache=str(tmp), **options)
        os.replace(tmp, final)
        return parser
    except OSError:
        return Lark(grammar, **options)


class _SyntaxProblem(Exception):
    def __init__(self, code: str, message: str, token, help: str | None = None):
        super().__init__(message)
        self.code, self.message, self.token, self.help = code, message, token, help


class _Build(Transformer):
    """One method per grammar rule; builds ast nodes with spans."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    # spans -------------------------------------------------------------------------
    def sp(self, x) -> Span:
        if isinstance(x, Token):
            return Span(self.file, x.line, x.column, x.end_line, x.end_column,
                        x.start_pos, x.end_pos)
        m = x
        return Span(self.file, m.line, m.column, m.end_line, m.end_column,
                    m.start_pos, m.end_pos)

    def ident(self, tok: Token) -> ast.Ident:
        return ast.Ident(str(tok), self.sp(tok))

    # statements --------------------------------------------------------------------
    def start(self, items):
        return list(items)

    @v_args(meta=True)
    def model_stmt(self, meta, items):
        name, src = items
        return ast.ModelStmt(self.ident(name), self._str(src), self.sp(meta))

    @v_args(meta=True)
    def adapter_stmt(self, meta, items):
        name, src = items
        return ast.AdapterStmt(self.ident(name), self._str(src), self.sp(meta))

    @v_args(meta=True)
    def stats_stmt(self, meta, items):
        name, src = items
        return ast.StatsStmt(self.ident(name), self._str(src), self.sp(meta))

    @v_args(meta=True)
    def param_stmt(self, meta, items):
        return ast.ParamStmt(self.ident(items[0]), items[1], self.sp(meta))

    @v_args(meta=True)
    def set_stmt(self, meta, items):
        return ast.SetStmt(self.ident(items[0]), items[1], self.sp(meta))

    @v_args(meta=True)
    def let_stmt(self, meta, items):
        name, expr, *wheres = items
        return ast.LetStmt(self.ident(name), expr, tuple(wheres), self.sp(meta))

    @v_args(meta=True)
    def output_stmt(self, meta, items):
        name, expr, *rest = items
        options = None
        if rest and isinstance(rest[-1], tuple) and rest[-1][0] == "options":
            options = rest.pop()[1]
        return ast.OutputStmt(self.ident(name), expr, tuple(rest), options, self.sp(meta))

    def option_block(self, items):
        return ("options", tuple(items))

    @v_args(meta=True)
    def entry(self, meta, items):
        return ast.Entry(self.ident(items[0]), items[1], self.sp(meta))

    @v_args(meta=True)
    def where_clause(self, meta, items):
        sel, *entries = items
        return ast.Where(tuple(sel), tuple(entries), self.sp(meta))

    def selector(self, items):
        return list(items)

    def sel_glob(self, items):
        s = self._str(items[0])
        return ast.GlobSel(s.value, s.span)

    @v_args(meta=True)
    def sel_layers(self, meta, items):
        name, (start, stop) = items
        if str(name) != "layers":
            raise _SyntaxProblem(
                "E105", f"unknown selector `{name}[...]`", name,
                'a `where` selector is a glob in quotes ("*.mlp.*") or `layers[a:b]`')
        return ast.LayersSel(start, stop, self.sp(meta))

    # expressions -------------------------------------------------------------------
    def _str(self, tok: Token) -> ast.Str:
        raw = str(tok)[1:-1]
        value = re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), raw)
        return ast.Str(value, self.sp(tok))

    def number(self, items):
        tok = items[0]
        text = str(tok)
        if len(text) > MAX_NUMBER_CHARS:
            raise _SyntaxProblem(
                "E108", f"number literal of {len(text)} characters is too long: a number "
                f"has at most {MAX_NUMBER_CHARS}", tok,
                "write large or small numbers with an exponent, e.g. `1e-6`")
        if re.fullmatch(r"[0-9]+", text):
            value: float | int = int(text)
        else:
            value = float(text)
        if not math.isfinite(value) or abs(value) > MAX_NUMBER:
            raise _SyntaxProblem(
                "E108", f"number `{text}` is too large: numbers are at most 1e308", tok,
                "weights and parameters are finite numbers")
        return ast.Num(value, text, self.sp(tok))

    def string(self, items):
        return self._str(items[0])

    @v_args(meta=True)
    def true(self, meta, items):
        return ast.Bool(True, self.sp(meta))

    @v_args(meta=True)
    def false(self, meta, items):
        return ast.Bool(False, self.sp(meta))

    def name(self, items):
        i = self.ident(items[0])
        return ast.Name(i, i.span)

    @v_args(meta=True)
    def call(self, meta, items):
        func, *args = items
        pos, kws = [], []
        for a in args:
            if a is None:
                continue
            if isinstance(a, ast.Kwarg):
                kws.append(a)
            else:
                if kws:
                    raise _SyntaxProblem(
                        "E106", "positional argument after a keyword argument", a.span,
                        "put the inputs first, then the `name=value` parameters")
                pos.append(a)
        return ast.Call(self.ident(func), tuple(pos), tuple(kws), self.sp(meta))

    @v_args(meta=True)
    def kwarg(self, meta, items):
        return ast.Kwarg(self.ident(items[0]), items[1], self.sp(meta))

    @v_args(meta=True)
    def list(self, meta, items):
        return ast.ListExpr(tuple(i for i in items if i is not None), self.sp(meta))

    def paren(self, items):
        return items[0]

    def _bin(op):  # noqa: N805 - helper to make rule methods
        @v_args(meta=True)
        def rule(self, meta, items):
            return ast.BinOp(op, items[0], items[1], self.sp(meta))
        return rule

    add, sub, mul, div = _bin("+"), _bin("-"), _bin("*"), _bin("/")

    @v_args(meta=True)
    def neg(self, meta, items):
        return ast.Neg(items[0], self.sp(meta))

    @v_args(meta=True)
    def layer_slice(self, meta, items):
        target, attr, (start, stop) = items
        if str(attr) != "layers":
            stack_help = (f"a run of blocks of one layer stack is written "
                          f"`.{attr}.layers[a:b]`" if str(attr) in STACK_WORDS else None)
            raise _SyntaxProblem(
                "E105", f"unknown attribute `.{attr}`", attr, stack_help or
                "the only attribute is `.layers[a:b]`, a run of transformer blocks")
        return ast.LayerSlice(target, start, stop, self.sp(meta))

    @v_args(meta=True)
    def stack_slice(self, meta, items):
        target, stack, attr, (start, stop) = items
        if str(attr) != "layers":
            raise _SyntaxProblem(
                "E105", f"unknown attribute `.{stack}.{attr}`", attr,
                f"a run of blocks of one layer stack is `.{stack}.layers[a:b]`")
        return ast.LayerSlice(target, start, stop, self.sp(meta), str(stack))

    def slice(self, items):
        for tok in items:
            if tok is not None and len(tok) > MAX_INDEX_CHARS:
                raise _SyntaxProblem(
                    "E108", f"block index of {len(tok)} digits is too long: an index has at "
                    f"most {MAX_INDEX_CHARS}", tok, "blocks are numbered from 0")
        start, stop = items
        return (int(start) if start is not None else None,
                int(stop) if stop is not None else None)


_TOKEN_NAMES = {
    "NAME": "a name", "STRING": "a string", "NUMBER": "a number", "INT": "a whole number",
    "$END": "end of file",
}


_ORDER = ["`,`", "`)`", "`]`", "`}`", "`=`", "a name", "a number", "a whole number",
          "a string"]
_OPERATORS = {"`+`", "`-`", "`*`", "`/`", "`.`"}


def _describe_expected(expected: set[str], lark: Lark) -> str:
    names = []
    by_name = {t.name: t for t in lark.terminals}
    for e in sorted(expected):
        if e in _TOKEN_NAMES:
            names.append(_TOKEN_NAMES[e])
        elif e in by_name and by_name[e].pattern.type == "str":
            names.append(f"`{by_name[e].pattern.value}`")
        else:
            names.append(e.lower())
    names = set(names)
    if names - _OPERATORS:
        names -= _OPERATORS - {"`-`"} if "a number" in names else _OPERATORS
    names = sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else 99, n))
    if len(names) > 6:
        return ", ".join(names[:6]) + ", ..."
    if len(names) <= 2:
        return " or ".join(names)
    return ", ".join(names[:-1]) + " or " + names[-1]


def _token_text(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    if tok.type == "STRING":
        return f"string {tok}"
    if tok.type in ("NUMBER", "INT"):
        return f"number `{tok}`"
    if tok.type == "NAME":
        return f"name `{tok}`"
    return f"`{tok}`"


def _span_at(file: str, text: str, pos: int, line: int, col: int, length: int = 1) -> Span:
    return Span(file, line, col, line, col + max(length, 1), pos, pos + max(length, 1))


_CLOSERS = {"(": ")", "[": "]", "{": "}"}


def _unclosed(text: str, start: int = 0, end: int | None = None) -> int | None:
    """Offset of the innermost bracket opened in text[start:end] and never closed."""
    stack: list[int] = []
    i, end = start, len(text) if end is None else end
    while i < end:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < end and text[j] not in '"\n':
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        if c == "#":
            nl = text.find("\n", i)
            i = end if nl < 0 else nl
            continue
        if c in _CLOSERS:
            stack.append(i)
        elif c in ")]}" and stack and _CLOSERS[text[stack[-1]]] == c:
            stack.pop()
        i += 1
    return stack[-1] if stack else None


def _pos_span(file: str, text: str, pos: int, length: int = 1) -> Span:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return Span(file, line, col, line, col + length, pos, pos + length)


def _end_span(file: str, text: str) -> Span:
    """The end of the last non-blank line (where a missing token would go)."""
    stripped = text.rstrip()
    return _pos_span(file, text, max(len(stripped) - 1, 0))


def _diagnose(e: UnexpectedInput, file: str, text: str, chunk_start: int = 0) -> Diagnostic:
    lark = _lark()
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        span = _span_at(file, text, e.pos_in_stream, e.line, e.column)
        if ch == '"':
            return Diagnostic("E104", "unterminated string", span,
                              "close the string with `\"` on the same line")
        if ch == "'":
            return Diagnostic("E102", "unexpected character `'`", span,
                              'strings use double quotes: "..."')
        if ch == ";":
            return Diagnostic("E102", "unexpected character `;`", span,
                              "statements end at the line break; remove the `;`")
        return Diagnostic("E102", f"unexpected character `{ch}`", span,
                          "names are letters, digits and `_`; strings go in double quotes")
    if isinstance(e, UnexpectedToken):
        tok = e.token
        expected = set(e.expected or ())
        if tok.type == "$END":
            open_at = _unclosed(text, chunk_start)
            if open_at is not None:
                br = text[open_at]
                return Diagnostic("E103", f"unexpected end of file: this `{br}` is never closed",
                                  _pos_span(file, text, open_at),
                                  f"add `{_CLOSERS[br]}` where it ends")
            return Diagnostic("E103", "unexpected end of file: the statement is incomplete",
                              _end_span(file, text),
                              f"expected {_describe_expected(expected, lark)} after this")
        span = Span(file, tok.line, tok.column, tok.end_line, tok.end_column,
                    tok.start_pos, tok.end_pos)
        help_ = f"expected {_describe_expected(expected, lark)}"
        if tok.type in ("NAME", "STRING", "NUMBER") and "COMMA" in expected:
            help_ = f"missing `,` before {_token_text(tok)}?"
        elif str(tok) in KEYWORDS and "NAME" in expected:
            help_ = f"`{tok}` is a keyword and cannot be used as a name"
        elif tok.type == "EQUAL" and {"RPAR", "COMMA"} & expected:
            help_ = "keyword arguments are `name=value`, with a plain name before `=`"
        return Diagnostic("E101", f"unexpected {_token_text(tok)}", span, help_)
    if isinstance(e, UnexpectedEOF):  # pragma: no cover - LALR reports $END tokens instead
        return Diagnostic("E103", "unexpected end of file", _end_span(file, text))
    raise e  # pragma: no cover


def _parse_once(text: str, file: str) -> tuple[list, list[ast.Comment]]:
    lark = _lark()
    _COMMENTS.clear()
    tree = lark.parse(text)
    comments = [ast.Comment(str(t).rstrip(), Span(file, t.line, t.column, t.end_line,
                                                  t.end_column, t.start_pos, t.end_pos))
                for t in _COMMENTS]
    _COMMENTS.clear()
    _check_nesting(tree, file)
    builder = _Build(file)
    try:
        stmts = builder.transform(tree)
    except VisitError as ve:
        if isinstance(ve.orig_exc, _SyntaxProblem):
            raise ve.orig_exc from None
        raise
    return stmts, comments


#: binary operators of one precedence level: `a + b - c` is one chain, not three levels
_CHAINS = {"add": "sum", "sub": "sum", "mul": "product", "div": "product"}


def _check_nesting(tree: Tree, file: str) -> None:
    """E107 when an expression nests deeper than MAX_NESTING levels; E110 when a chain of
    one operator level (`a + b + c ...`) has more than MAX_TERMS terms. A chain counts as
    one level however long it is (the parser builds it left-deep). The walk is iterative,
    so it measures trees that a recursive walk could not."""
    todo = [(tree, 0, 1)]
    while todo:
        node, depth, terms = todo.pop()
        if depth > MAX_NESTING or terms > MAX_TERMS:
            m = node.meta
            span = Span(file, m.line, m.column, m.end_line, m.end_column, m.start_pos,
                        m.end_pos) if not m.empty else Span(file, 1, 1, 1, 2, 0, 1)
            if terms > MAX_TERMS:
                raise _SyntaxProblem(
                    "E110", f"expression too long: more than {MAX_TERMS:,} terms joined by "
                    f"`{'+`/`-' if _CHAINS[node.data] == 'sum' else '*`/`/'}`", span,
                    "split it into partial sums with `let` statements, or use a merge call "
                    "such as `linear(a, b, c, weight=[...])`")
            raise _SyntaxProblem(
                "E107", f"expression nested too deeply: more than {MAX_NESTING} levels of "
                "calls, brackets or operators", span,
                "name the inner parts with `let` statements")
        # a statement and its parts start the count; each expression node below adds one,
        # except the left operand of an operator of the same level (the chain goes on)
        inner = depth + 1 if node.data not in ("start",) else 0
        chain = _CHAINS.get(node.data)
        for i, child in enumerate(node.children):
            if isinstance(child, Tree):
                if i == 0 and chain is not None and _CHAINS.get(child.data) == chain:
                    todo.append((child, depth, terms + 1))  # `terms`: operands so far
                else:
                    todo.append((child, inner, 2 if child.data in _CHAINS else 1))


def _problem_diag(p: _SyntaxProblem, file: str) -> Diagnostic:
    t = p.token
    if isinstance(t, Span):
        span = t
    else:
        span = Span(file, t.line, t.column, t.end_line, t.end_column, t.start_pos, t.end_pos)
    return Diagnostic(p.code, p.message, span, p.help)


#: `stats` is a statement only before a name (`stats=[...]` is a parameter)
_STMT_START = re.compile(r"^[ \t]*(" + "|".join(
    k + (r"(?=[ \t]+[A-Za-z_])" if k == "stats" else "") for k in STATEMENT_KEYWORDS)
    + r")\b", re.M)


def parse(text: str, file: str = "<recipe>") -> ast.Program:
    """Parse recipe text. Raises MergecError with every syntax error found."""
    with paused_gc(), deep_recursion():  # a long chain of `+` is a deep tree
        return _parse(text, file)


def _parse(text: str, file: str) -> ast.Program:
    try:
        stmts, comments = _parse_once(text, file)
        return ast.Program(tuple(stmts), tuple(comments), file, text)
    except UnexpectedInput as e:
        first = _diagnose(e, file, text)
    except _SyntaxProblem as p:
        first = _problem_diag(p, file)
    # Find the other broken statements: parse each statement alone, at its real position.
    diags = _diagnose_by_statement(text, file)
    if not diags:
        diags = [first]
    raise MergecError(diags)


def _diagnose_by_statement(text: str, file: str) -> list[Diagnostic]:
    starts = [m.start() for m in _STMT_START.finditer(text)]
    if not starts or starts[0] != 0 and text[: starts[0]].strip(" \t\n") and not \
            all(l.strip().startswith("#") or not l.strip() for l in text[: starts[0]].splitlines()):
        starts = [0] + starts
    bounds = list(zip(starts, starts[1:] + [len(text)]))
    out: list[Diagnostic] = []
    line0, counted = 0, 0  # lines before the statement (counted once, as it goes)
    for a, b in bounds:
        line0 += text.count("\n", counted, a)
        counted = a
        # each statement is parsed alone (it starts a line), then its spans are moved to
        # where it is in the file: time linear in the recipe's size
        chunk = text[a:b]
        try:
            _parse_once(chunk, file)
        except UnexpectedInput as e:
            d = _moved(_diagnose(e, file, chunk, 0), line0, a)
            if d.code == "E103" and b < len(text):
                # the statement ends where the next one starts: point at that keyword
                kw = _STMT_START.match(text, b)
                start = kw.start(1)
                span = _pos_span(file, text, start, len(kw.group(1)))
                open_at = _unclosed(text, a, b)
                if open_at is not None:
                    br = text[open_at]
                    o = _pos_span(file, text, open_at)
                    d = Diagnostic("E101", f"unexpected `{kw.group(1)}`: the `{br}` opened on "
                                   f"line {o.line} is never closed", span,
                                   f"add `{_CLOSERS[br]}` where it ends",
                                   (Label(o, "opened here"),))
                else:
                    d = Diagnostic("E101", f"unexpected `{kw.group(1)}`: the statement "
                                   "before it is incomplete", span, d.help)
            out.append(d)
        except _SyntaxProblem as p:
            out.append(_moved(_problem_diag(p, file), line0, a))
    return out


def _moved(d: Diagnostic, lines: int, offset: int) -> Diagnostic:
    """`d`, found in a statement parsed alone, with its spans moved down `lines` lines and
    `offset` characters (the statement starts a line, so columns stay)."""
    def mv(s: Span | None) -> Span | None:
        if s is None:
            return None
        return replace(s, line=s.line + lines, end_line=s.end_line + lines,
                       start=s.start + offset, end=s.end + offset)

    return replace(d, span=mv(d.span),
                   labels=tuple(replace(lb, span=mv(lb.span)) for lb in d.labels))


def parse_file(path: str | Path) -> ast.Program:
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    return parse(text, str(path))
