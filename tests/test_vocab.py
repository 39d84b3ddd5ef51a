"""`set vocab`: a union of a base and a fine-tune with 3 added tokens, the rows of the
output's embeddings and head against NumPy, the written tokenizer, the diagnostics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mergec import api
from mergec.diagnostics import MergecError

pytestmark = [pytest.mark.torch, pytest.mark.transformers]

ADDED = ["<|im_start|>", "<|im_end|>", "<tool>"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"


def _tokenizer(extra=()):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[PAD]": 1, **{f"w{i}": i for i in range(2, 100)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken("[PAD]", special=True)])
    if extra:
        tok.add_special_tokens([AddedToken(t, special=True) for t in extra])
    return tok


def _save(folder, vocab_rows, seed, extra=(), template=None, base=None):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_rows,
                      tie_word_embeddings=False, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    if base is not None:  # a fine-tune: the base's weights, moved a little
        sd = base.state_dict()
        with torch.no_grad():
            for n, p in model.named_parameters():
                q = sd[n]
                p[:q.shape[0]] = q + 0.01 * torch.randn_like(q)
    model.save_pretrained(folder)
    fast = PreTrainedTokenizerFast(tokenizer_object=_tokenizer(extra), unk_token="[UNK]",
                                   pad_token="[PAD]")
    if template:
        fast.chat_template = template
    fast.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    base = _save(root / "base", 100, 0)
    _save(root / "ft", 103, 1, extra=ADDED, template=TEMPLATE, base=base)
    return root


def _w(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def _recipe(tmp_path, models, settings, expr="linear(base, ft)", opts=""):
    p = tmp_path / "r.merge"
    p.write_text(settings + f'model base = "{models / "base"}"\nmodel ft = "{models / "ft"}"\n'
                 f"output m = {expr}{opts}\n")
    return p


def test_union_rows_tokenizer_and_load(tmp_path, models):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = _recipe(tmp_path, models, 'set vocab = "union"\nset pad_to_multiple_of = 8\n',
                opts=" { tokenizer = ft }")
    [w] = api.check(r).warnings
    assert (w.code, w.message) == (
        "W313", "`base` lacks 3 of the output's 103 tokens: their rows of "
                "`model.embed_tokens.weight`, `lm_head.weight` are read as the mean of the "
                "other inputs' rows for the token")
    api.build(r, tmp_path / "out", jobs=1)
    out = tmp_path / "out" / "m"
    b, f, o = _w(models / "base"), _w(models / "ft"), _w(out)
    for t in ("model.embed_tokens.weight", "lm_head.weight"):
        assert o[t].shape == (104, 32)
        want = np.zeros((104, 32), np.float32)
        want[:100] = (0.5 * b[t].astype(np.float64) + 0.5 * f[t][:100]).astype(np.float32)
        want[100:103] = f[t][100:103]  # only the fine-tune has them: its rows
        np.testing.assert_array_equal(o[t], want)
    # the other tensors are merged as without `set vocab`
    t = "model.layers.0.mlp.up_proj.weight"
    np.testing.assert_array_equal(o[t], (0.5 * b[t].astype(np.float64) + 0.5 * f[t])
                                  .astype(np.float32))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == 104
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.convert_tokens_to_ids(ADDED) == [100, 101, 102]
    assert tok("w5 <|im_start|> w7 <tool>")["input_ids"] == [5, 100, 7, 102]
    assert tok.chat_template == TEMPLATE  # from the tokenizer input, `ft`
    model = AutoModelForCausalLM.from_pretrained(str(out))
    with torch.no_grad():
        logits = model(torch.tensor([[5, 100, 7, 102]])).logits
    assert logits.shape == (1, 4, 104)
    np.testing.assert_array_equal(model.lm_head.weight.detach().numpy(), o["lm_head.weight"])


@pytest.mark.parametrize("fill", ["zero", "mean"])
def test_fills(tmp_path, models, fill):
    r = _recipe(tmp_path, models, f'set vocab = "union"\nset vocab_fill = "{fill}"\n')
    api.build(r, tmp_path / "out", jobs=1)
    b, f, o = _w(models / "base"), _w(models / "ft"), _w(tmp_path / "out" / "m")
    t = "model.embed_tokens.weight"
    filled = np.zeros(32) if fill == "zero" else b[t].astype(np.float64).mean(axis=0)
    filled = filled.astype(np.float32)
    want = 0.5 * filled.astype(np.float64) + 0.5 * f[t][100:103]
    assert o[t].shape == (103, 32)
    np.testing.assert_array_equal(o[t][100:103], want.astype(np.float32))


def test_task_arithmetic_on_a_union(tmp_path, models):
    """A token only the fine-tune has: its row (the base reads it as the fine-tune's, so
    its task vector is zero there)."""
    r = _recipe(tmp_path, models, 'set vocab = "union"\n',
                expr="task_arithmetic(ft, base=base, weight=0.5)")
    api.build(r, tmp_path / "out", jobs=1)
    b, f, o = _w(models / "base"), _w(models / "ft"), _w(tmp_path / "out" / "m")
    t = "lm_head.weight"
    np.testing.assert_array_equal(o[t][100:], f[t][100:])
    want = b[t].astype(np.float64) + 0.5 * (f[t][:100].astype(np.float64) - b[t])
    np.testing.assert_allclose(o[t][:100], want, rtol=1e-6, atol=1e-7)


def test_vocab_of_the_base_drops_the_added_tokens(tmp_path, models):
    from tokenizers import Tokenizer

    r = _recipe(tmp_path, models, 'set vocab = "base"\n')
    [w] = api.check(r).warnings
    assert (w.code, w.message) == (
        "W314", "3 of `ft`'s 103 rows of `model.embed_tokens.weight`, `lm_head.weight` are "
                "not tokens of the output's vocabulary and are not used")
    api.build(r, tmp_path / "out", jobs=1)
    out = tmp_path / "out" / "m"
    b, f, o = _w(models / "base"), _w(models / "ft"), _w(out)
    t = "lm_head.weight"
    np.testing.assert_array_equal(o[t], (0.5 * b[t].astype(np.float64) + 0.5 * f[t][:100])
                                  .astype(np.float32))
    assert Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab_size() == 100


def _diag(r):
    with pytest.raises(MergecError) as e:
        api.check(r)
    [d] = e.value.diagnostics
    return d


def test_unknown_vocab_model_is_e319(tmp_path, models):
    d = _diag(_recipe(tmp_path, models, 'set vocab = "bse"\n'))
    assert (d.code, d.message, d.help) == (
        "E319", '`set vocab = "bse"` names no model of the recipe', "did you mean `base`?")
    assert (d.span.line, d.span.col) == (1, 13)


def test_base_fill_needs_a_named_vocab_e320(tmp_path, models):
    d = _diag(_recipe(tmp_path, models, 'set vocab = "union"\nset vocab_fill = "base"\n'))
    assert (d.code, d.message) == (
        "E320", '`set vocab_fill = "base"` needs the vocabulary of a named model, not "union"')
    assert d.span.line == 2


def test_tokenizer_larger_than_embeddings_is_e317(tmp_path, models):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(models / "base", bad)
    shutil.copy(models / "ft" / "tokenizer.json", bad / "tokenizer.json")
    p = tmp_path / "r.merge"
    p.write_text(f'set vocab = "union"\nmodel base = "{bad}"\nmodel ft = "{models / "ft"}"\n'
                 "output m = linear(base, ft)\n")
    d = _diag(p)
    assert (d.code, d.message) == (
        "E317", "`base`'s tokenizer has token ids up to 102, but its "
                "`model.embed_tokens.weight` has 100 rows")
    assert d.span.line == 2


def test_no_tokenizer_is_e318(tmp_path, models):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for n in ("config.json", "model.safetensors"):
        shutil.copy(models / "base" / n, bare / n)
    p = tmp_path / "r.merge"
    p.write_text(f'set vocab = "union"\nmodel base = "{bare}"\nmodel ft = "{models / "ft"}"\n'
                 "output m = linear(base, ft)\n")
    d = _diag(p)
    assert d.code == "E318"
    assert d.message == (f"`base` has no tokenizer.json (in {bare}), and `set vocab` "
                         "matches tokens by their text")


def test_without_set_vocab_still_e305(tmp_path, models):
    d = _diag(_recipe(tmp_path, models, ""))
    assert d.code == "E305"


def test_base_fill(tmp_path, models):
    r = _recipe(tmp_path, models, 'set vocab = "ft"\nset vocab_fill = "base"\n')
    [w] = api.check(r).warnings
    assert (w.code, w.message) == (
        "W313", "`base` lacks 3 of the output's 103 tokens: their rows of "
                "`model.embed_tokens.weight`, `lm_head.weight` are read as `ft`'s row")
    api.build(r, tmp_path / "out", jobs=1)
    f, o = _w(models / "ft"), _w(tmp_path / "out" / "m")
    np.testing.assert_array_equal(o["lm_head.weight"][100:], f["lm_head.weight"][100:])


def test_equal_vocabularies_give_the_same_bytes(tmp_path, models):
    from safetensors.numpy import load_file

    outs = []
    for i, setting in enumerate(["", 'set vocab = "union"\n']):
        p = tmp_path / f"r{i}.merge"
        p.write_text(setting + f'model a = "{models / "ft"}"\nmodel b = "{models / "ft"}"\n'
                     "output m = slerp(a, b, t=0.3)\n")
        assert api.check(p).warnings == []
        api.build(p, tmp_path / f"out{i}", jobs=1)
        outs.append(load_file(str(tmp_path / f"out{i}" / "m" / "model.safetensors")))
    assert outs[0].keys() == outs[1].keys()
    for k in outs[0]:
        assert outs[0][k].tobytes() == outs[1][k].tobytes(), k


def test_adapter_output_with_set_vocab_is_e321(tmp_path, models):
    with pytest.raises(MergecError) as e:
        api.check(_recipe(tmp_path, models, 'set vocab = "base"\n',
                          expr="lowrank(ft - base, rank=4)"))
    [d] = [d for d in e.value.diagnostics if d.severity == "error"]
    assert (d.code, d.message) == (
        "E321", "`set vocab` is not supported for output `m`: a LoRA adapter is built on "
                "one model's vocabulary")


def test_padding_without_set_vocab_is_w315(tmp_path, models):
    p = tmp_path / "r.merge"
    p.write_text(f'set pad_to_multiple_of = 64\nmodel base = "{models / "base"}"\n'
                 "output m = linear(base, base)\n")
    [w] = api.check(p).warnings
    assert (w.code, w.message, w.span.line) == (
        "W315", "`set pad_to_multiple_of` has no effect without `set vocab`", 1)


def test_plan_says_the_vocabulary(tmp_path, models, run_cli):
    r = _recipe(tmp_path, models, 'set vocab = "union"\nset pad_to_multiple_of = 8\n')
    code, out, err = run_cli("plan", r)
    assert code == 0, err
    assert "  vocabulary     union: 103 tokens, 104 rows (fill: others)\n" in out
    assert "tokenizer.json, tokenizer_config.json" in out
