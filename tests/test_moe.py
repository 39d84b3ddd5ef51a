"""`moe(...)` outputs: experts and shared tensors where the layout puts them, routers
against NumPy references, the config, diagnostics; with torch and transformers, the
Mixtral and Qwen2-MoE outputs load with AutoModelForCausalLM and compute what a dense
model computes when their experts are equal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mergec.api import build, check, compile as compile_recipe
from mergec.demo import load_tensors
from mergec.diagnostics import MergecError

HEAD = 'model base = "./ckpt/base"\nmodel math = "./ckpt/math"\nmodel code = "./ckpt/code"\n\n'


def recipe(tmp_path: Path, family_f32, text: str) -> Path:
    ckpt = tmp_path / "ckpt"
    if not ckpt.exists():
        ckpt.symlink_to(Path(family_f32["base"]).parent)
    r = tmp_path / "r.merge"
    r.write_text(HEAD + text)
    return r


def f32(folder) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) for k, v in load_tensors(folder).items()}


def reference_rows(tokenizer_json: Path, embed: np.ndarray, prompts, negative=None):
    """Router rows by hand: mean token embedding per prompt, averaged over the prompts,
    less the negatives' average, normalized."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))

    def avg(texts):
        vecs = []
        for t in texts:
            ids = tok.encode(t, add_special_tokens=False).ids
            vecs.append(np.mean([embed[i].astype(np.float64) for i in ids], axis=0))
        return np.mean(vecs, axis=0)

    rows = []
    for i, p in enumerate(prompts):
        v = avg([p] if isinstance(p, str) else p)
        if negative:
            n = negative[i]
            v = v - avg([n] if isinstance(n, str) else n)
        rows.append(v / np.linalg.norm(v))
    return np.stack(rows)


def test_mixtral_layout_and_cheap_embed_routers(tmp_path, family_f32):
    prompts = [["two plus two", "seven times eight"], "def print number"]
    negative = ["def print", "plus minus"]
    r = recipe(tmp_path, family_f32,
               'output m = moe(math, code, base=base, router="cheap_embed", '
               f'prompts={json.dumps(prompts)}, negative={json.dumps(negative)}) '
               '{ dtype = "float32" }\n')
    build(r, tmp_path / "out")
    got = f32(tmp_path / "out/m")
    base, math_, code = (f32(family_f32[n]) for n in ("base", "math", "code"))
    want = reference_rows(Path(family_f32["base"]) / "tokenizer.json",
                          base["model.embed_tokens.weight"], prompts, negative)
    for layer in range(4):
        np.testing.assert_allclose(got[f"model.layers.{layer}.block_sparse_moe.gate.weight"],
                                   want, rtol=0, atol=1e-6)
        for i, ex in enumerate((math_, code)):
            for w, proj in (("w1", "gate_proj"), ("w2", "down_proj"), ("w3", "up_proj")):
                np.testing.assert_array_equal(
                    got[f"model.layers.{layer}.block_sparse_moe.experts.{i}.{w}.weight"],
                    ex[f"model.layers.{layer}.mlp.{proj}.weight"])
    shared = [n for n in base if ".mlp." not in n]
    for n in shared:
        np.testing.assert_array_equal(got[n], base[n])
    assert len(got) == len(shared) + 4 * (2 * 3 + 1)
    cfg = json.loads((tmp_path / "out/m/config.json").read_text())
    assert (cfg["model_type"], cfg["architectures"], cfg["num_local_experts"],
            cfg["num_experts_per_tok"], cfg["num_hidden_layers"], cfg["dtype"]) == \
        ("mixtral", ["MixtralForCausalLM"], 2, 2, 4, "float32")
    assert (tmp_path / "out/m/tokenizer.json").is_file()


def test_random_routers_follow_the_seed(tmp_path, family_f32):
    text = "output m = moe(math, code, base=base, experts_per_token=1)\n"
    r = recipe(tmp_path, family_f32, "set seed = 7\n" + text)
    build(r, tmp_path / "a")
    build(r, tmp_path / "b")
    r.write_text(HEAD + "set seed = 8\n" + text)
    build(r, tmp_path / "c")
    a, b, c = (f32(tmp_path / x / "m") for x in "abc")
    name = "model.layers.0.block_sparse_moe.gate.weight"
    assert a[name].shape == (2, 64)
    np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a[name], c[name])
    assert not np.array_equal(a[name], a["model.layers.1.block_sparse_moe.gate.weight"])
    assert 0.01 < float(np.std(np.concatenate([a[n].ravel() for n in a if "gate.weight" in n
                                               and "block_sparse" in n]))) < 0.03


