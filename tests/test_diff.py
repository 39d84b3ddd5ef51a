"""`mergec diff`: checkpoints (figures against NumPy, structural changes) and recipes
(which outputs and tensors change, from headers only)."""

from __future__ import annotations

import json
import math
import subprocess
import textwrap

import numpy as np
import pytest

from mergec.arch import block_index
from mergec.demo import load_tensors, make_llama
from mergec.tools.diff import diff_checkpoints, diff_recipes, recipe_table

SIZES = dict(layers=2, hidden=32, intermediate=64, heads=4, kv_heads=2, vocab=64)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("diff")
    make_llama(root / "base", dtype="float32", seed=0, noise=0.0, **SIZES)
    make_llama(root / "ft", base=root / "base", dtype="float32", seed=3, noise=0.05, **SIZES)
    make_llama(root / "ft16", base=root / "base", dtype="bfloat16", seed=3, noise=0.05,
               **SIZES)
    make_llama(root / "deep", base=None, dtype="float32", seed=1, **dict(SIZES, layers=3,
                                                                          vocab=80))
    return root


def _ref(a: np.ndarray, b: np.ndarray):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return (np.linalg.norm(b - a) / np.linalg.norm(a),
            a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), np.abs(b - a).max())


@pytest.mark.parametrize("block", [7, 1 << 22])
def test_checkpoint_figures_match_numpy(ckpts, block):
    a, b = load_tensors(ckpts / "base"), load_tensors(ckpts / "ft")
    d = diff_checkpoints(str(ckpts / "base"), str(ckpts / "ft"), block_entries=block)
    assert [t.name for t in d.tensors] == list(a)
    for t in d.tensors:
        rel, cos, mx = _ref(a[t.name], b[t.name])
        assert t.status == "changed"
        assert t.rel_l2 == pytest.approx(rel, rel=1e-12)
        assert t.cosine == pytest.approx(cos, rel=1e-12)
        assert t.max_abs == mx
    # per block: |B - A| over |A| of all the block's tensors together
    for g in d.layers:
        names = [n for n in a if (f"block {block_index(n)}" if block_index(n) is not None
                                  else "outside blocks") == g.layer]
        num = math.fsum(float(np.sum((b[n].astype(np.float64) - a[n]) ** 2)) for n in names)
        den = math.fsum(float(np.sum(a[n].astype(np.float64) ** 2)) for n in names)
        assert g.tensors == g.changed == len(names)
        assert g.rel_l2 == pytest.approx(math.sqrt(num / den), rel=1e-12)
        assert g.min_cosine == pytest.approx(min(_ref(a[n], b[n])[1] for n in names),
                                             rel=1e-12)
    assert [g.layer for g in d.layers] == ["block 0", "block 1", "outside blocks"]


def test_identical_checkpoints_and_dtype_change(ckpts):
    d = diff_checkpoints(str(ckpts / "ft"), str(ckpts / "ft"))
    assert {t.status for t in d.tensors} == {"same"}
    assert all(t.rel_l2 == 0.0 and t.cosine == pytest.approx(1.0) for t in d.tensors)
    d = diff_checkpoints(str(ckpts / "ft"), str(ckpts / "ft16"))
    a, b = load_tensors(ckpts / "ft"), load_tensors(ckpts / "ft16")
    for t in d.tensors:
        assert (t.dtype_a, t.dtype_b, t.status) == ("float32", "bfloat16", "changed")
        assert t.rel_l2 == pytest.approx(_ref(a[t.name], b[t.name])[0], rel=1e-12)


def test_structural_changes(ckpts, run_cli):
    d = diff_checkpoints(str(ckpts / "base"), str(ckpts / "deep"))
    by = {t.name: t for t in d.tensors}
    assert by["model.layers.2.mlp.up_proj.weight"].status == "added"
    assert by["model.embed_tokens.weight"].status == "shape"
    assert by["model.embed_tokens.weight"].shape_b == [80, 32]
    assert by["model.layers.0.input_layernorm.weight"].status == "changed"
    r = run_cli("diff", ckpts / "base", ckpts / "deep")
    assert r.exit_code == 0
    assert "  shape    model.embed_tokens.weight [64, 32] -> [80, 32]" in r.stdout
    assert "  added    model.layers.2.self_attn.q_proj.weight float32[32, 32]" in r.stdout
    r = run_cli("diff", ckpts / "base", ckpts / "ft", "--json")
    got = json.loads(r.stdout)
    assert len(got["tensors"]) == 21 and got["layers"][0]["layer"] == "block 0"


