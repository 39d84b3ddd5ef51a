"""Lowering to per-tensor IR: folding of arithmetic, sharing, where/ramp resolution, stack."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mergec.check.checker import check_program
from mergec.check.program import Ramp
from mergec.ir.lower import lower, optimize, resolve_params
from mergec.ir.nodes import Graph, topo
from mergec.lang.parser import parse


@dataclass
class FakeInfo:
    shape: tuple
    dtype: str = "bfloat16"


@dataclass
class FakeCkpt:
    """Headers only: enough for the checker and the lowering."""

    n_layers: int = 4
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        self.config = {"num_hidden_layers": self.n_layers, "torch_dtype": "bfloat16"}
        t = {"model.embed_tokens.weight": FakeInfo((16, 8))}
        for i in range(self.n_layers):
            t[f"model.layers.{i}.mlp.up_proj.weight"] = FakeInfo((8, 8))
            t[f"model.layers.{i}.self_attn.q_proj.weight"] = FakeInfo((8, 8))
        t["model.norm.weight"] = FakeInfo((8,))
        t["lm_head.weight"] = FakeInfo((16, 8))
        self.tensors = t


def compile_text(text: str, layers: dict | None = None):
    layers = layers or {}

    def loader(raw, base_dir):
        return FakeCkpt(layers.get(raw, 4))

    checked = check_program(parse(text, "t.merge"), loader=loader, base_dir=Path("."))
    return checked, optimize(lower(checked))


HEAD = 'model base = "./base"\nmodel a = "./a"\nmodel b = "./b"\nmodel deep = "./deep"\n'


def tensor(lo, name):
    return next(t for t in lo.tensors if t.name == name)


def value(t):
    """What a tensor writes: the copied input (a copy root) or the computed node."""
    return t.node if t.node.op in ("copy", "convert") else t.node.args[0]


def test_linear_methods_fold_into_one_weighted_sum():
    _, (lo,) = compile_text(HEAD + "output m = task_arithmetic(a, b, base=base, lambda=0.5)\n")
    ws = tensor(lo, "model.norm.weight").node.args[0]
    assert ws.op == "wsum"
    srcs = dict(zip([n.attr("source") for n in ws.args], ws.attr("coeffs")))
    assert srcs == {"a": 0.5, "b": 0.5}  # base: 1 - 0.5 - 0.5 = 0, dropped


def test_arithmetic_folds_to_one_weighted_sum():
    _, (lo,) = compile_text(HEAD + "output m = base + 0.5 * (a - base) + 0.25 * (b - base)\n")
    root = tensor(lo, "model.norm.weight").node
    ws = root.args[0]
    assert ws.op == "wsum"
    srcs = [n.attr("source") for n in ws.args]
    assert dict(zip(srcs, ws.attr("coeffs"))) == {"base": 0.25, "a": 0.5, "b": 0.25}


def test_terms_that_cancel_disappear():
    _, (lo,) = compile_text(HEAD + "output m = a + (b - b)\n")
    root = value(tensor(lo, "model.norm.weight"))
    assert root.op == "copy" and root.attr("source") == "a"


def test_equal_subexpressions_are_one_node():
    _, (lo,) = compile_text(
        HEAD + "let tv = a - base\noutput m = base + tv + 0.5 * linear(tv, b - base)\n")
    root = tensor(lo, "model.layers.1.mlp.up_proj.weight").node
    nodes = topo(root)
    loads = [n for n in nodes if n.op == "load"]
    assert sorted(n.attr("source") for n in loads) == ["a", "b", "base"]  # each read once
    g = Graph()
    x = g.load("a", "t", (2,), "float32")
    assert g.wsum([(x, 1.0), (g.load("b", "t", (2,), "float32"), -1.0)]) is \
        g.wsum([(g.load("a", "t", (2,), "float32"), 1.0), (g.load("b", "t", (2,), "float32"), -1.0)])


def test_delta_method_with_base_works_on_task_vectors():
    _, (lo,) = compile_text(HEAD + "output m = ties(a, b, base=base, lambda=0.5)\n")
    root = tensor(lo, "model.norm.weight").node.args[0]
    assert root.op == "wsum"  # base + merged
    merge = [n for n in root.args if n.op == "merge"][0]
    assert merge.attr("method") == "ties"
    assert dict(merge.attr("params"))["lambda"] == 0.5
    for tau in merge.args:  # x_i - base
        assert tau.op == "wsum" and sorted(tau.attr("coeffs")) == [-1.0, 1.0]


def test_ramp_values_by_block():
    r = Ramp((0.0, 1.0))
    assert [r.at(i, 5) for i in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    r = Ramp((0.0, 0.5, 0.3, 0.7, 1.0))
    assert r.at(None, 4) == 0.0  # outside the blocks: v0
    assert r.at(0, 9) == 0.0 and r.at(2, 9) == pytest.approx(0.5) and r.at(8, 9) == 1.0
    assert r.at(1, 9) == pytest.approx(0.25)


def test_where_last_match_wins_and_ramp():
    text = HEAD + (
        'output m = slerp(a, b, t=0.5)\n'
        '    where "*.mlp.*" { t = ramp(0, 1) }\n'
        '    where layers[0:2] and "*.mlp.*" { t = 0.9 }\n'
        '    where "lm_head.*" { t = 0.1 }\n')
    checked, (lo,) = compile_text(text)
    call = checked.outputs[0].expr
    t = {n: resolve_params(call, n)["t"] for n in checked.outputs[0].expr.tensors}
    assert t["model.layers.0.mlp.up_proj.weight"] == 0.9
    assert t["model.layers.1.mlp.up_proj.weight"] == 0.9
    assert t["model.layers.2.mlp.up_proj.weight"] == pytest.approx(2 / 3)
    assert t["model.layers.3.mlp.up_proj.weight"] == 1.0
    assert t["model.layers.3.self_attn.q_proj.weight"] == 0.5
    assert t["lm_head.weight"] == 0.1
    assert t["model.norm.weight"] == 0.5


def test_stack_renumbers_and_takes_outer_tensors_from_first_and_last():
    checked, (lo,) = compile_text(
        HEAD + "output f = stack(a.layers[0:2], deep.layers[4:8])\n", {"./deep": 8})
    assert lo.n_layers == 6
    src = {t.name: (value(t).attr("source"), value(t).attr("tensor")) for t in lo.tensors}
    assert src["model.layers.1.mlp.up_proj.weight"] == ("a", "model.layers.1.mlp.up_proj.weight")
    assert src["model.layers.2.mlp.up_proj.weight"] == ("deep", "model.layers.4.mlp.up_proj.weight")
    assert src["model.layers.5.mlp.up_proj.weight"] == ("deep", "model.layers.7.mlp.up_proj.weight")
    assert src["model.embed_tokens.weight"][0] == "a"
    assert src["model.norm.weight"][0] == "deep" and src["lm_head.weight"][0] == "deep"
    assert "model.layers.6.mlp.up_proj.weight" not in src


def test_stack_embed_and_head_overrides_and_merged_runs():
    _, (lo,) = compile_text(
        HEAD + "output f = stack(slerp(a.layers[0:2], b.layers[2:4], t=ramp(0, 1)), "
        "a.layers[2:4], embed=b, head=base)\n")
    by = {t.name: value(t) for t in lo.tensors}
    assert by["model.embed_tokens.weight"].attr("source") == "b"
    assert by["lm_head.weight"].attr("source") == "base"
    m0 = by["model.layers.0.mlp.up_proj.weight"]
    m1 = by["model.layers.1.mlp.up_proj.weight"]
    assert m0.op == "merge" and dict(m0.attr("params"))["t"] == 0.0
    assert dict(m1.attr("params"))["t"] == 1.0  # ramp over the 2-block run
    assert [n.attr("tensor") for n in m1.args] == ["model.layers.1.mlp.up_proj.weight",
                                                   "model.layers.3.mlp.up_proj.weight"]


def test_output_dtype_from_option_block():
    _, (lo,) = compile_text(HEAD + 'output m = linear(a, b) { dtype = "float16" }\n')
    assert {t.dtype for t in lo.tensors} == {"float16"}
    _, (lo,) = compile_text(HEAD + "output m = linear(a, b)\n")
    assert {t.dtype for t in lo.tensors} == {"bfloat16"}


def test_random_calls_draw_their_own_masks():
    """Seeds name the output tensor and the call: two DARE calls in one output, or in two
    runs of a stack, never share masks."""
    _, (lo,) = compile_text(
        HEAD + "output m = base + dare_linear(a - base, density=0.5) "
        "+ dare_linear(b - base, density=0.5)\n")
    seeds = [n.attr("seed") for n in topo(tensor(lo, "model.norm.weight").node)
             if n.op == "merge"]
    assert len(seeds) == 2 and seeds[0] != seeds[1]
    _, (lo,) = compile_text(
        HEAD + "output f = stack(dare_linear(a.layers[0:2], density=0.5), "
        "dare_linear(b.layers[0:2], density=0.5))\n")
    s0 = [n.attr("seed") for n in topo(tensor(lo, "model.layers.0.mlp.up_proj.weight").node)
          if n.op == "merge"]
    s2 = [n.attr("seed") for n in topo(tensor(lo, "model.layers.2.mlp.up_proj.weight").node)
          if n.op == "merge"]
    assert s0 and s2 and s0 != s2