def test_qwen2_moe_layout_with_a_shared_expert(tmp_path, family_f32):
    r = recipe(tmp_path, family_f32, 'output q = moe(math, code, base=base, layout="qwen2_moe", '
               "shared=linear(math, code)) { dtype = \"float32\" }\n")
    plan = compile_recipe(r).plan.outputs[0]
    assert plan.moe == "qwen2_moe: 2 experts, 2 per token, router random (4 layers)"
    build(r, tmp_path / "out")
    got = f32(tmp_path / "out/q")
    math_, code = f32(family_f32["math"]), f32(family_f32["code"])
    assert plan.tensors == len(got)
    n = "model.layers.3.mlp.shared_expert.up_proj.weight"
    want = (0.5 * math_["model.layers.3.mlp.up_proj.weight"].astype(np.float64)
            + 0.5 * code["model.layers.3.mlp.up_proj.weight"]).astype(np.float32)
    np.testing.assert_array_equal(got[n], want)
    np.testing.assert_array_equal(got["model.layers.3.mlp.experts.1.down_proj.weight"],
                                  code["model.layers.3.mlp.down_proj.weight"])
    np.testing.assert_array_equal(got["model.layers.0.mlp.shared_expert_gate.weight"],
                                  np.zeros((1, 64), np.float32))
    assert got["model.layers.0.mlp.gate.weight"].shape == (2, 64)
    cfg = json.loads((tmp_path / "out/q/config.json").read_text())
    assert {k: cfg[k] for k in ("model_type", "num_experts", "num_experts_per_tok",
                                "moe_intermediate_size", "shared_expert_intermediate_size",
                                "norm_topk_prob", "qkv_bias", "decoder_sparse_step")} == {
        "model_type": "qwen2_moe", "num_experts": 2, "num_experts_per_tok": 2,
        "moe_intermediate_size": 128, "shared_expert_intermediate_size": 128,
        "norm_topk_prob": True, "qkv_bias": False, "decoder_sparse_step": 1}


def test_diagnostics(tmp_path, family_f32):
    text = ("output a = moe(math, base=base)\n"
            "output b = moe(math, code, base=base, experts_per_token=3)\n"
            'output c = moe(math, code, base=base, router="cheap")\n'
            'output d = moe(math, code, base=base, router="cheap_embed", prompts=["x"])\n'
            'output e = moe(math, code, base=base, shared=math)\n'
            "output f = moe(math, code - base, base=base)\n"
            "output g = moe(math, code)\n"
            "output h = base + 0.5 * (g - base)\n"
            'output i = moe(math, code, base=base)\n    where "*.mlp.*" {}\n')
    with pytest.raises(MergecError) as ei:
        check(recipe(tmp_path, family_f32, text))
    got = [(d.code, d.span.line, d.message) for d in ei.value.diagnostics]
    assert got == [
        ("E352", 5, "`moe` takes at least 2 experts, got 1"),
        ("E352", 6, "`experts_per_token` must be a whole number from 1 to 2 (the number of "
         "experts), found 3"),
        ("E353", 7, "`router` must be one of 'random', 'cheap_embed', 'hidden'"),
        ("E354", 8, "`prompts` has 1 entry for 2 experts"),
        ("E351", 9, "only the qwen2_moe layout has a shared expert"),
        ("E350", 10, "an expert is a Model, found a Delta"),
        ("E209", 11, "`moe` needs `base=`, the model of the tensors the experts share "
         "(embeddings, attention, norms, head)"),
        ("E261", 12, "`g` is written as an adapter or a mixture of experts; it is not a "
         "value other statements can use"),
        ("E357", 14, "`where` blocks cannot follow a `moe` output"),
    ]


def test_router_settings_are_checked_before_weights(tmp_path, family_f32):
    notok = tmp_path / "notok"
    notok.mkdir()
    for f in ("config.json", "model.safetensors"):
        (notok / f).symlink_to(Path(family_f32["base"]) / f)
    r = recipe(tmp_path, family_f32, 'model bare = "./notok"\n'
               'output a = moe(math, code, base=bare, router="cheap_embed", '
               'prompts=["two", "three"])\n'
               'output b = moe(math, code, base=base, prompts=["two", "three"]) '
               '{ tokenizer = base }\n')
    with pytest.raises(MergecError) as ei:
        check(r)
    got = [(d.code, d.span.line, d.message) for d in ei.value.diagnostics]
    assert got == [
        ("E355", 6, "the `cheap_embed` router tokenizes its prompts with the base model's "
         "tokenizer.json, which it does not have"),
        ("W352", 7, "the random router does not read prompts"),
        ("E219", 7, "unknown option `tokenizer` for a mixture of experts"),
    ]


