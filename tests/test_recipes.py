"""Every example recipe in recipes/ is canonical, checks clean and builds.

The recipes name their checkpoints `./ckpt/<name>`, relative to the recipe file. Here
each recipe is copied into a temporary folder next to a `ckpt` link to the session's
synthetic family (tests/conftest.py), so the test does not depend on `make demo`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from mergec.diagnostics import Span
from mergec.lang import ast
from mergec.lang.fmt import format_program, format_text
from mergec.lang.parser import parse
from stats_helpers import make_family_stats

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.merge"))
IDS = [p.stem for p in RECIPES]

#: the recipes the documentation links to; each must exist
EXPECTED = {"demo", "linear", "task_arithmetic", "slerp", "arithmetic", "where_ramp", "stack",
            "params", "options", "lowrank", "moe",
            "data_aware", "sentence_embeddings"}


def shape(node):
    """A syntax tree without source positions, for comparing two parses."""
    if isinstance(node, Span):
        return None
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return (type(node).__name__,) + tuple(
            (f.name, shape(getattr(node, f.name))) for f in dataclasses.fields(node)
            if f.name != "span")
    if isinstance(node, (list, tuple)):
        return tuple(shape(x) for x in node)
    return node


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, family) -> Path:
    """A folder holding `ckpt` (the session family) and a copy of every recipe."""
    d = tmp_path_factory.mktemp("recipes")
    family_dir = Path(family["base"]).parent
    try:
        (d / "ckpt").symlink_to(family_dir, target_is_directory=True)
    except OSError:  # no symbolic links here: copy the (small) family
        shutil.copytree(family_dir, d / "ckpt")
    for r in RECIPES:
        shutil.copy(r, d / r.name)
    make_family_stats(d / "stats", family)  # for data_aware.merge
    return d


def test_the_documented_recipes_exist():
    assert EXPECTED <= set(IDS), f"missing recipes: {sorted(EXPECTED - set(IDS))}"


def test_makefile_builds_the_demo_recipe():
    assert "recipes/demo.merge" in (ROOT / "Makefile").read_text(encoding="utf-8")


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_recipe_is_canonical_and_round_trips(recipe):
    text = recipe.read_text(encoding="utf-8")
    program = parse(text, recipe.name)
    formatted = format_program(program)
    assert formatted == text, f"{recipe.name} is not canonical: run `mergec fmt {recipe}`"
    again = parse(formatted, recipe.name)
    assert shape(again.statements) == shape(program.statements)
    assert [c.text for c in again.comments] == [c.text for c in program.comments]
    assert format_text(formatted, recipe.name) == formatted


def test_fmt_check_accepts_all_recipes(run_cli):
    code, out, err = run_cli("fmt", "--check", *RECIPES)
    assert code == 0, err
    assert f"{len(RECIPES)} files already formatted" in out


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_recipe_checks(recipe, workdir, run_cli):
    code, out, err = run_cli("check", workdir / recipe.name)
    assert code == 0, err
    assert ": ok (" in out


def test_params_recipe_takes_overrides(workdir, run_cli):
    code, _, err = run_cli("check", workdir / "params.merge", "--set", "strength=0.8",
                           "--set", "use_code=0.0")
    assert code == 0, err
    code, _, err = run_cli("check", workdir / "params.merge", "--set", "strenght=0.8")
    assert code == 1 and "E212" in err and "strength" in err


def _read_output(folder: Path) -> dict[str, tuple]:
    """name -> shape of every tensor of an output folder, reading every tensor."""
    import ml_dtypes  # noqa: F401 - lets numpy hold bfloat16
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        assert sorted(set(weight_map.values())) == [f.name for f in files]
    else:
        weight_map = None
        assert [f.name for f in files] == ["model.safetensors"]
    tensors: dict[str, tuple] = {}
    for f in files:
        with safe_open(str(f), framework="np") as st:
            for name in st.keys():
                assert name not in tensors, f"{name} is in two shards"
                tensors[name] = tuple(st.get_tensor(name).shape)
                if weight_map is not None:
                    assert weight_map[name] == f.name
    return tensors


@pytest.mark.parametrize("recipe", RECIPES, ids=IDS)
def test_recipe_builds(recipe, workdir, tmp_path):
    import mergec.api as api

    path = workdir / recipe.name
    compiled = api.compile(path)
    planned = {p.output: p for p in compiled.plan.outputs}
    results = api.build(path, tmp_path / "out", compiled=compiled)
    if compiled.sweep is not None:  # a folder per point (tests/test_sweeps.py checks more)
        sw = compiled.sweep
        assert [r.output for r in results] == [p.folder(so.name) for p in sw.points
                                               for so in sw.outputs]
        for pt, lo in ((pt, lo) for so in sw.outputs for pt, lo in zip(sw.points, so.per_point)):
            tensors = _read_output(tmp_path / "out" / pt.folder(lo.output.name))
            assert tensors == {t.name: t.shape for t in lo.tensors}
        return
    assert [r.output for r in results] == [p.output for p in compiled.plan.outputs]
    for lo in compiled.lowered:
        folder = tmp_path / "out" / lo.output.name
        if lo.output.form is not None and not hasattr(lo.output.form, "routers"):  # an adapter
            assert sorted(p.name for p in folder.iterdir()) == [
                "adapter_config.json", "adapter_model.safetensors"]
            result = next(r for r in results if r.output == lo.output.name)
            assert 0 < result.tensors <= planned[lo.output.name].tensors
            continue
        tensors = _read_output(folder)
        assert len(tensors) == planned[lo.output.name].tensors
        routers = {n: shape for n, _, shape in getattr(lo.output.form, "routers", ())}
        assert tensors == {**{t.name: t.shape for t in lo.tensors}, **routers}
        assert (folder / "config.json").is_file()
        assert (folder / "README.md").is_file()
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        if lo.n_layers is not None:
            assert config["num_hidden_layers"] == lo.n_layers
