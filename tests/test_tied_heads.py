"""Tied and untied inputs: E313 until the recipe chooses (`set heads = "untie"` or
`"tie"`), then W312 says what was done; the output loads with transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mergec import api
from mergec.diagnostics import MergecError

pytestmark = [pytest.mark.torch, pytest.mark.transformers]


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    from arch_models import make_model

    root = tmp_path_factory.mktemp("heads")
    return {"tied": make_model("llama_tied", root / "tied", 0),
            "untied": make_model("llama", root / "untied", 1)}


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def _recipe(tmp_path, llamas, setting):
    p = tmp_path / "r.merge"
    p.write_text(setting + f'model a = "{llamas["tied"]}"\nmodel b = "{llamas["untied"]}"\n'
                 "output m = linear(a, b)\n")
    return p


def test_mixing_without_a_choice_is_e313(tmp_path, llamas):
    with pytest.raises(MergecError) as e:
        api.check(_recipe(tmp_path, llamas, ""))
    [d] = e.value.diagnostics
    assert (d.code, d.message) == ("E313", "one input ties its output head to its embeddings "
                                   "and the other has a head of its own (`lm_head.weight`)")
    assert d.help.startswith('choose: `set heads = "untie"`')


def test_untie(tmp_path, llamas):
    from arch_models import forward, load_checked

    r = _recipe(tmp_path, llamas, 'set heads = "untie"\n')
    [w] = api.check(r).warnings
    assert (w.code, w.message) == (
        "W312", "`a` ties its output head to its embeddings: its `lm_head.weight` is read "
                "from `model.embed_tokens.weight`, and outputs get a head of their own "
                "(`tie_word_embeddings: false`)")
    api.build(r, tmp_path / "out", jobs=1)
    out = tmp_path / "out" / "m"
    a, b, o = _weights(llamas["tied"]), _weights(llamas["untied"]), _weights(out)
    np.testing.assert_allclose(o["lm_head.weight"], 0.5 * a["model.embed_tokens.weight"]
                               + 0.5 * b["lm_head.weight"], rtol=1e-6, atol=1e-7)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    forward("llama", load_checked("llama", out))


def test_tie(tmp_path, llamas):
    from arch_models import forward, load_checked

    r = _recipe(tmp_path, llamas, 'set heads = "tie"\n')
    [w] = api.check(r).warnings
    assert (w.code, w.message) == (
        "W312", "`b` has an output head of its own: its `lm_head.weight` is not used, and "
                "outputs tie their head to `model.embed_tokens.weight` (`tie_word_embeddings: true`)")
    api.build(r, tmp_path / "out", jobs=1)
    out = tmp_path / "out" / "m"
    o = _weights(out)
    assert "lm_head.weight" not in o
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    model = load_checked("llama_tied", out)
    assert np.array_equal(model.lm_head.weight.detach().numpy(), o["model.embed_tokens.weight"])
    forward("llama", model)


def test_bad_heads_value(tmp_path, llamas):
    with pytest.raises(MergecError) as e:
        api.check(_recipe(tmp_path, llamas, 'set heads = "own"\n'))
    codes = [(d.code, d.message) for d in e.value.diagnostics]
    assert ("E208", '`set heads` expects "untie" or "tie", found "own"') in codes
