"""The synthetic Llama family of mergec.demo is what transformers expects."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mergec.demo import llama_shapes, load_tensors, main, make_family, make_llama

FAMILY = ("base", "math", "code", "chat", "other_vocab", "deep")
TINY = dict(layers=2, hidden=32, intermediate=64, heads=4, kv_heads=2, vocab=64)


def f32(tensors):
    return {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}


def load_model(path):
    """The checkpoint at `path` loaded by transformers (which needs torch for a model)."""
    transformers = pytest.importorskip("transformers")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        path, output_loading_info=True)
    return model.eval(), info


@pytest.fixture(params=["bfloat16", "float32"])
def any_family(request, family, family_f32):
    return request.param, family if request.param == "bfloat16" else family_f32


@pytest.mark.torch
@pytest.mark.parametrize("name", FAMILY)
def test_family_loads_and_runs(any_family, name):
    import torch

    dtype, fam = any_family
    model, info = load_model(fam[name])
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert not info["mismatched_keys"], info
    assert model.dtype == getattr(torch, dtype)
    cfg = json.loads((fam[name] / "config.json").read_text())
    ids = torch.tensor([[1, 5, 9, 17, 33, 2]])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 6, cfg["vocab_size"])
    assert torch.isfinite(logits.float()).all()


def test_family_shapes_and_config(family):
    expect = {
        "base": (4, 128), "math": (4, 128), "code": (4, 128), "chat": (4, 128),
        "other_vocab": (4, 160), "deep": (8, 128),
    }
    assert list(family) == list(expect)
    for name, (layers, vocab) in expect.items():
        cfg = json.loads((family[name] / "config.json").read_text())
        assert cfg["architectures"] == ["LlamaForCausalLM"]
        assert cfg["model_type"] == "llama"
        assert (cfg["num_hidden_layers"], cfg["vocab_size"]) == (layers, vocab)
        tensors = load_tensors(family[name])
        want = llama_shapes(layers=layers, hidden=64, intermediate=128, heads=4,
                            kv_heads=2, vocab=vocab)
        assert {k: v.shape for k, v in tensors.items()} == want
        assert all(str(v.dtype) == "bfloat16" for v in tensors.values())
        # every file the tools look for is there
        for f in ("generation_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "model.safetensors"):
            assert (family[name] / f).is_file(), (name, f)


def test_family_is_small(family, family_f32):
    for fam in (family, family_f32):
        root = next(iter(fam.values())).parent
        total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        assert total < 5 * 1024 * 1024


@pytest.mark.parametrize("ft", ["math", "code", "chat"])
def test_finetunes_differ_from_base_by_noise(family_f32, family, ft):
    for fam in (family_f32, family):
        base = f32(load_tensors(fam["base"]))
        other = f32(load_tensors(fam[ft]))
        assert base.keys() == other.keys()
        diff = np.concatenate([(other[k] - base[k]).ravel() for k in base])
        assert abs(diff.std() - 0.02) < 0.002, diff.std()
        assert abs(diff.mean()) < 0.002
    # base itself: weights ~ N(0, 0.02^2), norms ~ 1
    base = f32(load_tensors(family_f32["base"]))
    assert abs(base["model.layers.0.mlp.up_proj.weight"].std() - 0.02) < 0.002
    assert abs(base["model.norm.weight"].mean() - 1.0) < 0.01


def test_finetunes_differ_from_each_other(family_f32):
    a = f32(load_tensors(family_f32["math"]))
    b = f32(load_tensors(family_f32["code"]))
    d = a["model.layers.1.self_attn.q_proj.weight"] - b["model.layers.1.self_attn.q_proj.weight"]
    assert abs(d.std() - 0.02 * np.sqrt(2)) < 0.004


def test_other_vocab_and_deep_extend_base(family):
    base = load_tensors(family["base"])
    wide = load_tensors(family["other_vocab"])
    deep = load_tensors(family["deep"])
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        assert wide[name].shape == (160, 64)
        np.testing.assert_array_equal(f32(wide)[name][:128], f32(base)[name])
        assert np.abs(f32(wide)[name][128:]).max() > 0
    for name in base:
        if name not in ("model.embed_tokens.weight", "lm_head.weight"):
            np.testing.assert_array_equal(f32(wide)[name], f32(base)[name])
        np.testing.assert_array_equal(f32(deep)[name], f32(base)[name])
    extra = [k for k in deep if k.startswith("model.layers.7.")]
    assert len(extra) == 9


def test_tokenizer_loads(family):
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(family["base"])
    assert (tok.bos_token, tok.eos_token, tok.unk_token) == ("<s>", "</s>", "<unk>")
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    ids = tok("Hello world, merge the model")["input_ids"]
    assert ids[0] == 1 and tok.unk_token_id not in ids
    assert max(ids) < 128
    assert tok.decode(ids, skip_special_tokens=True) == "hello world , merge the model"
    # a larger vocabulary extends the smaller one
    wide = transformers.AutoTokenizer.from_pretrained(family["other_vocab"])
    assert len(wide) == 160 and len(tok) == 128
    small, big = tok.get_vocab(), wide.get_vocab()
    assert all(big[t] == i for t, i in small.items())


@pytest.mark.torch  # writes and reads .bin, and loads each layout in transformers
def test_layouts_hold_the_same_tensors(tmp_path):
    """Single-file, sharded, .bin and tied checkpoints with one seed agree."""
    for dtype in ("bfloat16", "float32"):
        single = make_llama(tmp_path / f"single-{dtype}", dtype=dtype, seed=3, **TINY)
        sharded = make_llama(tmp_path / f"sharded-{dtype}", dtype=dtype, seed=3,
                             sharded=True, **TINY)
        binary = make_llama(tmp_path / f"bin-{dtype}", dtype=dtype, seed=3, fmt="bin",
                            **TINY)
        ref = load_tensors(single)
        index = json.loads((sharded / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) == 3
        assert set(index["weight_map"]) == set(ref)
        assert index["metadata"]["total_size"] == sum(v.nbytes for v in ref.values())
        assert not (sharded / "model.safetensors").exists()
        assert (binary / "pytorch_model.bin").exists()
        for other in (sharded, binary):
            got = load_tensors(other)
            assert got.keys() == ref.keys()
            for k in ref:
                assert got[k].dtype == ref[k].dtype, (other, k)
                np.testing.assert_array_equal(f32(got)[k], f32(ref)[k])
            model, info = load_model(other)
            assert not info["missing_keys"] and not info["unexpected_keys"]
            sd = model.state_dict()
            for k in ref:
                np.testing.assert_array_equal(sd[k].float().numpy(), f32(ref)[k])

    tied = make_llama(tmp_path / "tied", seed=3, tie_embeddings=True, **TINY)
    tensors = load_tensors(tied)
    assert "lm_head.weight" not in tensors
    model, info = load_model(tied)
    assert not info["unexpected_keys"]
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_fine_tune_of_a_path_and_of_a_dict(tmp_path):
    base = make_llama(tmp_path / "base", dtype="float32", seed=1, **TINY)
    a = make_llama(tmp_path / "a", dtype="float32", seed=5, base=base, noise=0.1, **TINY)
    b = make_llama(tmp_path / "b", dtype="float32", seed=5, base=load_tensors(base),
                   noise=0.1, **TINY)
    ta, tb, t0 = load_tensors(a), load_tensors(b), load_tensors(base)
    for k in t0:
        np.testing.assert_array_equal(ta[k], tb[k])
    d = np.concatenate([(ta[k] - t0[k]).ravel() for k in t0])
    assert abs(d.std() - 0.1) < 0.01


def test_make_family_is_idempotent(tmp_path):
    made = make_family(tmp_path, names=("base", "ft"), dtype="float32", **TINY)
    assert list(made) == ["base", "ft", "other_vocab", "deep"]
    mtimes = {n: (p / "model.safetensors").stat().st_mtime_ns for n, p in made.items()}
    again = make_family(tmp_path, names=("base", "ft"), dtype="float32", **TINY)
    assert again == made
    assert {n: (p / "model.safetensors").stat().st_mtime_ns
            for n, p in again.items()} == mtimes
    # other arguments remake the checkpoints
    remade = make_family(tmp_path, names=("base", "ft"), dtype="bfloat16", **TINY)
    for p in remade.values():
        assert json.loads((p / "config.json").read_text())["dtype"] == "bfloat16"
        assert not list(p.parent.glob(f".{p.name}.*")), "temporary directory left behind"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        make_llama(tmp_path / "x", dtype="int8", **TINY)
    with pytest.raises(ValueError):
        make_llama(tmp_path / "x", fmt="gguf", **TINY)
    with pytest.raises(ValueError):
        make_family(tmp_path, names=("base", "deep"))
    assert not (tmp_path / "x").exists()


def test_cli(tmp_path, capsys):
    assert main([str(tmp_path / "ckpt"), "--layers", "2", "--hidden", "32",
                 "--vocab", "64", "--dtype", "float32", "--names", "base,math"]) == 0
    out = capsys.readouterr().out
    for name in ("base", "math", "other_vocab", "deep"):
        assert name in out
        assert (tmp_path / "ckpt" / name / "config.json").is_file()
    cfg = json.loads((tmp_path / "ckpt" / "deep" / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]) == (4, 32, 64)


@pytest.mark.parametrize("reader", ["safetensors",
                                    pytest.param("transformers", marks=pytest.mark.torch)])
def test_hand_written_safetensors_match_the_library(tmp_path, monkeypatch, reader):
    """The fallback writer (for a safetensors without bf16 numpy support)
    writes the same tensors as the library (and transformers loads them, with torch)."""
    import safetensors.numpy

    ref = make_llama(tmp_path / "lib", seed=2, **TINY)

    def refuse(*args, **kwargs):
        raise TypeError("no bf16 here")

    monkeypatch.setattr(safetensors.numpy, "save_file", refuse)
    hand = make_llama(tmp_path / "hand", seed=2, **TINY)
    a, b = load_tensors(ref), load_tensors(hand)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(f32(a)[k], f32(b)[k])
    from safetensors import safe_open

    with safe_open(str(hand / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(a)
    if reader == "transformers":
        model, info = load_model(hand)
        assert not info["missing_keys"] and not info["unexpected_keys"]
