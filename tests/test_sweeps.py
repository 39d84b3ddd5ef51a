"""Sweeps: `param x = sweep(...)` and `--set x=a,b,c` build one output per point, each
distinct tensor computed once; every point equals a separate build bit for bit."""

from __future__ import annotations

from fnmatch import fnmatchcase

import numpy as np
import pytest

import mergec
from mergec.api import check
from mergec.check.sweeps import MAX_POINTS, Point, value_text
from mergec.demo import load_tensors
from mergec.diagnostics import MergecError
from mergec.ir.nodes import topo

ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5)

SWEEP = """model base = "{base}"
model math = "{math}"
model code = "{code}"
model chat = "{chat}"

param alpha = sweep(0.1, 0.2, 0.3, 0.4, 0.5)

output merged = task_arithmetic(math, code, chat, base=base, weight=[alpha, 0.3, 0.2])
    where "*.mlp.*" {{ weight = [0.5, 0.3, 0.2] }}
"""


def recipe(tmp_path, family, text=SWEEP, name="r.merge"):
    p = tmp_path / name
    p.write_text(text.format(**{k: str(v) for k, v in family.items()}))
    return p


def same_bytes(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes() for k in a)


def test_five_points_share_independent_tensors_and_equal_separate_builds(tmp_path, family):
    r = recipe(tmp_path, family)
    seen = []
    results = mergec.build(r, tmp_path / "sweep", jobs=1, trace=seen.append)
    names = [x.output for x in results]
    assert names == [f"merged-alpha={a}" for a in ALPHAS]
    # the tensors the `where` block fixes do not depend on alpha: computed once, for all
    n_all = len(load_tensors(family["base"]))
    n_mlp = sum(1 for n in load_tensors(family["base"]) if fnmatchcase(n, "*.mlp.*"))
    assert n_mlp > 0
    rep = results.sweep
    assert (rep.points, rep.written) == (5, 5 * n_all)
    assert (rep.shared, rep.shared_by_all) == (n_mlp, n_mlp)
    assert rep.computed == n_mlp + 5 * (n_all - n_mlp)
    assert rep.ran == rep.computed == len([s for s in seen if "name" in s])
    for a in ALPHAS:
        alone = mergec.build(r, tmp_path / f"alone-{a}", overrides={"alpha": str(a)}, jobs=1)
        assert [x.output for x in alone] == ["merged"]
        assert same_bytes(load_tensors(tmp_path / "sweep" / f"merged-alpha={a}"),
                          load_tensors(tmp_path / f"alone-{a}" / "merged"))
    # and the value itself: base + alpha (math - base) + 0.3 (code - base) + 0.2 (chat - base)
    f = {k: load_tensors(family[k]) for k in ("base", "math", "code", "chat")}
    t = "model.layers.1.self_attn.q_proj.weight"
    x = {k: v[t].astype(np.float64) for k, v in f.items()}
    want = x["base"] + 0.3 * (x["math"] - x["base"]) + 0.3 * (x["code"] - x["base"]) + \
        0.2 * (x["chat"] - x["base"])
    got = load_tensors(tmp_path / "sweep" / "merged-alpha=0.3")[t].astype(np.float64)
    np.testing.assert_allclose(got, want, rtol=2 ** -7, atol=1e-6)
    card = (tmp_path / "sweep" / "merged-alpha=0.3" / "README.md").read_text()
    assert "# merged-alpha=0.3\n" in card
    assert "| alpha | `0.3` | swept: point 3 of 5 (`alpha=0.3`) |" in card


RANDOM = """model base = "{base}"
model math = "{math}"
model code = "{code}"

param d = 0.5
param w = 1

output m = dare_ties(math, code, base=base, density=d, weight=[w, 0.5])
output plain = linear(math, code)
"""


