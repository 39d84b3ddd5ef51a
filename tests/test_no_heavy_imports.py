"""The plan, the checks and the I/O need neither torch nor jax.

Each test runs the CLI in a subprocess where ``sys.modules[name] = None`` makes
``import torch`` / ``import jax`` fail (and ``find_spec`` report them missing), the way a
machine without them behaves:

* ``mergec --help``, ``check`` and ``plan`` work with neither library (and, where both are
  installed, do not import them);
* ``build --backend torch`` without torch is a clear E503 diagnostic (exit 2), not a traceback;
* with only jax (torch blocked) a build gives the same bytes as the torch build for a
  deterministic method (linear to bfloat16) and the same values within 1e-6 for a seeded
  random one (dare_ties in float32), and ``--backend auto`` picks jax.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy before safetensors loads
import numpy as np
import pytest
from safetensors.numpy import load_file

HAS_TORCH = importlib.util.find_spec("torch") is not None

RECIPE = """set seed = 99
model base = "./ckpt/base"
model math = "./ckpt/math"
model code = "./ckpt/code"
model chat = "./ckpt/chat"

output lin = linear(math, code, chat, weight=[0.5, 0.3, 0.2]) { dtype = "bfloat16" }
output dare = dare_ties(math, code, chat, base=base, density=0.5) { dtype = "float32" }
"""


def mergec(args, cwd: Path, block=("torch", "jax"), imported=()) -> subprocess.CompletedProcess:
    """Run the mergec CLI in a fresh interpreter in which the modules `block` cannot be
    imported; on a successful exit, check that the modules `imported` were."""
    code = ("import sys\n"
            + "".join(f"sys.modules[{m!r}] = None\n" for m in block)
            + "from mergec.cli import app\n"
              "sys.argv = ['mergec', *sys.argv[1:]]\n"
              "try:\n"
              "    app()\n"
              "except SystemExit as e:\n"
              "    if e.code:\n"
              "        raise\n"
              f"for m in {tuple(imported)!r}:\n"
              "    assert sys.modules.get(m) is not None, m + ' was not used'\n")
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def recipe(family, tmp_path) -> Path:
    (tmp_path / "ckpt").symlink_to(family["base"].parent, target_is_directory=True)
    path = tmp_path / "r.merge"
    path.write_text(RECIPE)
    return path


def test_help_check_and_plan_without_torch_or_jax(recipe, tmp_path):
    for args in (["--help"], ["check", recipe], ["plan", recipe], ["plan", recipe, "--json"],
                 ["build", recipe, "-o", tmp_path / "out", "--dry-run"]):
        r = mergec(args, tmp_path)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_check_and_plan_do_not_import_torch_or_jax(recipe, tmp_path):
    """Where both are installed, check and plan still leave them unimported."""
    code = ("import sys\n"
            "from mergec.cli import app\n"
            "for args in (['check', sys.argv[1]], ['plan', sys.argv[1], '--json']):\n"
            "    try:\n"
            "        app(args)\n"
            "    except SystemExit as e:\n"
            "        assert not e.code, (args, e.code)\n"
            "heavy = sorted(m for m in ('torch', 'jax', 'jaxlib') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    r = subprocess.run([sys.executable, "-c", code, str(recipe)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout, r.stderr)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_build_with_a_missing_backend_is_e503(recipe, tmp_path, backend):
    r = mergec(["build", recipe, "-o", tmp_path / "out", "--backend", backend, "--quiet"],
               tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "E503" in r.stderr and backend in r.stderr
    assert f"mergec[{backend}]" in r.stderr  # says how to install it
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "lin").exists()


def _build(recipe: Path, out: Path, backend: str | None, block, imported=()
           ) -> dict[str, dict[str, np.ndarray]]:
    flags = ["--backend", backend] if backend else []
    r = mergec(["build", recipe, "-o", out, *flags, "--device", "cpu", "--quiet"],
               recipe.parent, block=block, imported=imported)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return {name: load_file(str(out / name / "model.safetensors")) for name in ("lin", "dare")}


@pytest.mark.torch
@pytest.mark.jax
def test_jax_without_torch_matches_torch(recipe, tmp_path):
    jx = _build(recipe, tmp_path / "out-jax", "jax", block=("torch",), imported=("jax",))
    th = _build(recipe, tmp_path / "out-torch", "torch", block=("jax",), imported=("torch",))
    for name in ("lin", "dare"):
        assert sorted(jx[name]) == sorted(th[name])
    for k, a in th["lin"].items():  # deterministic: the same bytes
        b = jx["lin"][k]
        assert a.dtype == b.dtype == np.dtype(ml_dtypes.bfloat16), k
        assert a.shape == b.shape and a.tobytes() == b.tobytes(), k
    for k, a in th["dare"].items():  # seeded random: same masks, values within 1e-6
        b = jx["dare"][k]
        assert a.dtype == b.dtype == np.float32, k
        scale = max(1e-30, float(np.abs(a).max(initial=0.0)))
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6 * scale, err_msg=k)
        np.testing.assert_array_equal(a == 0, b == 0, err_msg=k)


def test_auto_on_a_cpu_needs_neither_torch_nor_jax(recipe, tmp_path):
    """`--backend auto` (the default) builds on a CPU with the NumPy backend: it works with
    torch and jax both blocked, and writes what the torch backend writes."""
    auto = _build(recipe, tmp_path / "out", None, block=("torch", "jax"))
    if HAS_TORCH:
        th = _build(recipe, tmp_path / "out-torch", "torch", block=("jax",),
                    imported=("torch",))
        for name in auto:
            for k in auto[name]:
                assert np.array_equal(auto[name][k].view(np.uint8), th[name][k].view(np.uint8))
