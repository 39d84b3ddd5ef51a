"""The IR text format: `parse_ir(render_many(roots))` gives back nodes equal to `roots`.

* every op and every kind of value, built by hand: lowrank (plain and transposed), merge
  parameters holding tuples, strings, booleans, None, negative and exponent floats, ints,
  `model_topk` placeholders, seeds; tensor names with brackets, spaces, quotes and
  non-ASCII letters; 0-d shapes; copy and convert with their stored dtype; roots repeated
  or used by other roots;
* every recipe of recipes/, tests/golden/ok/ and tests/golden/corpus/ and the inline
  recipes of the test modules, lowered against the test family, every output's IR before
  and after the passes.

Equality is structural (`Node.__eq__`); the parsed IR must also print the same text, which
catches an int read back as a float and the like.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mergec.api import compile
from mergec.diagnostics import MergecError
from mergec.ir.nodes import Graph, Node, render_many, topo
from mergec.ir.placeholders import ModelTopK
from mergec.ir.text import IRSyntaxError, parse_ir

ROOT = Path(__file__).resolve().parent.parent


def roundtrip(roots: list[Node]) -> list[Node]:
    text = render_many(roots)
    back = parse_ir(text)
    assert back == roots, text
    assert render_many(back) == text
    for a, b in zip(roots, back):  # the same values of the same types, node by node
        for x, y in zip(topo(a), topo(b)):
            assert (x.op, x.attrs, x.shape, x.dtype) == (y.op, y.attrs, y.shape, y.dtype)
            assert _types(x.attrs) == _types(y.attrs), (x, y)
    return back


def _types(v):
    if isinstance(v, tuple):
        return tuple(_types(x) for x in v)
    return type(v)


# --------------------------------------------------------------------------- by hand


@pytest.fixture
def g():
    return Graph(canonical=False)


def test_every_op(g):
    a = g.load("a", "model.layers.0.mlp.up_proj.weight", (4, 3), "bfloat16")
    b = g.load("base", "model.layers.0.mlp.up_proj.weight", (4, 3), "bfloat16")
    la = g.load("lora", "base_model.model.x.lora_A.weight", (2, 3), "float32")
    lb = g.load("lora", "base_model.model.x.lora_B.weight", (4, 2), "float32")
    ea = g.load("lora", "emb_A", (2, 4), "float32")
    eb = g.load("lora", "emb_B", (3, 2), "float32")
    lr = g.lowrank(lb, la, 2.0, False)
    lt = g.lowrank(eb, ea, 0.35355339059327373, True)
    assert lt.shape == (4, 3)
    tau = g.raw_wsum([(a, 1.0), (b, -1.0)])
    m = g.merge("ties", [tau, lr], {"density": (0.5, 0.25), "elect": "mass", "lambda": 1.0,
                                   "normalize": True, "trim": "tensor"}, None)
    d = g.merge("dare_linear", [tau, lt], {"density": 0.3, "rescale": "l1"}, 12345678901234567)
    z = g.zeros((4, 3))
    s = g.raw_wsum([(b, 1.0), (m, 0.1), (d, -2.5e-07), (z, 1e300), (lt, -0.0)])
    roots = [g.cast(s, "float16"),
             g.node("copy", (), (("source", "a"), ("tensor", "n"), ("from", "bfloat16")),
                    (8,), "bfloat16"),
             g.node("convert", (), (("source", "a"), ("tensor", "n"), ("from", "bfloat16")),
                    (8,), "float32"),
             g.cast(g.zeros(()), "float32")]
    roundtrip(roots)
    text = render_many(roots)
    assert re.search(r"= lowrank\(%\d+, %\d+; scale=2\)\n", text)
    assert "scale=0.35355339059327373, transposed)" in text
    assert "convert a[n] bfloat16[8] -> float32" in text
    assert "copy a[n] bfloat16[8]\n" in text
    assert "zeros[]" in text


@pytest.mark.parametrize("value", [
    0.5, -0.5, 1e-08, -3.25e+300, 5e-324, float("inf"), float("-inf"), 0.0, -0.0, 10.0,
    0, 7, -3, 2**70, True, False, None, "", "mass", "it's", 'say "hi"', "a, b; c) = (d",
    "tab\tnew\nline", "ünï ∑", (), (1.0,), (0.5, 0.25, 1e-05), (1, 2.0, "x", None, True),
    ((1, 2), ("a", (3.5,))), ModelTopK("ti#0", 1, 0.3), (ModelTopK("o#2", 0, 1e-3),
                                                         ModelTopK("o#2", 1, 0.5)),
])
def test_merge_parameter_values(g, value):
    x = g.load("a", "w", (3,), "float32")
    roundtrip([g.merge("m", [x, x], {"p": value}, 7)])
    roundtrip([g.merge("m", [x], {"p": value, "q": value, "lambda": -1.5}, None)])


def test_seeds_and_empty_params(g):
    x = g.load("a", "w", (3,), "float32")
    for seed in (None, 0, 1, 2**64 - 1, -5):
        for params in ({}, {"seed": 3}, {"t": 0.5}):
            roundtrip([g.merge("m", [x], params, seed)])
    assert render_many([g.merge("m", [x], {}, None)]).endswith("= m(%0)")
    assert parse_ir("%0 = load a[w] float32[3]\n%1 = m(%0; )")[0].attr("params") == ()


@pytest.mark.parametrize("name", [
    "model.layers.0.mlp.up_proj.weight", "w", "0.weight", "encoder/layer_0/kernel:0",
    "a-b+c", "", " ", "x[0]", "x]", "[", "two words", "it's", 'q"uote', "back\\slash",
    "new\nline", "ünïcode.wéight", "%1", "# not a comment", "a = b", "semi;colon,comma",
    "\x1c\x85\u2028",
])
def test_tensor_and_source_names(g, name):
    x = g.load(name, name, (2,), "float32")
    roots = [g.cast(x, "bfloat16"),
             g.node("copy", (), (("source", name), ("tensor", name), ("from", "float32")),
                    (2,), "float32"),
             g.node("convert", (), (("source", "s"), ("tensor", name), ("from", "float32")),
                    (), "float16")]
    roundtrip(roots)


def test_plain_names_are_not_quoted(g):
    x = g.load("math", "model.layers.1.mlp.up_proj.weight", (128, 64), "bfloat16")
    assert render_many([x]) == \
        "%0 = load math[model.layers.1.mlp.up_proj.weight] bfloat16[128, 64]"
    y = g.load("math", "x]", (), "bfloat16")
    assert render_many([y]) == "%0 = load math['x]'] bfloat16[]"


def test_shapes(g):
    for shape in [(), (1,), (0,), (5, 0), (2, 3, 4, 5)]:
        x = g.load("a", "w", shape, "float32")
        roundtrip([g.cast(g.raw_wsum([(x, 0.5), (g.zeros(shape), 2.0)]), "float32")])


def test_methods_named_like_ops(g):
    x = g.load("a", "w", (3,), "float32")
    for name in ("wsum", "cast", "lowrank", "zeros", "load", "copy", "convert", "merge",
                 "roots"):
        n = g.merge(name, [x], {"t": 1.0}, None)
        roundtrip([n])
        assert f"= merge {name}(%0; t=1.0)" in render_many([n])


def test_roots_that_are_repeated_or_used(g):
    x = g.load("a", "w", (3,), "float32")
    y = g.raw_wsum([(x, 2.0)])
    c = g.cast(y, "float32")
    for roots in ([c, c], [y, c], [c, y], [x], [x, x, x], [c, g.cast(y, "float32")]):
        roundtrip(roots)
    assert "roots" not in render_many([c])
    assert render_many([c, c]).endswith("\nroots %2, %2")
    assert parse_ir("") == []


def test_literal_duplicates_stay_distinct_and_shared_nodes_stay_shared(g):
    a1 = g.load("a", "w", (3,), "float32")
    a2 = g.load("a", "w", (3,), "float32")  # equal, not the same object
    s = g.raw_wsum([(a1, 1.0), (a2, 1.0), (a1, -1.0)])
    (back,) = roundtrip([s])
    assert back.args[0] is back.args[2] and back.args[0] is not back.args[1]


def test_canonical_graph_interns_what_it_reads():
    text = "%0 = load a[w] float32[3]\n%1 = load a[w] float32[3]\n%2 = wsum(1*%0, 1*%1)"
    (s,) = parse_ir(text, Graph())
    assert s.args[0] is s.args[1]


def test_lines_are_read_leniently_and_comments_skipped():
    text = ("# title\n\n  %0 = load  a[w]  float32[ 2 ,3 ]\n"
            "%1 = wsum( 0.5 * %0 , -1e-3*%0 )\n%2 = m( %1 ;  t = 0.5 ,s='x' ; seed = 9 )\n")
    (n,) = parse_ir(text)
    assert n.attr("params") == (("s", "x"), ("t", 0.5)) and n.attr("seed") == 9
    assert n.args[0].attr("coeffs") == (0.5, -0.001) and n.shape == (2, 3)


@pytest.mark.parametrize("text, message", [
    ("%0 = load a[w float32[3]", "expected `]`"),
    ("%0 = load a[w] float32[3] extra", "unexpected text"),
    ("%0 = wsum(1*%3)", "`%3` is not defined"),
    ("%0 = wsum()", "at least one term"),
    ("%0 = zeros[2]\n%0 = zeros[2]", "defined twice"),
    ("%0 = zeros[2]\n%1 = m(%0; t=0.5, t=1.0)", "given twice"),
    ("%0 = zeros[2]\n%1 = m(%0; t=nope)", "expected a value"),
    ("%0 = zeros[2]\n%1 = m(%0; t=model_topk(call='x'))", "bad model_topk"),
    ("%0 = zeros[2]\nroots %0\n%1 = zeros[2]", "nothing may follow"),
    ("%0 = zeros[2]\nroots %1", "not defined"),
    ("%0 = cast(%0 -> float32", "not defined"),
    ("x = zeros[2]", "expected a node"),
])
def test_errors_say_where(text, message):
    with pytest.raises(IRSyntaxError, match=re.escape(message)) as e:
        parse_ir(text)
    assert "IR line" in str(e.value) and "^" in str(e.value)


# --------------------------------------------------------------------------- recipes

RECIPE_FILES = sorted([*(ROOT / "recipes").glob("*.merge"),
                       *(ROOT / "tests" / "golden" / "ok").glob("*.merge"),
                       *(ROOT / "tests" / "golden" / "corpus").glob("*.merge")])

#: models of the test family, and the names the inline recipes of the tests give them
FAMILY = ("base", "math", "code", "chat", "deep")
ALIASES = {"a": "math", "b": "code", "code2": "code", "m2": "math", "b2": "base"}
_DECL = re.compile(r'^(model|adapter)(\s+\w+\s*=\s*)"([^"]*)"', re.M)
_NAMED = re.compile(r"^(?:model|adapter|param|let|output)\s+(\w+)", re.M)


def inline_recipes() -> list[tuple[str, str]]:
    """(where, text) of every string constant of the test modules that writes an output.
    The paths it declares point at the test family (a local folder or hub id `x` at
    `./ckpt/x`, or at the model the tests use that name for; every adapter at ./lora), and
    the family's models (and the tests' other names for them) and an adapter `lora` are
    declared where the text does not name them itself. Texts that do not check (the tests
    of diagnostics) are skipped by the caller."""
    out = []
    for f in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr)
                 for v in n.values}
        for n in ast.walk(tree):
            if not (isinstance(n, ast.Constant) and isinstance(n.value, str)) or id(n) in parts:
                continue
            text = n.value
            if not re.search(r"^output\s+\w+\s*=", text, re.M):
                continue
            named = set(_NAMED.findall(text))
            head = [f'model {m} = "./ckpt/{ALIASES.get(m, m)}"\n'
                    for m in (*FAMILY, *ALIASES) if m not in named]
            if "lora" not in named:
                head.append('adapter lora = "./lora"\n')
            out.append((f"{f.stem}:{n.lineno}", "".join(head) + _DECL.sub(_local, text)))
    return out


def _local(m: re.Match) -> str:
    kind, mid, path = m.groups()
    if kind == "adapter":
        return f'{kind}{mid}"./lora"'
    if not path.startswith("./ckpt/"):  # a local folder or a hub id of the tests
        name = path.rsplit("/", 1)[-1]
        path = f"./ckpt/{ALIASES.get(name, name)}"
    return f'{kind}{mid}"{path}"'


@pytest.fixture(scope="module")
def folder(tmp_path_factory, family):
    from stats_helpers import make_family_stats
    from test_lora import MODS, make_adapter

    d = tmp_path_factory.mktemp("ir-text")
    (d / "ckpt").symlink_to(Path(family["base"]).parent, target_is_directory=True)
    make_adapter(d / "lora", MODS, r=4, alpha=8, seed=3, embed={"model.embed_tokens": (128, 64)})
    make_family_stats(d / "stats", family)
    return d


def roundtrip_compiled(folder: Path, text: str, name: str) -> int:
    """Lower `text` with and without the passes; every output's IR round-trips (before
    the passes: the literal graph, tensor by tensor and the whole output at once; after
    them too). Returns the number of nodes checked."""
    path = folder / f"{name}.merge"
    path.write_text(text, encoding="utf-8")
    count = 0
    for passes in (False, True):
        for lo in compile(path, passes=passes).lowered:
            irs = [[t.node for t in lo.tensors]]
            if passes:
                irs.append(lo.before)
            for roots in irs:
                roundtrip(roots)
                for r in roots[:4]:  # a tensor alone (as `mergec plan --ir` prints it)
                    roundtrip([r])
                count += sum(len(topo(r)) for r in roots)
    return count


@pytest.mark.parametrize("recipe", RECIPE_FILES,
                         ids=[f"{p.parent.name}/{p.stem}" for p in RECIPE_FILES])
def test_recipe_ir_roundtrips(folder, recipe):
    assert roundtrip_compiled(folder, recipe.read_text(encoding="utf-8"),
                              f"{recipe.parent.name}-{recipe.stem}") > 0


def test_inline_recipe_ir_roundtrips(folder):
    done, skipped = [], []
    ops: set[str] = set()
    for i, (where, text) in enumerate(inline_recipes()):
        try:
            roundtrip_compiled(folder, text, f"inline{i}")
        except MergecError:
            skipped.append(where)
            continue
        done.append(where)
        for lo in compile(folder / f"inline{i}.merge").lowered:
            ops.update(n.op for t in lo.tensors for n in topo(t.node))
    assert len(done) >= 70, (len(done), skipped)  # 74 of 79 when written
    assert {"load", "wsum", "merge", "cast", "copy", "convert", "lowrank"} <= ops, ops


def test_the_recipes_cover_every_op_and_odd_value(folder):
    """The recipe files alone already produce every op and the values the format has to
    take care of (so the round trip above is not vacuous)."""
    ops, values = set(), set()
    for recipe in RECIPE_FILES:
        path = folder / f"cover-{recipe.parent.name}-{recipe.stem}.merge"
        path.write_text(recipe.read_text(encoding="utf-8"), encoding="utf-8")
        for passes in (False, True):
            for lo in compile(path, passes=passes).lowered:
                for n in {id(n): n for t in lo.tensors for n in topo(t.node)}.values():
                    ops.add(n.op)
                    if n.op == "lowrank":
                        values.add(("transpose", n.attr("transpose")))
                    if n.op == "merge":
                        values.add(("seed", n.attr("seed") is not None))
                        for _, v in n.attr("params"):
                            for x in (v if isinstance(v, tuple) else (v,)):
                                values.add(type(x).__name__)
    assert ops == {"load", "wsum", "merge", "lowrank", "zeros", "cast", "copy", "convert"}
    assert {("transpose", True), ("transpose", False), ("seed", True), ("seed", False),
            "ModelTopK", "str", "bool", "float"} <= values, values
