"""The front end is linear in the recipe's size: a `let` value is one shared node of the
checked program and of the IR, never copied into a tree; deep `let` chains are measured
and bounded (E109); a syntax error among many statements is found without re-reading the
statements before it. Times are in benchmarks/frontend.py; these tests assert the
structure that makes them linear."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mergec.api import build, check, compile
from mergec.check.program import CCall, CLinear
from mergec.check.walk import call_numbers, operands, walk
from mergec.diagnostics import MergecError
from mergec.ir.nodes import topo
from mergec.limits import MAX_VALUE_DEPTH
from mergec.demo import load_tensors


def _head(family) -> str:
    return (f'model b = "{family["base"]}"\nmodel m = "{family["math"]}"\n'
            f'model c = "{family["code"]}"\n')


def _diags(text: str):
    with pytest.raises(MergecError) as e:
        check("r.merge", text=text)
    return [(d.code, d.message, str(d.span) if d.span else None, d.help)
            for d in e.value.diagnostics]


def test_doubling_let_chain_stays_one_term_per_input(family):
    # each step uses the previous value twice: expanded as a tree this has 2**60 leaves
    lines = ["let a0 = m"] + [f"let a{i} = 0.5 * a{i - 1} + 0.5 * a{i - 1}"
                              for i in range(1, 61)]
    checked = check("r.merge", text=_head(family) + "\n".join(lines) + "\noutput o = a60\n")
    value = checked.outputs[0].expr
    assert isinstance(value, CLinear)
    assert [(t.name, k) for t, k in value.terms] == [("m", 1.0)]


def test_running_sum_keeps_one_term_per_input(family):
    lines = ["let a0 = m"] + [f"let a{i} = a{i - 1} + 0.001 * (c - b)" for i in range(1, 1001)]
    checked = check("r.merge", text=_head(family) + "\n".join(lines) + "\noutput o = a1000\n")
    terms = {t.name: k for t, k in checked.outputs[0].expr.terms}
    assert set(terms) == {"m", "c", "b"}
    assert terms["m"] == 1.0
    assert terms["c"] == pytest.approx(1.0) and terms["b"] == pytest.approx(-1.0)


def test_call_chain_of_a_thousand_checks_plans_and_builds(family, tmp_path):
    n = 1000
    lines = ["let a0 = m"] + [f"let a{i} = linear(a{i - 1}, b, weight=[0.99, 0.01])"
                              for i in range(1, n)]
    r = tmp_path / "r.merge"
    r.write_text(_head(family) + "\n".join(lines) + f"\noutput o = a{n - 1}\n")
    compiled = compile(r)
    # folded into one weighted sum per tensor: m * 0.99**999 + b * (1 - 0.99**999)
    out = build(r, tmp_path / "out", compiled=compiled)
    assert out
    got = load_tensors(tmp_path / "out" / "o")
    mm, bb = load_tensors(family["math"]), load_tensors(family["base"])
    w = 0.99 ** (n - 1)
    for name, v in got.items():
        ref = (w * mm[name].astype(np.float64) + (1 - w) * bb[name].astype(np.float64))
        np.testing.assert_allclose(v.astype(np.float64), ref, rtol=1e-2, atol=1e-2)


def test_shared_let_is_lowered_once(family):
    text = _head(family) + ("let t = ties(m - b, c - b, density=0.5)\n"
                            "output p = b + 0.5 * t + 0.5 * t\n"
                            "output q = linear(slerp(m, c, t=0.5), t + m, weight=[0.5, 0.5])\n")
    compiled = compile("r.merge", text=text, passes=False)
    for lo in compiled.lowered:
        # before the passes: the value `t` is one IR node per tensor, however often used
        for t in lo.tensors:
            merges = [n for n in topo(t.node) if n.op == "merge" and
                      n.attr("method") == "ties"]
            assert len(merges) == 1, t.name


def test_let_chain_past_the_depth_limit_is_e109(family):
    n = MAX_VALUE_DEPTH + 1
    lines = ["let a0 = m"] + [f"let a{i} = linear(a{i - 1}, b, weight=[0.5, 0.5])"
                              for i in range(1, n)]
    text = _head(family) + "\n".join(lines) + f"\noutput o = a{n - 1}\n"
    (d,) = _diags(text)
    assert d[0] == "E109"
    assert d[1] == (f"`a{n - 1}` nests values more than {MAX_VALUE_DEPTH:,} levels deep "
                    "(merges, arithmetic and slices, through `let` statements)")
    assert d[2] == f"r.merge:{n + 3}:{len(f'let a{n - 1} = ') + 1}"
    assert d[3] == ("build long chains in several recipes, or combine the steps into one "
                    "merge call")


def test_let_chain_at_the_depth_limit_checks(family):
    # a0 = m is one level (the input), each call adds one, the output's own value adds none
    n = MAX_VALUE_DEPTH
    lines = ["let a0 = m"] + [f"let a{i} = linear(a{i - 1}, b, weight=[0.5, 0.5])"
                              for i in range(1, n)]
    checked = check("r.merge", text=_head(family) + "\n".join(lines) + f"\noutput o = a{n - 1}\n")
    assert checked.outputs


def test_syntax_error_deep_in_a_long_recipe_points_at_its_line(family):
    lines = [f"let v{i} = linear(m, b, weight=[0.5, 0.5])" for i in range(3000)]
    lines[2000] = "let broken = ties(m,, b)"
    lines[2500] = "let also = (m + b"
    (d1, d2) = _diags(_head(family) + "\n".join(lines) + "\noutput o = v1\n")
    assert d1[:3] == ("E101", "unexpected `,`", "r.merge:2004:21")
    assert d2[0] == "E101" and d2[2] == "r.merge:2505:1"
    assert d2[1] == "unexpected `let`: the `(` opened on line 2504 is never closed"


# --- call numbering on the DAG equals numbering the expanded tree ------------------------

def _tree_numbers(e):
    """The definition, by expanding the DAG into a tree (exponential; small cases only)."""
    order = []

    def rec(n):
        if isinstance(n, CCall):
            order.append(n)
        for o in operands(n):
            rec(o)

    rec(e)
    return {id(c): i for i, c in enumerate(order)}


def test_call_numbers_match_the_tree_numbering(family):
    rng = random.Random(7)
    for trial in range(25):
        names = ["m", "c"]
        lines = []
        for i in range(8):
            x, y = rng.choice(names), rng.choice(names)
            kind = rng.randrange(3)
            if kind == 0:
                lines.append(f"let v{i} = linear({x}, {y}, weight=[0.5, 0.5])")
            elif kind == 1:
                lines.append(f"let v{i} = 0.5 * {x} + 0.5 * {y}")
            else:
                lines.append(f"let v{i} = slerp({x}, {y}, t=0.3)")
            names.append(f"v{i}")
        lines.append(f"output o = linear({names[-1]}, {rng.choice(names)}, "
                     "weight=[0.5, 0.5])")
        checked = check("r.merge", text=_head(family) + "\n".join(lines) + "\n")
        e = checked.outputs[0].expr
        assert call_numbers(e) == _tree_numbers(e), trial
        # walk visits every node once
        ids = [id(n) for n in walk(e)]
        assert len(ids) == len(set(ids))