def test_cli_sweep_cartesian_product_with_a_random_method(tmp_path, family, run_cli):
    r = recipe(tmp_path, family, RANDOM)
    code, out, err = run_cli("build", r, "-o", tmp_path / "o", "-q", "-j", "1",
                             "--set", "d=0.3,0.7", "--set", "w=1,-0.25")
    assert code == 0, err
    folders = [f"{o}-d={d}-w={w}" for o in ("m", "plain") for d in ("0.3", "0.7")
               for w in ("1", "-0.25")]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == sorted(folders)
    # `plain` does not use the params: computed once, written to all 4 points
    n = len(load_tensors(family["base"]))
    assert out.splitlines()[-1] == (f"sweep: 4 points, {8 * n} tensors written, "
                                    f"{4 * n + n} computed; {n} computed once and shared "
                                    f"between points ({n} by all 4)")
    for d in ("0.3", "0.7"):
        for w in ("1", "-0.25"):
            alone = tmp_path / f"alone-{d}-{w}"
            assert run_cli("build", r, "-o", alone, "-q", "-j", "1", "--set", f"d={d}",
                           "--set", f"w={w}").exit_code == 0
            for o in ("m", "plain"):
                assert same_bytes(load_tensors(tmp_path / "o" / f"{o}-d={d}-w={w}"),
                                  load_tensors(alone / o))


def test_check_and_plan_name_the_points(tmp_path, family, run_cli):
    r = recipe(tmp_path, family)
    code, out, _ = run_cli("check", r)
    assert (code, out) == (0, f"{r}: ok (4 inputs, 1 output, 5 sweep points)\n")
    # one value on the command line replaces the sweep: a plain build
    code, out, _ = run_cli("check", r, "--set", "alpha=0.25")
    assert (code, out) == (0, f"{r}: ok (4 inputs, 1 output)\n")
    code, out, _ = run_cli("plan", r, "--set", "alpha=0.25,0.75")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "sweep of 2 points: alpha=0.25; alpha=0.75"
    assert lines[3] == "  folders        merged-alpha=0.25, merged-alpha=0.75"


def test_point_names():
    p = Point(0, 1, (("alpha", 0.2), ("mode", "a b/c"), ("neg", -1e-05), ("on", True)))
    assert p.folder("out") == "out-alpha=0.2-mode=a_b_c-neg=-1e-05-on=true"
    assert p.overrides() == {"alpha": "0.2", "mode": '"a b/c"', "neg": "-1e-05",
                             "on": "true"}
    assert value_text(2.0) == "2" and value_text("") == "_"


def errors(tmp_path, family, body, overrides=None):
    head = 'model base = "{base}"\nmodel math = "{math}"\n'
    r = recipe(tmp_path, family, head + body)
    with pytest.raises(MergecError) as e:
        check(r, overrides=overrides)
    return [(d.code, d.message, d.span.line if d.span else None) for d in e.value.diagnostics]


def test_bad_sweeps(tmp_path, family):
    body = ('param a = sweep()\nparam b = sweep(0.1, "x")\nparam c = sweep(0.1, 0.2, 0.1)\n'
            'param e = sweep(x=1)\nparam f = sweep(base)\n'
            'output m = linear(base, math, weight=[sweep(0.1, 0.2), 0.5])\n')
    assert errors(tmp_path, family, body) == [
        ("E270", "`sweep()` of param `a` has no values", 3),
        ("E271", 'the values of a sweep are of one kind: `0.1` is a Number, `"x"` a String',
         4),
        ("E275", "`sweep` gives the value `0.1` of param `c` twice", 5),
        ("E271", "`sweep` takes values only, not `name=value`", 6),
        ("E271", "a sweep value must be a literal: a number, a string or true/false", 7),
        ("E272", "`sweep(...)` is allowed only as the whole value of a `param`", 8),
    ]


def test_bad_sweeps_on_the_command_line(tmp_path, family):
    body = "param w = 0.5\noutput m = linear(base, math, weight=[w, 0.5])\n"
    assert errors(tmp_path, family, body, {"w": "0.1,x"}) == [
        ("E274", "`--set w=0.1,x`: `x` is not a Number", 3)]
    assert errors(tmp_path, family, body, {"w": "0.1,,0.2"}) == [
        ("E270", "`--set w=0.1,,0.2` has an empty value", None)]
    assert errors(tmp_path, family, body, {"w": "1,1.0"}) == [
        ("E275", "`--set w=1,1.0` gives the value `1` of param `w` twice", None)]
    many = ",".join(str(i) for i in range(MAX_POINTS + 1))
    assert errors(tmp_path, family, body, {"w": many}) == [
        ("E273", f"the sweep has {MAX_POINTS + 1} points ({MAX_POINTS + 1} (w)); at most "
         f"{MAX_POINTS} are built at once", 3)]


