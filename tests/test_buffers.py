"""Integer and boolean buffers (`embeddings.position_ids`) are carried over, for every
method, when the inputs hold the same one; a differing one is named (E310 when the checker
sees it in the headers, E311 when the build finds different bytes)."""

from __future__ import annotations

import numpy as np
import pytest

from io_helpers import make_safetensors
from mergec import api
from mergec.diagnostics import MergecError

CONFIG_NOTE = "bert-like: an int64 position_ids buffer and a bool mask beside float weights"


def _model(root, seed, *, pos=None, mask=None, pos_dtype=np.int64):
    rng = np.random.default_rng(seed)
    t = {
        "embeddings.word_embeddings.weight": rng.standard_normal((16, 4)).astype(np.float32),
        "embeddings.position_ids": (np.arange(8)[None, :] if pos is None else pos).astype(pos_dtype),
        "encoder.layer.0.attention.mask": (np.tril(np.ones((4, 4))) > 0) if mask is None else mask,
        "encoder.layer.0.output.dense.weight": rng.standard_normal((4, 4)).astype(np.float32),
        "encoder.layer.1.output.dense.weight": rng.standard_normal((4, 4)).astype(np.float32),
    }
    make_safetensors(root, t)
    return t


def load_tensors(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


RECIPES = {
    "linear": "output m = linear(a, b)",
    "ties": "output m = ties(a, b, base=base, density=0.5)",
    "arith": "output m = base + 0.5 * (a - base) + 0.5 * (b - base)",
    "slerp": "output m = slerp(a, b, t=0.3)",
    "stack": "output m = stack(a.layers[0:2], b.layers[1:2])",
}


@pytest.mark.parametrize("method", sorted(RECIPES))
def test_identical_buffers_pass_through(tmp_path, method):
    ts = {n: _model(tmp_path / n, s) for n, s in (("base", 0), ("a", 1), ("b", 2))}
    recipe = tmp_path / "r.merge"
    recipe.write_text('model base = "./base"\nmodel a = "./a"\nmodel b = "./b"\n'
                      + RECIPES[method] + "\n")
    api.build(recipe, tmp_path / "out")
    out = load_tensors(tmp_path / "out" / "m")
    pos = out["embeddings.position_ids"]
    assert pos.dtype == np.int64 and pos.tobytes() == ts["a"]["embeddings.position_ids"].tobytes()
    assert out["encoder.layer.0.attention.mask"].dtype == np.bool_
    assert np.array_equal(out["encoder.layer.0.attention.mask"], np.tril(np.ones((4, 4))) > 0)
    if method == "linear":
        w = "encoder.layer.1.output.dense.weight"
        np.testing.assert_allclose(out[w], 0.5 * ts["a"][w] + 0.5 * ts["b"][w], rtol=1e-6)
    if method == "stack":
        assert sorted(n for n in out if n.startswith("encoder.layer.")) == [
            "encoder.layer.0.attention.mask", "encoder.layer.0.output.dense.weight",
            "encoder.layer.1.output.dense.weight", "encoder.layer.2.output.dense.weight"]


def test_buffer_of_another_dtype_is_named(tmp_path):
    _model(tmp_path / "a", 1)
    _model(tmp_path / "b", 2, pos_dtype=np.int32)
    recipe = tmp_path / "r.merge"
    recipe.write_text('model a = "./a"\nmodel b = "./b"\noutput m = linear(a, b)\n')
    with pytest.raises(MergecError) as e:
        api.check(recipe)
    [d] = e.value.diagnostics
    assert d.code == "E310"
    assert d.message == ("the non-float tensor `embeddings.position_ids` differs between the "
                         "inputs: int32 here, int64 in the other input")
    assert (d.span.line, d.span.col) == (3, 22)


def test_buffer_of_another_shape_is_named(tmp_path):
    _model(tmp_path / "a", 1)
    _model(tmp_path / "b", 2, pos=np.arange(6)[None, :])
    recipe = tmp_path / "r.merge"
    recipe.write_text('model a = "./a"\nmodel b = "./b"\noutput m = ties(a, b, base=a)\n')
    with pytest.raises(MergecError) as e:
        api.check(recipe)
    assert [(d.code, d.message) for d in e.value.diagnostics] == [(
        "E310", "the non-float tensor `embeddings.position_ids` differs between the inputs: "
                "int64[1, 6] here, int64[1, 8] in the other input")]


def test_buffer_with_other_values_stops_the_build(tmp_path):
    _model(tmp_path / "a", 1)
    _model(tmp_path / "b", 2, pos=np.arange(8)[None, ::-1])
    recipe = tmp_path / "r.merge"
    recipe.write_text('model a = "./a"\nmodel b = "./b"\noutput m = linear(a, b)\n')
    api.check(recipe)  # headers agree
    with pytest.raises(MergecError) as e:
        api.build(recipe, tmp_path / "out")
    assert [(d.code, d.message) for d in e.value.diagnostics] == [(
        "E311", "output `m`: the non-float tensor `embeddings.position_ids` holds different "
                "values in `a` and `b`")]
    assert not (tmp_path / "out" / "m").exists()


def test_float_against_int_is_named(tmp_path):
    _model(tmp_path / "a", 1)
    _model(tmp_path / "b", 2, pos_dtype=np.float32)
    recipe = tmp_path / "r.merge"
    recipe.write_text('model a = "./a"\nmodel b = "./b"\noutput m = linear(a, b)\n')
    with pytest.raises(MergecError) as e:
        api.check(recipe)
    assert [(d.code, d.message) for d in e.value.diagnostics] == [(
        "E306", "`embeddings.position_ids` holds float32 values here and int64 in the other "
                "input; only floating-point tensors can be merged")]
