"""The light commands import only what they need.

`mergec --help`, `fmt` and `check` (on local inputs) must not import numpy, ml_dtypes (most
of a second on its own), the IR passes' runtime, torch or jax: their start-up is measured in
docs/benchmarks.md and this keeps it from creeping back. A build that forks workers loads
numpy's dtypes before the fork, so the workers share them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("numpy", "ml_dtypes", "torch", "jax", "safetensors", "mergec.runtime.schedule",
         "mergec.ir.lower", "mergec.backends.reference")

RECIPE = """model base = "{base}"
model math = "{math}"

output avg = linear(base, math)
"""


def imported_after(args: list[str], cwd: Path) -> set[str]:
    code = ("import json, sys\n"
            "from mergec.cli import app\n"
            "try:\n"
            "    app(sys.argv[1:])\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.strip().splitlines()[-1]))


@pytest.fixture
def recipe(family, tmp_path) -> Path:
    """A formatted recipe whose inputs are local folders (absolute paths)."""
    path = tmp_path / "r.merge"
    path.write_text(RECIPE.format(base=family["base"], math=family["math"]))
    return path


@pytest.mark.parametrize("args", [["--help"], ["fmt", "--check", "r.merge"],
                                  ["check", "r.merge"]], ids=["help", "fmt", "check"])
def test_light_commands_import_nothing_heavy(recipe, args):
    assert imported_after(args, recipe.parent) == set()


def test_plan_needs_the_ir_but_no_tensor_library(recipe):
    got = imported_after(["plan", "r.merge"], recipe.parent)
    assert {"mergec.ir.lower", "mergec.runtime.schedule"} <= got
    assert not got & {"numpy", "ml_dtypes", "torch", "jax"}


def test_lazy_io_names_resolve():
    import mergec.io as io

    for name in io.__all__:
        assert getattr(io, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        io.nope  # noqa: B018
