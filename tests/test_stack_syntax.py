"""`m.NAME.layers[a:b]`: a run of blocks of one layer stack, parsed, formatted and
checked on headers alone (the stacks of `mergec.arch`)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mergec import api, arch
from mergec.diagnostics import MergecError
from mergec.lang.fmt import format_text
from mergec.lang.parser import parse


def test_stack_slice_parses_and_formats():
    text = 'model t = "./t5"\noutput m = stack(t.encoder.layers[0:2],t.decoder.layers[:1])\n'
    [_, out] = parse(text, "r.merge").statements
    inner = out.expr.args[0]
    assert (inner.stack, inner.start, inner.stop) == ("encoder", 0, 2)
    assert out.expr.args[1].stack == "decoder"
    assert format_text(text, "r.merge") == (
        'model t = "./t5"\n'
        "output m = stack(t.encoder.layers[0:2], t.decoder.layers[:1])\n")


def test_stack_slice_other_attribute_is_e105():
    with pytest.raises(MergecError) as e:
        parse('model t = "./t5"\noutput m = t.encoder.blocks[0:2]\n', "r.merge")
    [d] = e.value.diagnostics
    assert (d.code, d.message) == ("E105", "unknown attribute `.encoder.blocks`")


def test_stacks_of_tensor_names():
    names = ["shared.weight", "encoder.block.0.x", "encoder.block.2.x", "decoder.block.1.x",
             "encoder.final_layer_norm.weight", "lm_head.weight"]
    assert arch.stacks(names) == {"encoder.block.": 3, "decoder.block.": 2}
    assert arch.stack_names(names) == {"encoder": "encoder.block.", "decoder": "decoder.block."}
    assert arch.stack_names(["model.layers.0.x"]) == {"layers": "model.layers."}
    assert arch.owner("encoder.final_layer_norm.weight", arch.stacks(names)) == "encoder.block."
    assert arch.owner("lm_head.weight", arch.stacks(names)) is None
    assert [arch.placement(n) for n in ("shared.weight", "lm_head.weight",
                                        "gpt_neox.embed_out.weight", "model.encoder.conv1.weight",
                                        "vision_model.pre_layrnorm.bias", "model.norm.weight")] \
        == ["before", "after", "after", "before", "before", "after"]


def _t5_like(root, seed, n_enc=3, n_dec=2):
    """A T5-shaped checkpoint: shared embeddings, encoder and decoder blocks (the first of
    each with a relative attention bias), final norms, an untied head."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    t = {"shared.weight": rng.standard_normal((8, 4)).astype(np.float32),
         "lm_head.weight": rng.standard_normal((8, 4)).astype(np.float32)}
    for side, n in (("encoder", n_enc), ("decoder", n_dec)):
        t[f"{side}.final_layer_norm.weight"] = rng.standard_normal(4).astype(np.float32)
        t[f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = \
            rng.standard_normal((4, 2)).astype(np.float32)
        for i in range(n):
            t[f"{side}.block.{i}.layer.0.SelfAttention.q.weight"] = \
                rng.standard_normal((4, 4)).astype(np.float32)
    root.mkdir(parents=True)
    save_file(t, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({
        "model_type": "t5", "num_layers": n_enc, "num_decoder_layers": n_dec,
        "tie_word_embeddings": False, "torch_dtype": "float32"}))
    return t


def test_stack_of_encoder_blocks_routes_and_counts(tmp_path):
    ta, tb = _t5_like(tmp_path / "a", 0), _t5_like(tmp_path / "b", 1)
    r = tmp_path / "r.merge"
    r.write_text('model a = "./a"\nmodel b = "./b"\n'
                 "output m = stack(a.encoder.layers[0:2], b.encoder.layers[1:3], "
                 "b.decoder.layers[0:1])\n")
    assert api.compile(r, jobs=1).plan.outputs[0].stacks == {"encoder": 4, "decoder": 1}
    api.build(r, tmp_path / "out", jobs=1)
    from safetensors.numpy import load_file

    out = load_file(str(tmp_path / "out/m/model.safetensors"))
    q = "layer.0.SelfAttention.q.weight"
    assert sorted(n for n in out if ".block." in n) == sorted(
        [f"encoder.block.{i}.{q}" for i in range(4)] + [f"decoder.block.0.{q}"] +
        ["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
         "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"])
    assert np.array_equal(out[f"encoder.block.3.{q}"], tb[f"encoder.block.2.{q}"])
    assert np.array_equal(out[f"encoder.block.1.{q}"], ta[f"encoder.block.1.{q}"])
    # before the blocks: from the first run; after an encoder: its last run; head: last part
    assert np.array_equal(out["shared.weight"], ta["shared.weight"])
    assert np.array_equal(out["encoder.final_layer_norm.weight"],
                          tb["encoder.final_layer_norm.weight"])
    assert np.array_equal(out["lm_head.weight"], tb["lm_head.weight"])
    cfg = json.loads((tmp_path / "out/m/config.json").read_text())
    assert (cfg["num_layers"], cfg["num_decoder_layers"]) == (4, 1)


def test_a_stack_no_part_names_is_kept_whole(tmp_path):
    ta, _ = _t5_like(tmp_path / "a", 0), _t5_like(tmp_path / "b", 1)
    r = tmp_path / "r.merge"
    r.write_text('model a = "./a"\nmodel b = "./b"\n'
                 "output m = stack(a.encoder.layers[0:1], b.encoder.layers[2:3])\n")
    checked = api.check(r)
    t = checked.outputs[0].expr.tensors
    assert sorted(n for n in t if n.startswith("decoder.block.")) == sorted(
        n for n in ta if n.startswith("decoder.block."))
    assert checked.outputs[0].expr.counts == {"decoder.block.": 2, "encoder.block.": 2} or \
        checked.outputs[0].expr.counts == {"encoder.block.": 2, "decoder.block.": 2}


def test_unknown_stacks_are_named_by_their_first_word_and_counted(tmp_path):
    from safetensors.numpy import save_file

    for name, seed in (("a", 0), ("b", 1)):
        rng = np.random.default_rng(seed)
        t = {f"{side}.blocks.{i}.w": rng.standard_normal((2, 2)).astype(np.float32)
             for side in ("enc", "dec") for i in range(3)}
        (tmp_path / name).mkdir()
        save_file(t, str(tmp_path / name / "model.safetensors"))
        (tmp_path / name / "config.json").write_text('{"model_type": "x"}')
    r = tmp_path / "r.merge"
    r.write_text('model a = "./a"\nmodel b = "./b"\n'
                 "output m = stack(a.enc.layers[0:2], b.enc.layers[0:2])\n")
    with pytest.raises(MergecError) as e:
        api.check(r)
    assert [(d.code, d.message) for d in e.value.diagnostics] == [(
        "E315", "output `m`: the stack `enc.blocks.N` has 4 blocks, 3 in the model, and "
                "mergec does not know which config.json key counts it")]
    r.write_text('model a = "./a"\nmodel b = "./b"\n'
                 "output m = stack(a.enc.layers[0:2], b.enc.layers[2:3])\n")
    assert api.check(r).outputs[0].expr.counts == {"enc.blocks.": 3, "dec.blocks.": 3}


def test_stack_name_without_layers_gets_a_hint():
    with pytest.raises(MergecError) as e:
        parse('model t = "./t5"\noutput m = stack(t.encoder[0:2])\n', "r.merge")
    [d] = e.value.diagnostics
    assert (d.code, d.message, d.help) == (
        "E105", "unknown attribute `.encoder`",
        "a run of blocks of one layer stack is written `.encoder.layers[a:b]`")


def test_stack_words_match_the_architecture_table():
    from mergec.lang.parser import STACK_WORDS

    assert STACK_WORDS == {k.name for k in arch.STACK_KINDS}


def _gemma_like(root, seed, n=4):
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    t = {"model.embed_tokens.weight": rng.standard_normal((8, 4)).astype(np.float32),
         "model.norm.weight": rng.standard_normal(4).astype(np.float32)}
    for i in range(n):
        t[f"model.layers.{i}.mlp.w"] = rng.standard_normal((4, 4)).astype(np.float32)
    root.mkdir(parents=True)
    save_file(t, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({
        "model_type": "gemma2", "num_hidden_layers": n, "torch_dtype": "float32",
        "layer_types": ["sliding_attention", "full_attention"] * (n // 2)}))


@pytest.mark.parametrize("body", [
    "stack(a.layers[1:4], b.layers[0:2])",
    "linear(stack(a.layers[1:4], b.layers[0:2]), stack(b.layers[1:4], a.layers[0:2]))",
])
def test_per_layer_lists_follow_the_blocks_taken(tmp_path, body):
    _gemma_like(tmp_path / "a", 0)
    _gemma_like(tmp_path / "b", 1)
    r = tmp_path / "r.merge"
    r.write_text(f'model a = "./a"\nmodel b = "./b"\noutput m = {body}\n')
    from mergec.check.output_config import derive_output_config

    cfg = derive_output_config(api.check(r).outputs[0])
    assert cfg["num_hidden_layers"] == 5
    assert cfg["layer_types"] == ["full_attention", "sliding_attention", "full_attention",
                                  "sliding_attention", "full_attention"]
