"""LoRA adapters against PEFT itself: adapters mergec extracts load with
`PeftModel.from_pretrained` and do what they claim; adapters PEFT writes read as the update
PEFT's `merge_and_unload` applies (alpha/r, rank_pattern, alpha_pattern, rsLoRA,
fan_in_fan_out). Tiny random models made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.torch, pytest.mark.peft]

PREFIX = "base_model.model."


def tiny_llama(folder: Path, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg).eval()
    m.save_pretrained(folder)
    return m


def fine_tune(base_dir: Path, folder: Path, seed: int = 1):
    """base + a perturbation of every weight: matrices, embeddings and the first norm."""
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.ndim == 2 or "layers.0.input_layernorm" in n:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    m.save_pretrained(folder)
    return m


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("peft")
    tiny_llama(root / "base")
    fine_tune(root / "base", root / "ft")
    return root


def logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits.numpy()


def load_base(root: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(root / "base").eval()


def extract(root: Path, text: str, name: str) -> Path:
    from mergec.api import build

    r = root / f"{name}.merge"
    r.write_text(f'model base = "./base"\nmodel ft = "./ft"\n\noutput {name} = {text}\n')
    build(r, root / "out", force=True)
    return root / "out" / name


def test_full_rank_adapter_reproduces_the_fine_tune(models):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = extract(models, 'lowrank(ft - base, rank=64) { dtype = "float32" }', "full")
    ids = torch.arange(3, 40).reshape(1, -1)
    want = logits(AutoModelForCausalLM.from_pretrained(models / "ft").eval(), ids)
    pm = PeftModel.from_pretrained(load_base(models), path).eval()
    got = logits(pm, ids)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    # without the adapter the base differs by far more than that
    assert np.abs(logits(load_base(models), ids) - want).max() > 1e-2
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert cfg["modules_to_save"] == ["model.embed_tokens", "model.layers.0.input_layernorm"]


def test_rank_pattern_round_trips_through_peft(models):
    import torch
    from peft import PeftModel
    from safetensors.numpy import load_file

    path = extract(models, 'lowrank(ft - base, energy=0.7) { others = "drop" }', "e")
    cfg = json.loads((path / "adapter_config.json").read_text())
    assert cfg["rank_pattern"]
    w = load_file(str(path / "adapter_model.safetensors"))
    pm = PeftModel.from_pretrained(load_base(models), path).eval()
    layers = dict(pm.base_model.model.named_modules())
    base_sd = {k: v.numpy() for k, v in load_base(models).state_dict().items()}
    merged = {k: v.detach().numpy() for k, v in pm.merge_and_unload().state_dict().items()}
    for m in cfg["target_modules"]:
        a, b = w[f"{PREFIX}{m}.lora_A.weight"], w[f"{PREFIX}{m}.lora_B.weight"]
        mod = layers[m]
        assert mod.r["default"] == a.shape[0] == cfg["rank_pattern"].get(m, cfg["r"])
        assert mod.scaling["default"] == 1.0
        np.testing.assert_allclose(merged[m + ".weight"], base_sd[m + ".weight"] + b @ a,
                                   rtol=0, atol=1e-6)
    del torch


def test_rank_r_weight_error_is_the_svd_tail(models):
    from peft import PeftModel

    path = extract(models, 'lowrank(ft - base, rank=3) { others = "drop" }', "r3")
    merged = {k: v.detach().numpy() for k, v in PeftModel.from_pretrained(
        load_base(models), path).merge_and_unload().state_dict().items()}
    from transformers import AutoModelForCausalLM

    base_sd = {k: v.numpy() for k, v in load_base(models).state_dict().items()}
    ft_sd = {k: v.numpy() for k, v in
             AutoModelForCausalLM.from_pretrained(models / "ft").state_dict().items()}
    cfg = json.loads((path / "adapter_config.json").read_text())
    for m in cfg["target_modules"]:
        n = m + ".weight"
        d = (ft_sd[n] - base_sd[n]).astype(np.float64)
        s = np.linalg.svd(d, compute_uv=False)
        tail = np.sqrt((s[3:] ** 2).sum())
        assert np.linalg.norm(ft_sd[n] - merged[n]) == pytest.approx(tail, rel=1e-3)


def peft_adapter(model, folder: Path, **cfg):
    """An adapter PEFT writes, with random (not zero) B so the update is visible."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    pm = get_peft_model(model, LoraConfig(init_lora_weights=False, **cfg))
    pm.save_pretrained(folder)
    merged = {k: v.detach().numpy().copy()
              for k, v in pm.merge_and_unload().state_dict().items()}
    return merged