RECIPE = """\
model base = "./ckpt/base"
model ft = "./ckpt/ft"
model deep = "./ckpt/ft16"

output a = task_arithmetic(ft, deep, base=base, weight=[1.0, 0.5])
output b = slerp(ft, deep, t=0.5)
    where "*.mlp.*" { t = 0.3 }
output c = linear(ft, deep)
"""


@pytest.fixture()
def recipes(ckpts, tmp_path):
    (tmp_path / "ckpt").symlink_to(ckpts)
    (tmp_path / "r1.merge").write_text(RECIPE)
    return tmp_path


def test_recipe_diff_names_the_tensors_that_change(recipes):
    r2 = RECIPE.replace("t = 0.3", "t = 0.4").replace(
        "output c = linear(ft, deep)", 'output c = linear(ft, deep) { dtype = "bfloat16" }')
    r2 += "output d = linear(ft, base)\n"
    (recipes / "r2.merge").write_text(r2)
    d = diff_recipes(str(recipes / "r1.merge"), str(recipes / "r2.merge"))
    got = {o.output: (o.status, len(o.changed), o.tensors) for o in d.outputs}
    assert got == {"a": ("same", 0, 21), "b": ("changed", 6, 21), "c": ("changed", 21, 21),
                   "d": ("added", 0, 21)}
    b = next(o for o in d.outputs if o.output == "b")
    assert sorted(b.changed) == sorted(f"model.layers.{i}.mlp.{p}_proj.weight" for i in (0, 1)
                                       for p in ("gate", "up", "down"))
    text = recipe_table(d)
    assert "a: unchanged (21 tensors)" in text and "d: new output (21 tensors)" in text
    assert "3 of 4 outputs differ" in text


def test_recipe_diff_sees_through_names_and_formatting(recipes):
    # the same computation spelled differently: renamed models, a let, other layout
    same = textwrap.dedent("""\
        model b0 = "./ckpt/base"
        model f = "./ckpt/ft"
        model g = "./ckpt/ft16"
        let tv = task_arithmetic(f, g, base=b0, weight=[1.0, 0.5])
        output a = tv
        output b = slerp(f, g, t=0.5) where "*.mlp.*" {t=0.3}
        output c = linear(f, g, weight=[2, 2])
        """)
    (recipes / "same.merge").write_text(same)
    d = diff_recipes(str(recipes / "r1.merge"), str(recipes / "same.merge"))
    assert [o.status for o in d.outputs] == ["same", "same", "same"]
    # an input replaced by another checkpoint: every tensor that reads it changes
    (recipes / "swap.merge").write_text(RECIPE.replace('"./ckpt/ft16"', '"./ckpt/base"'))
    d = diff_recipes(str(recipes / "r1.merge"), str(recipes / "swap.merge"))
    assert all(o.status == "changed" and len(o.changed) == 21 for o in d.outputs)


def test_recipe_diff_against_a_git_revision(recipes, run_cli):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=m"]
    subprocess.run(git + ["init", "-q"], cwd=recipes, check=True)
    subprocess.run(git + ["add", "r1.merge"], cwd=recipes, check=True)
    subprocess.run(git + ["commit", "-qm", "r"], cwd=recipes, check=True)
    (recipes / "r1.merge").write_text(RECIPE.replace("weight=[1.0, 0.5]", "weight=[1.0, 0.6]"))
    r = run_cli("diff", recipes / "r1.merge", "--git", "HEAD", "--json")
    assert r.exit_code == 0, r.stderr
    got = {o["output"]: (o["status"], len(o["changed"])) for o in json.loads(r.stdout)["outputs"]}
    assert got == {"a": ("changed", 21), "b": ("same", 0), "c": ("same", 0)}
    r = run_cli("diff", recipes / "r1.merge", recipes / "ckpt")
    assert r.exit_code == 2 and "not one of each" in r.stderr
