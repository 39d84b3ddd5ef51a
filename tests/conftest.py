"""Shared fixtures: the synthetic checkpoint family, an in-process CLI runner and the
``backend`` parameter; tests marked ``torch`` or ``jax`` are skipped where that library is
not installed (the NumPy backend, the default on a CPU, needs neither)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Let the tests run from a plain checkout, before `pip install -e .`.
if importlib.util.find_spec("mergec") is None:
    sys.path.insert(0, str(ROOT))

from mergec.demo import make_family  # noqa: E402

#: optional libraries that tests can be marked with (``@pytest.mark.torch``), and the
#: extra that installs each
OPTIONAL = {"torch": "torch", "jax": "jax", "ray": "ray", "peft": "test-torch",
            "sentence_transformers": "test-torch", "transformers": "test"}


def installed(name: str) -> bool:
    """``name`` can be imported here (found without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def pytest_collection_modifyitems(config, items):
    """Skip the tests marked with an optional library that is not installed."""
    # a skipif placed first, so that its reason is the one shown (before "no CUDA device")
    skips = {m: pytest.mark.skipif(True, reason=f"needs {m} (pip install 'mergec[{extra}]')")
             for m, extra in OPTIONAL.items() if not installed(m)}
    if not skips:
        return
    for item in items:
        for m, skip in skips.items():
            if item.get_closest_marker(m) is not None:
                item.add_marker(skip, append=False)
                break


@pytest.fixture(params=["numpy", pytest.param("torch", marks=pytest.mark.torch)])
def backend(request) -> str:
    """A CPU backend for tests of behaviour that does not depend on it: ``numpy`` (the
    default on a CPU) and ``torch`` (marked ``torch``)."""
    return request.param

#: sizes of the test family: tiny, so a whole family is well under 5 MB
FAMILY_KW = dict(layers=4, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=128,
                 seed=0, noise=0.02)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def family(tmp_path_factory) -> dict[str, Path]:
    """bf16 family: base, math, code, chat, other_vocab, deep (name -> directory)."""
    return make_family(tmp_path_factory.mktemp("family-bf16"), dtype="bfloat16",
                       **FAMILY_KW)


@pytest.fixture(scope="session")
def family_f32(tmp_path_factory) -> dict[str, Path]:
    """The same family in float32."""
    return make_family(tmp_path_factory.mktemp("family-f32"), dtype="float32",
                       **FAMILY_KW)


class CliResult(NamedTuple):
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli():
    """Run the ``mergec`` CLI in-process: ``code, out, err = run_cli("check", path)``.

    Skips the test when ``mergec.cli`` does not exist yet. Unexpected
    exceptions propagate (pass ``catch_exceptions=True`` to get them as exit
    code 1 instead); ``input=`` feeds stdin.
    """
    if importlib.util.find_spec("mergec.cli") is None:
        pytest.skip("mergec.cli is not available")
    from typer.testing import CliRunner

    from mergec.cli import app

    try:  # click < 8.2 mixes stderr into stdout unless told not to
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()

    def run(*args, input: str | None = None, catch_exceptions: bool = False,
            env: dict[str, str] | None = None) -> CliResult:
        result = runner.invoke(app, [str(a) for a in args], input=input, env=env,
                               catch_exceptions=catch_exceptions)
        try:
            err = result.stderr
        except ValueError:
            err = ""
        return CliResult(result.exit_code, result.stdout, err)

    return run