def mistral_family(root: Path, model_type: str = "mistral"):
    """A tiny base and two fine-tunes, saved by transformers, with the test family's
    tokenizer."""
    import shutil

    import torch
    from transformers import (MistralConfig, MistralForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    from mergec.demo import make_family

    cls, cfg_cls = ((MistralForCausalLM, MistralConfig) if model_type == "mistral" else
                    (Qwen2ForCausalLM, Qwen2Config))
    torch.manual_seed(0)
    cfg = cfg_cls(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  tie_word_embeddings=False)
    base = cls(cfg).eval()
    base.save_pretrained(root / "base")
    for seed, name in ((1, "math"), (2, "code")):
        m = cls.from_pretrained(root / "base").eval()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
        m.save_pretrained(root / name)
    tok = make_family(root / "fam", layers=1, hidden=8, intermediate=16, heads=2, kv_heads=1,
                      vocab=128, seed=0, noise=0.01, dtype="float32")["base"]
    for name in ("base", "math", "code"):
        shutil.copy(Path(tok) / "tokenizer.json", root / name / "tokenizer.json")
    return base


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits.numpy()


@pytest.mark.torch
def test_mixtral_from_mistral_fine_tunes_loads_and_runs(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    dense = mistral_family(tmp_path)
    r = tmp_path / "m.merge"
    r.write_text('model base = "./base"\nmodel math = "./math"\nmodel code = "./code"\n\n'
                 'output mx = moe(math, code, base=base, router="cheap_embed", '
                 'prompts=["two plus two", "def print"])\n'
                 'output same = moe(base, base, base=base, experts_per_token=1)\n'
                 'output same_embed = moe(base, base, base=base, router="cheap_embed", '
                 'prompts=["two", "three"])\n')
    build(r, tmp_path / "out")
    ids = torch.arange(3, 40).reshape(1, -1)
    mx = AutoModelForCausalLM.from_pretrained(tmp_path / "out/mx").eval()
    assert type(mx).__name__ == "MixtralForCausalLM" and mx.config.num_local_experts == 2
    out = logits(mx, ids)
    assert out.shape == (1, 37, 128) and np.isfinite(out).all()
    want = logits(dense, ids)
    assert np.abs(out - want).max() > 1e-3  # the experts are not the base
    for name in ("same", "same_embed"):  # equal experts: any router gives the dense model
        m = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / name).eval()
        np.testing.assert_allclose(logits(m, ids), want, rtol=0, atol=2e-5)


@pytest.mark.torch
def test_qwen2_moe_with_a_shared_expert_loads_and_runs(tmp_path):
    """Equal experts and shared expert: each MLP gives f(x) + sigmoid(0) f(x) = 1.5 f(x),
    which is the dense model with its down projections scaled by 1.5."""
    import torch
    from transformers import AutoModelForCausalLM

    dense = mistral_family(tmp_path, "qwen2")
    r = tmp_path / "q.merge"
    r.write_text('model base = "./base"\nmodel math = "./math"\nmodel code = "./code"\n\n'
                 'output q = moe(math, code, base=base, shared=base, router="hidden", '
                 'prompts=["two plus two", "def print"], negative=["three", "four"])\n'
                 "output same = moe(base, base, base=base)\n")
    build(r, tmp_path / "out")
    ids = torch.arange(3, 30).reshape(1, -1)
    q = AutoModelForCausalLM.from_pretrained(tmp_path / "out/q").eval()
    assert type(q).__name__ == "Qwen2MoeForCausalLM" and q.config.qkv_bias is True
    assert np.isfinite(logits(q, ids)).all()
    rows = {layer: q.model.layers[layer].mlp.gate.weight.detach().numpy() for layer in (0, 1)}
    for w in rows.values():
        np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(rows[0], rows[1])  # one router per layer, from its own inputs
    # reference: the inputs of each layer's MLP, caught at the MLP itself
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tmp_path / "base/tokenizer.json"))
    seen = []
    hooks = [layer.mlp.register_forward_pre_hook(
        lambda mod, args: seen.append(args[0][0].double().mean(0).numpy()))
        for layer in dense.model.layers]

    def mlp_inputs(text):
        seen.clear()
        with torch.no_grad():
            dense(torch.tensor([tok.encode(text).ids]))
        return list(seen)

    for layer in (0, 1):
        want = []
        for pos, neg in (("two plus two", "three"), ("def print", "four")):
            v = mlp_inputs(pos)[layer] - mlp_inputs(neg)[layer]
            want.append(v / np.linalg.norm(v))
        np.testing.assert_allclose(rows[layer], np.stack(want), rtol=0, atol=1e-5)
    for h in hooks:
        h.remove()
    same = AutoModelForCausalLM.from_pretrained(tmp_path / "out/same").eval()
    with torch.no_grad():
        for layer in dense.model.layers:
            layer.mlp.down_proj.weight.mul_(1.5)
    np.testing.assert_allclose(logits(same, ids), logits(dense, ids), rtol=0, atol=2e-5)
