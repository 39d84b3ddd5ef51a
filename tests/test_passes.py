"""The optimization passes: each against its fixture file of input/expected IR, and whole
builds that are bit-identical with and without the passes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from mergec.api import build, compile
from mergec.demo import load_tensors
from mergec.ir import passes
from mergec.ir.nodes import Graph, render_many
from mergec.ir.text import parse_ir

FIXTURES = Path(__file__).parent / "fixtures" / "passes"


def cases():
    for rule in passes.RULES:
        text = (FIXTURES / f"{rule.__name__}.txt").read_text()
        for block in text.split("\n===\n"):
            title = block.strip().splitlines()[0].lstrip("# ")
            src, expected = block.split("\n---\n")
            yield pytest.param(rule, src, expected, id=f"{rule.__name__}: {title}")


@pytest.mark.parametrize("rule, src, expected", list(cases()))
def test_pass_fixture(rule, src, expected):
    roots = parse_ir(src)
    out, _ = rule(roots, Graph(canonical=False))
    assert render_many(out).strip() == expected.strip()


def test_every_pass_has_fixtures():
    assert {p.stem for p in FIXTURES.glob("*.txt")} == {r.__name__ for r in passes.RULES}


RECIPE = """model base = "./ckpt/base"
model math = "./ckpt/math"
model code = "./ckpt/code"
model chat = "./ckpt/chat"
set seed = 3
let tv = math - base
output ta = task_arithmetic(math, code, chat, base=base, weight=[0.3, 0.3, 0.4], lambda=0.9)
output ar = base + 0.7 * tv + 0.2 * (code - base) - 0.1 * (chat - base)
output ti = base + 0.8 * ties(tv, code - base, density=0.3)
output dt = dare_ties(math, code, base=base, density=0.6) { dtype = "float16" }
output sl = slerp(math, linear(code, chat, weight=[0.25, 0.75]), t=0.4)
output st = stack(math.layers[0:2], code.layers[2:4]) { dtype = "float32" }
output mx = linear(math, code, base, weight=[0.2, 0.3, 0.5]) { dtype = "float16" }
output cs = base + 0.5 * tv + 0.5 * ties(tv, code - base, density=0.5)
output cv = stack(math.layers[0:4]) { dtype = "float16" }
output rc = stack(code.layers[0:4])
output dz = linear(math, code, weight=[1, 0], normalize=false)
let mix = linear(code, chat, weight=[0.3, 0.7])
output nz = 0.3 * (0.7 * math + 0.3 * code) + 0.7 * (0.1 * chat + 0.9 * base)
output sh = 0.5 * slerp(math, mix, t=0.3) + 0.5 * mix
output ec = base + 0.5 * ties(math - base, code - base, density=0.5)
    + 0.5 * ties(math - base, chat - base, density=0.5)
"""


def digest(folder: Path):
    return {k: hashlib.sha256(np.ascontiguousarray(v).view(np.uint8)).hexdigest()
            for k, v in load_tensors(folder).items()}


def built_both_ways(tmp_path, family):
    (tmp_path / "ckpt").symlink_to(Path(family["base"]).parent)
    r = tmp_path / "r.merge"
    r.write_text(RECIPE)
    with_passes = compile(r)
    without = compile(r, passes=False)
    # the passes changed the IR...
    changed = [rep for lo in with_passes.lowered for rep in lo.reports if rep.changes]
    assert {rep.name for rep in changed} == {"fold_linear", "eliminate_common",
                                              "eliminate_dead", "raw_copy", "fuse_cast"}
    build(r, tmp_path / "a", compiled=with_passes)
    build(r, tmp_path / "b", compiled=without)
    return ("ta", "ar", "ti", "dt", "sl", "st", "mx", "cs", "cv", "rc", "dz", "nz", "sh")


@pytest.mark.parametrize("fam", ["family", "family_f32"])
def test_builds_with_and_without_passes_are_bit_identical(tmp_path, fam, request):
    """The runtime evaluates the IR the passes leave (linear chains folded into one
    weighted sum by the passes only): a program compiled without the passes is optimized
    by the build, so both give the same bytes, every output."""
    outs = built_both_ways(tmp_path, request.getfixturevalue(fam))
    for out in outs:
        assert digest(tmp_path / "a" / out) == digest(tmp_path / "b" / out), out
