"""Normalized weights that sum to 0 are found by `check`, layer by layer, and only where
they apply: before, such a recipe passed `check` and failed in the build (E599)."""

from __future__ import annotations

import pytest

from mergec.api import build, check
from mergec.diagnostics import MergecError

HEAD = 'model base = "{base}"\nmodel math = "{math}"\n'


def _check(family, body: str):
    return check("r.merge", text=HEAD.format(base=family["base"], math=family["math"]) + body)


@pytest.mark.parametrize("body", [
    # never cancels: 1 + ramp(1, 0) stays >= 1
    "output o = linear(base, math, weight=[1, ramp(1, 0)])\n",
    # cancels only at layer 3, which the block does not select
    'output o = linear(base, math)\n    where layers[0:2] { weight = [ramp(1, -1), 1] }\n',
    # cancels, but nothing is normalized
    "output o = linear(base, math, weight=[1, -1], normalize=false)\n",
])
def test_weights_that_never_cancel_where_they_apply_pass(family, body):
    _check(family, body)


@pytest.mark.parametrize("body,where", [
    ("output o = linear(base, math, weight=[ramp(1, -1), 1])\n", "at layer 3"),
    ("output o = linear(base, math, weight=[ramp(1, 0), ramp(-1, 1)])\n", "outside the layers"),
    ('output o = linear(base, math)\n    where layers[2:4] { weight = [ramp(1, -1), 1] }\n',
     "at layer 3"),
    ("output o = linear(base, math, weight=[1, -1], normalize=false)\n"
     '    where "*.mlp.*" { normalize = true }\n', "sum to 0, so"),
])
def test_weights_that_cancel_are_e208(family, body, where):
    with pytest.raises(MergecError) as e:
        _check(family, body)
    (d,) = e.value.diagnostics
    assert d.code == "E208" and where in d.message, d.message


def test_a_passing_recipe_builds(family, tmp_path):
    text = HEAD.format(base=family["base"], math=family["math"]) + \
        'output o = linear(base, math)\n    where layers[0:2] { weight = [ramp(1, -1), 1] }\n'
    (result,) = build("r.merge", tmp_path, text=text)
    assert result.tensors > 0
