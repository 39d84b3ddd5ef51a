"""Drop-in outputs on real architectures: tiny random-weight transformers models made here,
merged with linear, TIES and stack; every output loads with `from_pretrained` with no
missing, unexpected or mismatched keys and runs a forward pass, and an identity recipe
reproduces the input's logits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mergec import api
from mergec.diagnostics import MergecError

pytestmark = [pytest.mark.torch, pytest.mark.transformers]

KINDS = ("llama", "llama_tied", "mistral", "mixtral", "qwen2", "phi3", "gemma", "gemma2",
         "gpt2", "gpt_neox", "bert", "roberta", "vit", "t5", "whisper", "clip", "llava")

#: a stack recipe per architecture, and the config values it must give
STACKS = {
    "t5": ("stack(a.encoder.layers[0:2], b.encoder.layers[1:3], b.decoder.layers[0:1])",
           {"num_layers": 4, "num_decoder_layers": 1}),
    "whisper": ("stack(a.encoder.layers[0:2], b.encoder.layers[1:2], b.decoder.layers[0:2])",
                {"encoder_layers": 3, "decoder_layers": 2}),
    "clip": ("stack(a.vision.layers[0:2], b.vision.layers[0:3])",
             {"vision_config.num_hidden_layers": 5, "text_config.num_hidden_layers": 2}),
    "gemma2": ("stack(a.layers[1:4], b.layers[0:2])",
               {"num_hidden_layers": 5, "layer_types": [
                   "full_attention", "sliding_attention", "full_attention",
                   "sliding_attention", "full_attention"]}),
    "gpt2": ("stack(a.layers[0:3], b.layers[2:4])", {"n_layer": 5}),
    "llava": ("stack(a.decoder.layers[0:2], b.decoder.layers[1:4], a.vision.layers[0:2])",
              {"text_config.num_hidden_layers": 5, "vision_config.num_hidden_layers": 2}),
    "bert": ("stack(a.layers[0:1], b.layers[1:4])", {"num_hidden_layers": 4}),
    "roberta": ("stack(a.layers[0:1], b.layers[1:4])", {"num_hidden_layers": 4}),
    "vit": ("stack(a.layers[0:3], b.layers[3:4])", {"num_hidden_layers": 4}),
}
DEFAULT_STACK = ("stack(a.layers[0:3], b.layers[1:4])", {"num_hidden_layers": 6})


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from arch_models import make_model

    root = tmp_path_factory.mktemp("arch")
    made = {}

    def get(kind):
        if kind not in made:
            made[kind] = (make_model(kind, root / kind / "a", 0),
                          make_model(kind, root / kind / "b", 1))
        return made[kind]
    return get


def _build(tmp_path, a, b, body):
    tmp_path.mkdir(parents=True, exist_ok=True)
    r = tmp_path / "r.merge"
    r.write_text(f'model a = "{a}"\nmodel b = "{b}"\noutput m = {body}\n')
    api.build(r, tmp_path / "out", jobs=1)  # tiny tensors: no worker processes
    return tmp_path / "out" / "m"


def _w(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def _cfg(folder, path):
    cur = json.loads((folder / "config.json").read_text())
    for part in path.split("."):
        cur = cur[part]
    return cur


@pytest.mark.parametrize("kind", KINDS)
def test_identity_linear_ties_stack(kind, models, tmp_path):
    import torch

    from arch_models import forward, load_checked

    a, b = models(kind)
    ref = load_checked(kind, a)
    out = _build(tmp_path / "id", a, b, "a")
    got = load_checked(kind, out)
    for (n1, p1), (n2, p2) in zip(ref.state_dict().items(), got.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    if kind == "clip":  # same weights; this layout's kernels round differently (1e-7)
        torch.testing.assert_close(forward(kind, got), forward(kind, ref), rtol=0, atol=1e-5)
    else:
        assert torch.equal(forward(kind, got), forward(kind, ref))

    wa, wb = _w(a), _w(b)
    out = _build(tmp_path / "linear", a, b, "linear(a, b)")
    wo = _w(out)
    name = max((n for n in wa if wa[n].ndim == 2), key=lambda n: wa[n].size)
    np.testing.assert_allclose(wo[name], 0.5 * wa[name] + 0.5 * wb[name], rtol=1e-5, atol=1e-6)
    assert torch.isfinite(forward(kind, load_checked(kind, out))).all()

    out = _build(tmp_path / "ties", a, b, "ties(a, b, base=a, density=0.5)")
    assert torch.isfinite(forward(kind, load_checked(kind, out))).all()

    body, expect = STACKS.get(kind, DEFAULT_STACK)
    out = _build(tmp_path / "stack", a, b, body)
    assert {k: _cfg(out, k) for k in expect} == expect
    assert torch.isfinite(forward(kind, load_checked(kind, out))).all()


def test_neox_output_head_comes_after_the_blocks(models, tmp_path):
    a, b = models("gpt_neox")
    out = _w(_build(tmp_path, a, b, "stack(a.layers[0:2], b.layers[2:4])"))
    assert np.array_equal(out["embed_out.weight"], _w(b)["embed_out.weight"])
    assert np.array_equal(out["gpt_neox.embed_in.weight"], _w(a)["gpt_neox.embed_in.weight"])
    assert np.array_equal(out["gpt_neox.final_layer_norm.weight"],
                          _w(b)["gpt_neox.final_layer_norm.weight"])


def test_clip_towers(models, tmp_path):
    a, b = models("clip")
    wa, wb = _w(a), _w(b)
    out = _w(_build(tmp_path, a, b, "stack(a.vision.layers[0:2], b.vision.layers[0:3])"))
    for n in ("vision_model.pre_layrnorm.weight", "vision_model.embeddings.patch_embedding.weight",
              "text_model.encoder.layers.1.mlp.fc1.weight", "text_model.final_layer_norm.weight"):
        assert np.array_equal(out[n], wa[n]), n  # before the vision blocks, or the text tower
    for n in ("vision_model.post_layernorm.weight", "visual_projection.weight"):
        assert np.array_equal(out[n], wb[n]), n  # after the vision blocks
    assert np.array_equal(out["vision_model.encoder.layers.4.mlp.fc1.weight"],
                          wb["vision_model.encoder.layers.2.mlp.fc1.weight"])


def _check_error(tmp_path, a, b, body):
    r = tmp_path / "r.merge"
    r.write_text(f'model a = "{a}"\nmodel b = "{b}"\noutput m = {body}\n')
    with pytest.raises(MergecError) as e:
        api.check(r)
    return [(d.code, d.message, d.help) for d in e.value.diagnostics]


def test_stack_of_an_encoder_decoder_names_the_stack(models, tmp_path):
    a, b = models("t5")
    assert _check_error(tmp_path, a, b, "stack(a.layers[0:2], b.decoder.layers[0:1])") == [
        ("E314", "this model has 2 layer stacks (decoder, encoder); `.layers` does not say "
                 "which", "name the stack: `a.decoder.layers[...]`")]
    assert _check_error(tmp_path, a, b, "stack(a.decodr.layers[0:2])") == [
        ("E316", "this model has no layer stack `decodr`", "did you mean `decoder`?")]
    [(code, msg, _)] = _check_error(tmp_path, a, b,
                                    "stack(a.decoder.layers[0:2], b.decoder.layers[0:1])")
    assert (code, msg) == ("E315", "output `m`: `decoder.block.2.layer.0.SelfAttention."
                                   "relative_attention_bias.weight` exists only in the first "
                                   "block of `decoder.block.N` in the model, but here it is "
                                   "in block 2")


def test_layer_slices_keep_working_on_one_stack(models, tmp_path):
    a, b = models("llama")
    out = _build(tmp_path, a, b, "stack(a.layers[0:1], b.layers[3:4])")
    assert np.array_equal(_w(out)["model.layers.1.mlp.up_proj.weight"],
                          _w(b)["model.layers.3.mlp.up_proj.weight"])
    assert _cfg(out, "num_hidden_layers") == 2
