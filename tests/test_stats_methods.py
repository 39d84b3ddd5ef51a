"""Fisher merging and RegMean: statistics folders as checked inputs (docs/stats.md),
the methods against closed forms, on every backend, and the diagnostics of statistics that
do not fit their models (before any weight is read)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mergec.api import build, check
from mergec.backends import get_backend
from mergec.demo import load_tensors
from mergec.diagnostics import MergecError
from mergec.io.checkpoint import Checkpoint
from mergec.io.stats_files import model_fingerprint, write_stats
from mergec.methods import run_method

BACKENDS = ["reference", pytest.param("torch", marks=pytest.mark.torch),
            pytest.param("jax", marks=pytest.mark.jax)]
N, D, K = 300, 5, 3  # examples per data set, inputs, outputs


def save_model(root: Path, tensors: dict[str, np.ndarray]) -> str:
    from safetensors.numpy import save_file

    root.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
              str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"architectures": ["Toy"],
                                                  "model_type": "toy"}))
    return model_fingerprint((k, v.shape) for k, v in tensors.items())


def regression(tmp_path: Path):
    """Two least-squares fits on data sets of the same size, their Gram statistics, and
    the least-squares fit on the union."""
    rng = np.random.default_rng(7)
    data = []
    for name, shift in (("a", 0.0), ("b", 0.7)):
        x = rng.standard_normal((N, D)) + shift
        y = x @ rng.standard_normal((D, K)) + 0.3 * rng.standard_normal((N, K))
        w = np.linalg.lstsq(x, y, rcond=None)[0].T  # [out, in]
        fp = save_model(tmp_path / name, {"lin.weight": w, "lin.bias": rng.standard_normal(K)})
        write_stats(tmp_path / f"g{name}", "gram", N, fp, {"lin.weight": x.T @ x / N})
        data.append((x, y))
    xs, ys = np.vstack([d[0] for d in data]), np.vstack([d[1] for d in data])
    return np.linalg.lstsq(xs, ys, rcond=None)[0].T


HEAD = ('model a = "./a"\nmodel b = "./b"\nstats ga = "./ga"\nstats gb = "./gb"\n')


def test_regmean_of_two_least_squares_fits_is_the_fit_on_the_union(tmp_path, backend):
    union = regression(tmp_path)
    (tmp_path / "r.merge").write_text(
        HEAD + "output m = regmean(a, b, stats=[ga, gb], reduce=1, fallback=linear(a, b))\n")
    res = build(tmp_path / "r.merge", tmp_path / "out", backend=backend)
    got = load_tensors(Path(res[0].path))
    np.testing.assert_allclose(got["lin.weight"], union, rtol=0, atol=1e-6)
    a, b = load_tensors(tmp_path / "a"), load_tensors(tmp_path / "b")
    np.testing.assert_allclose(got["lin.bias"], (a["lin.bias"] + b["lin.bias"]) / 2,
                               rtol=1e-6)


def regmean_reference(ws, gs, reduce):
    gs = [reduce * g + (1 - reduce) * np.diag(np.diag(g)) for g in gs]
    s = sum(gs)
    return (sum(w @ g for w, g in zip(ws, gs)) @ np.linalg.inv(s)).astype(np.float32)


@pytest.mark.parametrize("be_name", BACKENDS)
@pytest.mark.parametrize("reduce", [1.0, 0.9, 0.0])
def test_regmean_matches_the_formula_on_every_backend(be_name, reduce):
    be = get_backend(be_name, "cpu")
    rng = np.random.default_rng(3)
    ws = [rng.standard_normal((4, 6)).astype(np.float32) for _ in range(3)]
    xs = [rng.standard_normal((20, 6)) for _ in range(3)]
    gs = [(x.T @ x / 20).astype(np.float32) for x in xs]
    out = run_method(be, "regmean", [be.asarray(a) for a in ws + gs],
                     {"reduce": reduce, "ridge": 1e-12})
    want = regmean_reference([w.astype(np.float64) for w in ws],
                             [g.astype(np.float64) for g in gs], reduce)
    np.testing.assert_allclose(be.to_numpy(out, "float32"), want, rtol=1e-5, atol=1e-5)


def test_regmean_singular_grams_take_the_average_where_no_data_reached():
    be = get_backend("reference", "cpu")
    rng = np.random.default_rng(4)
    ws = [rng.standard_normal((3, 4)).astype(np.float32) for _ in range(2)]
    x = rng.standard_normal((10, 4))
    x[:, 3] = 0.0  # the last input feature is always 0: the Gram matrices are singular
    gs = [(x.T @ x / 10).astype(np.float32)] * 2
    out = be.to_numpy(run_method(be, "regmean", [be.asarray(a) for a in ws + gs],
                                 {"reduce": 1.0, "ridge": 1e-8}), "float32")
    mean = (ws[0] + ws[1]) / 2
    np.testing.assert_allclose(out[:, 3], mean[:, 3], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, :3], mean[:, :3], rtol=1e-4, atol=1e-5)  # G1 = G2
    zero = [np.zeros((4, 4), np.float32)] * 2  # no data at all: the average
    out = be.to_numpy(run_method(be, "regmean", [be.asarray(a) for a in ws + zero],
                                 {"reduce": 1.0, "ridge": 1e-8}), "float32")
    np.testing.assert_allclose(out, mean, rtol=1e-6)


@pytest.mark.parametrize("be_name", BACKENDS)
def test_fisher_is_the_fisher_weighted_average(be_name):
    be = get_backend(be_name, "cpu")
    ws = [np.array([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]], np.float32),
          np.array([[3.0, 2.0, -1.0], [2.5, 0.0, 1.0]], np.float32)]
    fs = [np.array([[1.0, 0.25, 3.0], [0.0, 2.0, 1.0]], np.float32),
          np.array([[3.0, 0.75, 1.0], [4.0, 2.0, 0.0]], np.float32)]
    out = run_method(be, "fisher", [be.asarray(a) for a in ws + fs],
                     {"weight": (1.0, 1.0), "eps": 1e-30})
    want = np.array([[2.5, 1.0, 2.0], [2.5, 2.0, -1.0]], np.float32)  # by hand
    np.testing.assert_allclose(be.to_numpy(out, "float32"), want, rtol=1e-6)
    w = (fs[0] * ws[0] * 2 + fs[1] * ws[1]) / (2 * fs[0] + fs[1])
    out = run_method(be, "fisher", [be.asarray(a) for a in ws + fs],
                     {"weight": (2.0, 1.0), "eps": 1e-30})
    np.testing.assert_allclose(be.to_numpy(out, "float32"), w, rtol=1e-6)


def test_fisher_where_every_fisher_is_zero_is_the_average():
    be = get_backend("reference", "cpu")
    ws = [np.array([1.0, 5.0], np.float32), np.array([3.0, -1.0], np.float32)]
    fs = [np.zeros(2, np.float32)] * 2
    out = run_method(be, "fisher", [be.asarray(a) for a in ws + fs],
                     {"weight": (1.0, 1.0), "eps": 1e-8})
    np.testing.assert_allclose(out, [2.0, 2.0], rtol=1e-6)


def fisher_folders(tmp_path: Path, stats_b: dict | None = None, model_b: str | None = None):
    rng = np.random.default_rng(5)
    models, fps = {}, {}
    for name in ("a", "b"):
        t = {"lin.weight": rng.standard_normal((2, 4)), "lin.bias": rng.standard_normal(2),
             "norm.weight": rng.standard_normal(4)}
        fps[name] = save_model(tmp_path / name, t)
        models[name] = t
    f = {n: {k: rng.random(v.shape) for k, v in models[n].items() if k != "norm.weight"}
         for n in models}
    write_stats(tmp_path / "fa", "fisher", 10, fps["a"], f["a"])
    write_stats(tmp_path / "fb", "fisher", 10, model_b or fps["b"],
                stats_b if stats_b is not None else f["b"])
    return models, f


FISHER_HEAD = ('model a = "./a"\nmodel b = "./b"\nstats fa = "./fa"\nstats fb = "./fb"\n')


def test_fisher_build_uses_the_statistics_and_the_fallback(tmp_path):
    models, f = fisher_folders(tmp_path)
    (tmp_path / "r.merge").write_text(
        FISHER_HEAD + "output m = fisher(a, b, stats=[fa, fb], eps=1e-30,\n"
        "    fallback=linear(a, b, weight=[0.25, 0.75]))\n")
    res = build(tmp_path / "r.merge", tmp_path / "out")
    got = load_tensors(Path(res[0].path))
    a, b = load_tensors(tmp_path / "a"), load_tensors(tmp_path / "b")
    fa, fb = load_tensors(tmp_path / "fa"), load_tensors(tmp_path / "fb")
    for k in ("lin.weight", "lin.bias"):
        want = (fa[k] * a[k] + fb[k] * b[k]) / (fa[k] + fb[k])
        np.testing.assert_allclose(got[k], want, rtol=1e-6, err_msg=k)
    np.testing.assert_allclose(got["norm.weight"],
                               0.25 * a["norm.weight"] + 0.75 * b["norm.weight"], rtol=1e-6)


def diagnostics(tmp_path: Path, recipe: str, monkeypatch) -> str:
    """The rendered diagnostics of building `recipe`, which must fail before any tensor
    byte of a model or statistics folder is read."""
    def no_read(*a, **k):
        raise AssertionError("a tensor was read")

    for name in ("read", "read_rows", "read_raw"):
        monkeypatch.setattr(Checkpoint, name, no_read)
    (tmp_path / "r.merge").write_text(recipe)
    with pytest.raises(MergecError) as info:
        build(tmp_path / "r.merge", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    return "\n".join(f"{d.span.line}:{d.span.col} {d.code} {d.message}"
                     for d in info.value.diagnostics)


def test_statistics_of_the_wrong_shape_are_reported_before_any_weight_is_read(
        tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    fisher_folders(tmp_path, stats_b={"lin.weight": rng.random((4, 2)),
                                      "lin.bias": rng.random(2)})
    got = diagnostics(tmp_path, FISHER_HEAD +
                      "output m = fisher(a, b, stats=[fa, fb], fallback=linear(a, b))\n",
                      monkeypatch)
    assert got == ("5:36 E342 statistics `fb` do not fit `b`: `lin.weight` has shape [4, 2], "
                   "expected [2, 4] for the tensor of shape [2, 4]")


def test_gram_statistics_of_the_wrong_shape(tmp_path, monkeypatch):
    regression(tmp_path)
    fp = model_fingerprint([("lin.weight", (K, D)), ("lin.bias", (K,))])
    write_stats(tmp_path / "gb", "gram", N, fp, {"lin.weight": np.eye(K)}, force=True)
    got = diagnostics(tmp_path, HEAD + "output m = regmean(a, b, stats=[ga, gb], "
                      "fallback=linear(a, b))\n", monkeypatch)
    assert got == ("5:37 E342 statistics `gb` do not fit `b`: `lin.weight` has shape [3, 3], "
                   "expected [5, 5] for the tensor of shape [3, 5]")


def test_statistics_of_another_model_names_and_kind(tmp_path, monkeypatch):
    fisher_folders(tmp_path, model_b="0" * 64)
    write_stats(tmp_path / "other", "fisher", 3, "1" * 64, {"x.weight": np.ones(2)})
    write_stats(tmp_path / "g", "gram", 3, "1" * 64, {"lin.weight": np.eye(4)})
    got = diagnostics(tmp_path, FISHER_HEAD +
                      'stats other = "./other"\nstats g = "./g"\n'
                      "output m = fisher(a, b, stats=[fa, fb], fallback=linear(a, b))\n"
                      "output n = fisher(a, b, stats=[other, g], fallback=linear(a, b))\n"
                      "output o = fisher(a, b, stats=[fa, fa])\n"
                      "output p = fisher(a, b, stats=[fa])\n",
                      monkeypatch)
    assert got.splitlines() == [
        "7:36 E340 statistics `fb` were computed on another model than `b`",
        "8:32 E341 statistics `other` have 1 tensor that `a` does not have: `x.weight`",
        "8:39 E251 `g` holds Gram statistics; `fisher` needs Fisher statistics",
        "9:12 E252 `fisher` has no statistics for 1 tensor and no `fallback=`: "
        "`norm.weight`",
        "9:36 W340 `fa` is given for two inputs",
        "10:31 E250 `stats=` has 1 statistics folder for 2 inputs",
    ]


def test_broken_statistics_folders(tmp_path, monkeypatch):
    fisher_folders(tmp_path)
    (tmp_path / "fb" / "stats.json").write_text('{"kind": "hessian", "examples": 3}')
    got = diagnostics(tmp_path, FISHER_HEAD + 'stats no = "./none"\n'
                      "output m = fisher(a, b, stats=[fa, fb], fallback=linear(a, b))\n",
                      monkeypatch)
    assert got.splitlines() == [
        f'4:12 E450 statistics folder {tmp_path}/fb: stats.json: "kind" is "hessian", '
        'expected "fisher" or "gram"',
        f"5:12 E450 statistics folder {tmp_path}/none does not exist or is not a directory",
    ]


def test_methods_without_statistics_take_no_stats(tmp_path, monkeypatch):
    fisher_folders(tmp_path)
    got = diagnostics(tmp_path, FISHER_HEAD + "output m = linear(a, b, stats=[fa, fb])\n"
                      "output n = fisher(a, b, stats=[fa, fb], fallback=fa)\n"
                      "output o = a + fisher(a - b, b - a, stats=[fa, fb])\n", monkeypatch)
    assert got.splitlines() == [
        "5:25 E250 `linear` does not take `stats=`",
        "6:50 E253 `fallback=` expects a Model, found a Stats",
        "7:16 E250 `fisher` merges whole models, not a Delta",
    ]


def test_check_and_fmt_of_a_recipe_with_statistics(tmp_path, run_cli):
    regression(tmp_path)
    text = (HEAD + "output m = regmean(a, b, stats=[ga, gb], reduce=0.95, "
            "fallback=linear(a, b))\n")
    (tmp_path / "r.merge").write_text(text)
    code, out, err = run_cli("fmt", "--check", str(tmp_path / "r.merge"))
    assert code == 0, out + err
    checked = check(tmp_path / "r.merge")
    assert sorted(checked.stats) == ["ga", "gb"]


def test_stats_is_a_statement_but_not_a_reserved_word():
    from mergec.lang import ast
    from mergec.lang.fmt import format_text
    from mergec.lang.parser import parse

    text = ('model a = "./a"\nstats fa = "./fa"\nlet stats = a\n'
            "output m = fisher(a, stats, stats=[fa, fa], fallback=stats)\n")
    prog = parse(text, "r.merge")
    assert [type(s).__name__ for s in prog.statements] == [
        "ModelStmt", "StatsStmt", "LetStmt", "OutputStmt"]
    assert isinstance(prog.statements[1], ast.StatsStmt)
    assert format_text(text, "r.merge") == text
    # a broken statement elsewhere: `stats=` at the start of a line is not a statement
    with pytest.raises(MergecError) as info:
        parse('model a = "./a"\noutput m = fisher(a, a,\n  stats=[a, a])\nlet x = = 1\n', "r.merge")
    assert [(d.code, d.span.line) for d in info.value.diagnostics] == [("E101", 4)]


def test_statistics_for_some_inputs_only_take_the_fallback(tmp_path, monkeypatch):
    models, f = fisher_folders(tmp_path, stats_b={"lin.weight": np.ones((2, 4))})
    (tmp_path / "r.merge").write_text(
        FISHER_HEAD + "output m = fisher(a, b, stats=[fa, fb], fallback=linear(a, b))\n")
    checked = check(tmp_path / "r.merge")
    assert [(d.code, d.message) for d in checked.warnings] == [
        ("W342", "1 tensor has statistics for some inputs only and takes the fallback: "
                 "`lin.bias`")]
    got = load_tensors(Path(build(tmp_path / "r.merge", tmp_path / "out")[0].path))
    a, b = load_tensors(tmp_path / "a"), load_tensors(tmp_path / "b")
    np.testing.assert_allclose(got["lin.bias"], (a["lin.bias"] + b["lin.bias"]) / 2,
                               rtol=1e-6)