def test_problem_at_some_points_names_them(tmp_path, family):
    body = ("param d = sweep(0.5, 1.5, 2)\n"
            "output m = ties(math, base=base, density=d)\n")
    assert errors(tmp_path, family, body) == [
        ("E208", "`density` of `ties` must be in (0, 1], got 1.5 (at sweep point d=1.5)", 4),
        ("E208", "`density` of `ties` must be in (0, 1], got 2 (at sweep point d=2)", 4)]


def test_string_sweep_where_a_number_is_needed(tmp_path, family):
    body = 'param w = sweep("a", "b")\noutput m = linear(base, math, weight=[w, 0.5])\n'
    assert errors(tmp_path, family, body) == [
        ("E207", "`weight` of `linear` expects a number, found a String", 4)]


def test_sweep_warnings_and_folder_collisions(tmp_path, family):
    head = 'model base = "{base}"\nmodel math = "{math}"\n'
    r = recipe(tmp_path, family, head + "param w = sweep(0.5)\n"
               "output m = linear(base, math, weight=[w, 0.5])\n")
    c = mergec.compile(r)
    assert [(d.code, d.message) for d in c.checked.warnings] == [
        ("W360", "`sweep` of param `w` has one value: this builds one point, named `w=0.5`")]
    r = recipe(tmp_path, family, head + "param u = sweep(1, 2)\n"
               "output m = linear(base, math, weight=[0.5, 0.5])\n")
    c = mergec.compile(r)
    assert [(d.code, d.message) for d in c.checked.warnings] == [
        ("W361", "no output depends on the swept param `u`: the 2 points are the same "
         "model")]
    assert errors(tmp_path, family, 'param s = sweep("a b", "a_b")\n'
                  "output m = linear(base, math)\n") == [
        ("E360", "two outputs of the sweep would be written to `m-s=a_b` (points "
         's="a b" and s="a_b")', 4)]


MODEL_TRIM = """model base = "{base}"
model math = "{math}"
model code = "{code}"

param a = sweep(0.5, 2)

output inside = base + ties(a * (math - base), code - base, density=0.3, trim="model")
output outside = ties(math, code, base=base, weight=[a, 1], density=0.3, trim="model")
"""


def test_model_wide_thresholds_per_point(tmp_path, family):
    """TIES' model-wide threshold ranges over the task vectors of its point: a swept weight
    inside the inputs changes it, one outside does not (and then it is computed once)."""
    r = recipe(tmp_path, family, MODEL_TRIM)
    c = mergec.compile(r)
    stats = {so.name: {repr(p) for t in so.combined.tensors for n in topo(t.node)
                       if n.op == "merge" for _, v in n.attr("params") if isinstance(v, tuple)
                       for p in v if type(p).__name__ == "ModelTopK"}
             for so in c.sweep.outputs}
    # inside: the first input differs by point (two thresholds), the second does not
    assert len(stats["inside"]) == 3 and len(stats["outside"]) == 2
    mergec.build(r, tmp_path / "sweep", jobs=1, compiled=c)
    for a in ("0.5", "2"):
        mergec.build(r, tmp_path / a, overrides={"a": a}, jobs=1)
        for o in ("inside", "outside"):
            assert same_bytes(load_tensors(tmp_path / "sweep" / f"{o}-a={a}"),
                              load_tensors(tmp_path / a / o))


def test_settings_cannot_follow_a_sweep(tmp_path, family):
    body = ('param s = sweep("1MB", "2MB")\nset shard_size = s\n'
            "output m = linear(base, math)\n")
    assert errors(tmp_path, family, body) == [
        ("E272", "`set shard_size` takes a different value at different points of the sweep",
         4)]


def test_set_of_an_unknown_param_with_commas(tmp_path, family):
    body = "param w = 0.5\noutput m = linear(base, math, weight=[w, 0.5])\n"
    [(code, message, line)] = errors(tmp_path, family, body, {"v": "0.1,0.2"})
    assert (code, line) == ("E212", None)
    assert message == "`--set v=0.1,0.2`: the recipe has no param `v`"


def test_folder_name_too_long(tmp_path, family):
    long = "x" * 200
    [(code, message, line)] = errors(tmp_path, family, f'param s = sweep("{long}", "y")\n'
                                     "output m = linear(base, math)\n")
    assert (code, line) == ("E361", 4)
    assert message == (f"output folder `m-s={'x' * 56}...` of the sweep is 204 bytes long; "
                       "at most 200 are allowed")
