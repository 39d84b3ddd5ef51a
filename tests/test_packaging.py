"""The wheel and sdist carry what an installed mergec needs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import mergec

ROOT = Path(__file__).resolve().parent.parent
GRAMMAR = ROOT / "grammar" / "mergec.lark"
WHEEL_GRAMMAR = "mergec/grammar/mergec.lark"

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None


def _pip_wheel(src: Path, dest: Path) -> Path:
    pytest.importorskip("hatchling")  # builds offline, without build isolation
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-cache-dir", "--quiet", str(src), "-w", str(dest)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = dest.glob("mergec-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if not GRAMMAR.is_file():
        pytest.fail(f"{GRAMMAR} is missing")
    return _pip_wheel(ROOT, tmp_path_factory.mktemp("wheel"))


def _read(whl: Path, name: str) -> str:
    with zipfile.ZipFile(whl) as z:
        return z.read(name).decode()


def test_wheel_name_and_version(wheel):
    assert wheel.name.startswith(f"mergec-{mergec.__version__}-py3-none-any")
    meta = _read(wheel, f"mergec-{mergec.__version__}.dist-info/METADATA")
    assert "Name: mergec" in meta
    assert f"Version: {mergec.__version__}" in meta
    assert "Requires-Python: >=3.10" in meta
    for extra in ("torch", "jax", "test", "all"):
        assert f"Provides-Extra: {extra}" in meta
    for dep in ("lark", "pydantic", "typer", "rich", "safetensors", "numpy",
                "huggingface-hub", "ml-dtypes"):
        assert any(line.startswith("Requires-Dist: ")
                   and line[15:].replace("_", "-").lower().startswith(dep)
                   for line in meta.splitlines()), dep


def test_wheel_ships_the_grammar(wheel):
    with zipfile.ZipFile(wheel) as z:
        assert WHEEL_GRAMMAR in z.namelist()
        assert z.read(WHEEL_GRAMMAR) == GRAMMAR.read_bytes()


def test_wheel_holds_the_package_and_nothing_else(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "mergec").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert sources <= names, sources - names
    tops = {n.split("/")[0] for n in names}
    assert tops == {"mergec", f"mergec-{mergec.__version__}.dist-info"}, tops
    assert not any("__pycache__" in n for n in names)


def test_console_script(wheel):
    eps = _read(wheel, f"mergec-{mergec.__version__}.dist-info/entry_points.txt")
    lines = [line.strip() for line in eps.splitlines()]
    i = lines.index("[console_scripts]")
    assert "mergec = mergec.cli:app" in lines[i + 1:]


def test_grammar_resource_from_an_installed_wheel(wheel, tmp_path):
    """Installed from the wheel, the grammar is a package resource."""
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
         "--target", str(site), str(wheel)],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    code = (
        "import importlib.resources as r, importlib.util, mergec\n"
        "print(mergec.__file__)\n"
        "res = r.files('mergec').joinpath('grammar/mergec.lark')\n"
        "assert res.is_file(), res\n"
        "text = res.read_text(encoding='utf-8')\n"
        "if importlib.util.find_spec('mergec.lang.parser'):\n"
        "    from mergec.lang import parser\n"
        "    if hasattr(parser, 'grammar_text'):\n"
        "        assert parser.grammar_text() == text\n"
        "print(len(text))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    where, size = proc.stdout.split()
    assert Path(where).is_relative_to(site)
    assert int(size) == len(GRAMMAR.read_text(encoding="utf-8"))


def test_grammar_found_from_the_checkout():
    """Run from the checkout (editable install or sys.path), the package has no
    grammar/ folder of its own; the loader falls back to the repository's."""
    here = Path(mergec.__file__).resolve().parent
    if here != ROOT / "mergec":
        pytest.skip("mergec is not imported from this checkout")
    assert not (here / "grammar" / "mergec.lark").exists()
    assert GRAMMAR.is_file()


def test_sdist_builds_a_wheel_with_the_grammar(tmp_path):
    pytest.importorskip("hatchling")
    proc = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sdist,) = tmp_path.glob("mergec-*.tar.gz")
    with tarfile.open(sdist) as t:
        names = t.getnames()
        try:
            t.extractall(tmp_path / "src", filter="data")
        except TypeError:  # a Python without extraction filters
            t.extractall(tmp_path / "src")
    prefix = f"mergec-{mergec.__version__}/"
    assert prefix + "grammar/mergec.lark" in names
    assert prefix + "pyproject.toml" in names
    assert not any(n.startswith(prefix + d) for n in names
                   for d in (".venv/", ".venv-core/", "out/", "recipes/ckpt/"))
    whl = _pip_wheel(tmp_path / "src" / prefix.rstrip("/"), tmp_path / "dist")
    with zipfile.ZipFile(whl) as z:
        assert z.read(WHEEL_GRAMMAR) == GRAMMAR.read_bytes()


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_pyproject_settings():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = cfg["project"]
    assert project["version"] == mergec.__version__
    assert project["scripts"] == {"mergec": "mergec.cli:app"}
    assert project["optional-dependencies"]["torch"] == ["torch>=2.2"]
    pytest_cfg = cfg["tool"]["pytest"]["ini_options"]
    assert pytest_cfg["testpaths"] == ["tests"]
    declared = {m.split(":")[0] for m in pytest_cfg["markers"]}
    assert {"slow", "hub", "parity"} <= declared


def test_ci_script_is_executable():
    ci = ROOT / ".ci" / "run"
    assert ci.is_file() and os.access(ci, os.X_OK)
