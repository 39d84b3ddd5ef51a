"""sentence-transformers folders: the modules (pooling, normalize, dense), their configs,
generation/processor configs are carried from one input (`files =`, default the base or
first model), listed by `mergec plan`; W310 when the inputs disagree on them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mergec import api
from mergec.diagnostics import MergecError

pytestmark = [pytest.mark.torch, pytest.mark.sentence_transformers, pytest.mark.transformers]

ST_FILES = ["1_Pooling/config.json", "2_Normalize/config.json", "config_sentence_transformers.json",
            "modules.json", "sentence_bert_config.json"]


@pytest.fixture(scope="module")
def st(tmp_path_factory):
    from st_helpers import make_st_model

    root = tmp_path_factory.mktemp("st")
    return {"a": make_st_model(root / "a", 0), "b": make_st_model(root / "b", 1),
            "cls": make_st_model(root / "cls", 2, pooling="cls", normalize=False),
            "dense": make_st_model(root / "dense", 3, dense=True),
            "dense2": make_st_model(root / "dense2", 4, dense=True)}


def _recipe(tmp_path, body, **models):
    text = "".join(f'model {k} = "{v}"\n' for k, v in models.items()) + body + "\n"
    p = tmp_path / "r.merge"
    p.write_text(text)
    return p


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_identity_gives_the_same_normalized_embeddings(st, tmp_path):
    from st_helpers import encode

    recipe = _recipe(tmp_path, "output m = a", a=st["a"])
    compiled = api.compile(recipe)
    assert compiled.plan.outputs[0].files == [
        "config.json", "tokenizer.json", "tokenizer_config.json", "modules.json",
        "config_sentence_transformers.json", "sentence_bert_config.json",
        "1_Pooling/config.json", "2_Normalize/config.json", "README.md"]
    api.build(recipe, tmp_path / "out", jobs=1)
    out = tmp_path / "out" / "m"
    assert set(ST_FILES) <= set(_files(out))
    m_in, e_in = encode(st["a"])
    m_out, e_out = encode(out)
    assert [type(x).__name__ for x in m_out] == ["Transformer", "Pooling", "Normalize"]
    assert np.array_equal(e_in, e_out)
    np.testing.assert_allclose(np.linalg.norm(e_out, axis=1), 1.0, rtol=1e-6)


def test_ties_of_two_loads_with_the_same_modules(st, tmp_path):
    from st_helpers import encode

    recipe = _recipe(tmp_path, "output m = ties(a, b, base=a, density=0.5)", a=st["a"], b=st["b"])
    assert api.check(recipe).warnings == []
    api.build(recipe, tmp_path / "out", jobs=1)
    out = tmp_path / "out" / "m"
    for name in ST_FILES:
        assert (out / name).read_bytes() == (st["a"] / name).read_bytes()
    m, e = encode(out)
    assert [type(x).__name__ for x in m] == ["Transformer", "Pooling", "Normalize"]
    assert json.loads((out / "1_Pooling/config.json").read_text())["pooling_mode"] == "mean"
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-6)
    _, e_a = encode(st["a"])
    assert not np.allclose(e, e_a)  # the transformer's weights were merged


def test_inputs_that_disagree_on_pooling_warn(st, tmp_path):
    recipe = _recipe(tmp_path, "output m = linear(a, c)", a=st["a"], c=st["cls"])
    [w] = api.check(recipe).warnings
    assert (w.code, w.severity) == ("W310", "warning")
    assert w.message == ("output `m`: the inputs disagree on their sentence-transformers "
                         "modules: `c` has Transformer -> Pooling, `a` has Transformer -> "
                         "Pooling -> Normalize; the output takes those of `a`")
    recipe = _recipe(tmp_path, "output m = linear(a, c) { files = c }", a=st["a"], c=st["cls"])
    [w] = api.check(recipe).warnings
    assert "the output takes those of `c`" in w.message
    api.build(recipe, tmp_path / "out", jobs=1)
    assert "2_Normalize/config.json" not in _files(tmp_path / "out" / "m")
    assert json.loads((tmp_path / "out/m/1_Pooling/config.json").read_text())["pooling_mode"] == "cls"


def test_dense_modules_are_merged_like_the_transformer(st, tmp_path):
    from safetensors.numpy import load_file

    from st_helpers import encode

    recipe = _recipe(tmp_path, "output m = linear(a, b, weight=[0.25, 0.75])",
                     a=st["dense"], b=st["dense2"])
    assert api.check(recipe).warnings == []
    api.build(recipe, tmp_path / "out", jobs=1)
    out = tmp_path / "out" / "m"
    wa, wb = (load_file(str(st[k] / "2_Dense/model.safetensors")) for k in ("dense", "dense2"))
    wo = load_file(str(out / "2_Dense/model.safetensors"))
    assert sorted(wo) == ["linear.bias", "linear.weight"]
    for n in wo:
        np.testing.assert_allclose(wo[n], 0.25 * wa[n] + 0.75 * wb[n], rtol=1e-6, atol=1e-7)
    assert (out / "2_Dense/config.json").read_bytes() == (st["dense"] / "2_Dense/config.json").read_bytes()
    m, e = encode(out)
    assert [type(x).__name__ for x in m] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert e.shape == (3, 8)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-6)


def test_dense_module_of_one_input_only_is_copied(st, tmp_path):
    recipe = _recipe(tmp_path, "output m = linear(a, b)", a=st["dense"], b=st["a"])
    ws = api.check(recipe).warnings
    assert [w.code for w in ws] == ["W310", "W311"]
    assert ws[1].message == ("output `m`: the sentence-transformers dense layer (`2_Dense`) is "
                             "copied from `a`, not merged: `b` has no dense module `2_Dense`")
    api.build(recipe, tmp_path / "out", jobs=1)
    assert (tmp_path / "out/m/2_Dense/model.safetensors").read_bytes() == \
        (st["dense"] / "2_Dense/model.safetensors").read_bytes()


def test_files_option_must_name_a_model(st, tmp_path):
    recipe = _recipe(tmp_path, "output m = linear(a, b) { files = 3 }", a=st["a"], b=st["b"])
    with pytest.raises(MergecError) as e:
        api.check(recipe)
    assert [(d.code, d.message) for d in e.value.diagnostics] == [
        ("E207", "`files` must name a `model` input")]
