"""`mergec build --output NAME` (repeatable) builds only the named outputs."""

from __future__ import annotations

RECIPE = """model base = "{base}"
model math = "{math}"
model code = "{code}"
output soup = linear(math, code)
output tuned = task_arithmetic(math, base=base)
output third = linear(code, base)
"""


def _recipe(tmp_path, family):
    p = tmp_path / "r.merge"
    p.write_text(RECIPE.format(**{k: family[k] for k in ("base", "math", "code")}))
    return p


def test_build_only_the_named_outputs(tmp_path, family, run_cli):
    r = _recipe(tmp_path, family)
    code, out, err = run_cli("build", r, "-o", tmp_path / "out", "--output", "third",
                             "--output", "soup", "-q")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["soup", "third"]
    assert [line.split(":")[0] for line in out.splitlines()] == ["wrote soup", "wrote third"]


def test_unknown_output_name_suggests(tmp_path, family, run_cli):
    r = _recipe(tmp_path, family)
    code, out, err = run_cli("build", r, "-o", tmp_path / "out", "--output", "tunde")
    assert code == 2
    assert "E312" in err and "the recipe has no output `tunde`" in err
    assert "did you mean `tuned`?" in err
    assert not (tmp_path / "out").exists()
    code, out, err = run_cli("build", r, "-o", tmp_path / "out", "--output", "zzz")
    assert code == 2 and "its outputs are: `soup`, `third`, `tuned`" in err


def test_plan_of_one_output(tmp_path, family, run_cli):
    code, out, err = run_cli("plan", _recipe(tmp_path, family), "--output", "tuned")
    assert code == 0, err
    assert [l for l in out.splitlines() if l.startswith("output ")] == ["output tuned:"]


def test_api_build_outputs(tmp_path, family):
    from mergec import api

    res = api.build(_recipe(tmp_path, family), tmp_path / "out", outputs=["tuned"])
    assert [r.output for r in res] == ["tuned"]