def mergec_applied(root: Path, adapter: Path, base: str = "./base") -> dict:
    from mergec.api import build
    from mergec.demo import load_tensors

    r = root / "apply.merge"
    r.write_text(f'model base = "{base}"\nadapter lora = "{adapter}"\n'
                 'output m = base + lora { dtype = "float32" }\n')
    build(r, root / "applied", force=True)
    return load_tensors(root / "applied" / "m")


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_adapters_read_as_peft_merges_them(models, rslora):
    """alpha/r (or alpha/sqrt(r)), rank_pattern with a regular expression, alpha_pattern,
    LoRA on the embedding table."""
    want = peft_adapter(load_base(models), models / "pa",
                        r=4, lora_alpha=16, use_rslora=rslora,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                        "up_proj", "down_proj", "embed_tokens"],
                        rank_pattern={"q_proj|v_proj": 2, "model.layers.1.mlp.up_proj": 6},
                        alpha_pattern={"down_proj|k_proj": 3, "model.layers.0.self_attn.o_proj": 5})
    got = mergec_applied(models, "./pa")
    base_sd = {k: v.numpy() for k, v in load_base(models).state_dict().items()}
    changed = [k for k in want if not np.array_equal(want[k], base_sd[k])]
    assert len(changed) == 15 and "model.embed_tokens.weight" in changed
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=0, atol=2e-6, err_msg=k)


def test_fan_in_fan_out_adapters_read_as_peft_merges_them(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                       n_positions=32)).eval()
    model.save_pretrained(tmp_path / "base")
    want = peft_adapter(model, tmp_path / "pa", r=4, lora_alpha=8, fan_in_fan_out=True,
                        target_modules=["c_attn", "c_fc"])
    got = mergec_applied(tmp_path, "./pa")
    for k in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_fc.weight"):
        assert want[k].shape[0] == 32  # Conv1D stores [in, out]
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=2e-6, err_msg=k)


def test_gpt2_conv1d_adapter_reproduces_the_fine_tune(tmp_path):
    """GPT-2 stores its linear weights as [in, out] (Conv1D): the adapter is written with
    fan_in_fan_out and factors of the transposed delta; its biases are left out (W351)."""
    import torch
    from peft import PeftModel
    from transformers import GPT2Config, GPT2LMHeadModel

    from mergec.api import build, check

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                       n_positions=32)).eval()
    model.save_pretrained(tmp_path / "base")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.ndim == 2 and "wte" not in n and "wpe" not in n:
                p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "ft")
    r = tmp_path / "g.merge"
    r.write_text('model base = "./base"\nmodel ft = "./ft"\n\n'
                 'output lo = lowrank(ft - base, rank=128) { dtype = "float32" }\n')
    assert [w.code for w in check(r).warnings] == ["W351"]
    build(r, tmp_path / "out")
    cfg = json.loads((tmp_path / "out/lo/adapter_config.json").read_text())
    assert cfg["fan_in_fan_out"] is True and cfg["modules_to_save"] is None
    ids = torch.arange(1, 20).reshape(1, -1)
    want = logits(model, ids)
    base = GPT2LMHeadModel.from_pretrained(tmp_path / "base").eval()
    got = logits(PeftModel.from_pretrained(base, tmp_path / "out/lo").eval(), ids)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
