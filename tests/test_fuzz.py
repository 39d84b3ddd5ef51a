"""Fuzzing: generated and mutated recipes, and corrupted checkpoints, never give an internal
error (E599) or an exception that is not a diagnostic; what builds is a readable checkpoint
with exactly the planned tensors.

`make test` runs 1,000 recipes and 100 corrupted checkpoints; `make fuzz` runs 10,000 and
1,000 (FUZZ_RECIPES, FUZZ_CHECKPOINTS). Every case is a function of its seed
(tests/fuzzing.py)."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import pytest

from mergec.api import build, check, compile
from mergec.diagnostics import MergecError
from mergec.io.errors import CheckpointError
from tests.fuzzing import corrupt_checkpoint, recipe

RECIPES = int(os.environ.get("FUZZ_RECIPES", "1000"))
CHECKPOINTS = int(os.environ.get("FUZZ_CHECKPOINTS", "100"))
CHUNKS = 10
#: one recipe in BUILD_EVERY that checks is also built
BUILD_EVERY = 5


@pytest.fixture(scope="module")
def workdir(family, tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("fuzz")
    (w / "ckpt").symlink_to(Path(family["base"]).parent)
    return w


def _codes(e: BaseException) -> list[str]:
    if isinstance(e, MergecError):
        return [d.code for d in e.diagnostics]
    return [e.code]


def _outcome(fn, what: str):
    """fn() -> its value, or None after a diagnostic; fails on E599 or any other error."""
    try:
        return fn()
    except (MergecError, CheckpointError) as e:
        codes = _codes(e)
        assert "E599" not in codes, f"{what}: internal error\n{e}"
        assert all(c[0] in "EW" and c[1:].isdigit() for c in codes), f"{what}: {codes}"
        return None
    except Exception:  # noqa: BLE001 - any other exception is the failure this test finds
        pytest.fail(f"{what}: not a diagnostic\n{traceback.format_exc()}")


def _verify_output(compiled, out_dir: Path, what: str) -> None:
    """Every output folder holds exactly the planned tensors, readable, of the planned
    shapes and dtypes."""
    from mergec.io import open_input

    for lo in compiled.lowered:
        folder = out_dir / lo.output.name
        ck = open_input(str(folder), folder.parent)
        got = {n: (tuple(i.shape), i.dtype) for n, i in ck.tensors.items()}
        want = {t.name: (tuple(t.shape), t.dtype) for t in lo.tensors}
        assert got == want, f"{what}: output {lo.output.name} differs from its plan"
        for name in list(want)[:3]:
            assert ck.read(name).shape == want[name][0]


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_fuzzed_recipes(workdir, chunk, tmp_path):
    built = 0
    for seed in range(chunk, RECIPES, CHUNKS):
        text = recipe(seed)
        r = tmp_path / "r.merge"
        r.write_text(text, encoding="utf-8")
        what = f"recipe seed {seed}:\n{text}"
        (tmp_path / "ckpt").is_symlink() or (tmp_path / "ckpt").symlink_to(workdir / "ckpt")
        checked = _outcome(lambda: check(r), what)
        if checked is None or (seed // CHUNKS) % BUILD_EVERY:
            continue
        compiled = _outcome(lambda: compile(r), what)
        if compiled is None:
            continue
        out = tmp_path / f"out{seed}"
        if _outcome(lambda: build(r, out, compiled=compiled, jobs=1), what) is not None:
            _verify_output(compiled, out, what)
            built += 1
    # the generator must reach the builder, not only the diagnostics
    assert RECIPES < 500 or built > 0


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_corrupted_checkpoints(workdir, chunk, tmp_path):
    src = (workdir / "ckpt" / "base").resolve()
    (tmp_path / "ckpt").symlink_to(workdir / "ckpt")
    for seed in range(chunk, CHECKPOINTS, CHUNKS):
        bad = tmp_path / f"bad{seed}"
        how = corrupt_checkpoint(src, bad, seed)
        r = tmp_path / f"r{seed}.merge"
        r.write_text(f'model a = "./bad{seed}"\nmodel b = "./ckpt/math"\n'
                     "output o = linear(a, b, weight=[0.5, 0.5])\n"
                     "output t = ties(a - b, b - b, density=0.5) + b\n")
        what = f"checkpoint seed {seed} ({how})"
        compiled = _outcome(lambda: compile(r), what)
        if compiled is None:
            continue
        out = tmp_path / f"out{seed}"
        if _outcome(lambda: build(r, out, compiled=compiled, jobs=1), what) is not None:
            _verify_output(compiled, out, what)
