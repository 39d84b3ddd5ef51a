"""Parser and formatter: fixed forms parse, the formatter's exact output, round trips."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mergec.diagnostics import MergecError
from mergec.lang import ast
from mergec.lang.fmt import format_program, format_text
from mergec.lang.parser import parse

FIXTURES = Path(__file__).parent / "fixtures" / "fmt"
RECIPES = sorted((Path(__file__).parents[1] / "recipes").glob("*.merge"))


def strip(node):
    """A node as nested tuples without spans, for comparing programs."""
    if dataclasses.is_dataclass(node):
        return (type(node).__name__,) + tuple(
            strip(getattr(node, f.name)) for f in dataclasses.fields(node)
            if f.name not in ("span", "text", "file", "comments"))
    if isinstance(node, (tuple, list)):
        return tuple(strip(x) for x in node)
    return node


@pytest.mark.parametrize("name", sorted(p.stem for p in FIXTURES.glob("*.merge")))
def test_format_exact_output(name):
    src = (FIXTURES / f"{name}.merge").read_text()
    expected = (FIXTURES / f"{name}.expected").read_text()
    assert format_text(src) == expected


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.merge")) + RECIPES,
                         ids=lambda p: p.name)
def test_round_trip(path):
    src = path.read_text()
    once = format_text(src)
    assert format_text(once) == once  # a fixed point
    assert strip(parse(once).statements) == strip(parse(src).statements)  # same program
    # comments are kept, in order
    assert [c.text for c in parse(once).comments] == [c.text.rstrip() for c in parse(src).comments]


def test_fixed_forms_parse_to_the_expected_nodes():
    p = parse((FIXTURES / "design_sample.merge").read_text(), "d.merge")
    kinds = [type(s).__name__ for s in p.statements]
    assert kinds == ["ModelStmt", "ModelStmt", "AdapterStmt", "ParamStmt", "SetStmt",
                     "LetStmt", "LetStmt", "OutputStmt"]
    out = p.statements[-1]
    assert isinstance(out.expr, ast.Call) and out.expr.func.name == "ties"
    assert [a.id for a in out.expr.args] == ["math", "code"]
    assert [k.name.name for k in out.expr.kwargs] == ["base", "weight", "density"]
    assert [e.name.name for e in out.options] == ["dtype", "tokenizer", "config"]
    # spans are 1-based line:col of the source
    assert (out.span.line, out.span.col) == (13, 1)
    assert (out.expr.func.span.line, out.expr.func.span.col) == (13, 17)
    assert p.statements[0].source.value == "meta-llama/Llama-3.1-8B"


def test_where_selectors_and_slices():
    p = parse((FIXTURES / "where_stack.merge").read_text())
    blend = p.statements[0]
    assert [type(s).__name__ for s in blend.wheres[2].selectors] == ["LayersSel", "GlobSel"]
    assert (blend.wheres[2].selectors[0].start, blend.wheres[2].selectors[0].stop) == (0, 2)
    ramp = blend.wheres[0].entries[0].value
    assert ramp.func.name == "ramp" and [a.value for a in ramp.args] == [0, 0.5, 0.3, 0.7, 1]
    mixed = p.statements[2].expr
    inner = mixed.args[0]
    assert inner.func.name == "slerp"
    assert isinstance(inner.args[0], ast.LayerSlice) and inner.args[0].stop == 8


def test_precedence_and_associativity():
    e = parse("let x = a - b - c * 2 / d + -e").statements[0].expr
    assert format_program(parse("let x = a - b - c * 2 / d + -e")) == \
        "let x = a - b - c * 2 / d + -e\n"
    # ((a - b) - ((c * 2) / d)) + (-e)
    assert e.op == "+" and isinstance(e.right, ast.Neg)
    assert e.left.op == "-" and e.left.left.op == "-" and e.left.right.op == "/"
    assert format_text("let x = a - (b - c)\n") == "let x = a - (b - c)\n"
    assert format_text("let x = (a - b) - c\n") == "let x = a - b - c\n"


def test_strings_with_escapes_and_hashes():
    src = 'model a = "./dir # not a comment"  # a comment\n'
    p = parse(src)
    assert p.statements[0].source.value == "./dir # not a comment"
    assert [c.text for c in p.comments] == ["# a comment"]
    assert format_text(src) == src


@pytest.mark.parametrize("src, code, line, col", [
    ("model = \"x\"", "E101", 1, 7),
    ("model a = 'x'", "E102", 1, 11),
    ("model a = \"x", "E104", 1, 11),
    ("output m = linear(a, b", "E103", 1, 18),
    ("output m = linear(a, t=1, b)", "E106", 1, 27),
    ("output m = a.blocks[0:2]", "E105", 1, 14),
    ("let x = 1 +", "E103", 1, 11),
])
def test_syntax_error_codes_and_positions(src, code, line, col):
    with pytest.raises(MergecError) as ei:
        parse(src, "r.merge")
    d = ei.value.diagnostics[0]
    assert (d.code, d.span.line, d.span.col) == (code, line, col)


def test_every_broken_statement_is_reported():
    src = "model a = \"./a\"\nlet x = a +\nlet y = (a\noutput m = linear(a)\nlet z = = 1\n"
    with pytest.raises(MergecError) as ei:
        parse(src, "r.merge")
    assert [(d.code, d.span.line) for d in ei.value.diagnostics] == \
        [("E101", 3), ("E101", 4), ("E101", 5)]
