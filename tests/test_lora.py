"""LoRA adapters as Deltas: base + adapter equals W + scale * B @ A, computed independently;
adapters that do not fit the model are check-time errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from mergec.api import build, check
from mergec.demo import load_tensors
from mergec.diagnostics import MergecError

PREFIX = "base_model.model."


def make_adapter(folder: Path, shapes: dict[str, tuple[int, int]], *, r=4, alpha=8,
                 rslora=False, seed=0, embed: dict | None = None, extra_cfg=None):
    """A PEFT-format LoRA adapter: {module: (out, in)} for linear modules,
    `embed` {module: (vocab, dim)} for embedding modules."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for mod, (out, inn) in shapes.items():
        tensors[f"{PREFIX}{mod}.lora_A.weight"] = rng.normal(0, 0.1, (r, inn)).astype(np.float32)
        tensors[f"{PREFIX}{mod}.lora_B.weight"] = rng.normal(0, 0.1, (out, r)).astype(np.float32)
    for mod, (vocab, dim) in (embed or {}).items():
        tensors[f"{PREFIX}{mod}.lora_embedding_A"] = rng.normal(0, 0.1, (r, vocab)).astype(np.float32)
        tensors[f"{PREFIX}{mod}.lora_embedding_B"] = rng.normal(0, 0.1, (dim, r)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora,
           "target_modules": sorted({m.split(".")[-1] for m in shapes}),
           "fan_in_fan_out": False, "bias": "none"}
    cfg.update(extra_cfg or {})
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return tensors


def setup(tmp_path, family_f32, text):
    ckpt = tmp_path / "ckpt"
    ckpt.symlink_to(Path(family_f32["base"]).parent)
    (tmp_path / "r.merge").write_text(text)
    return tmp_path / "r.merge"


MODS = {"model.layers.0.self_attn.q_proj": (64, 64), "model.layers.2.mlp.down_proj": (64, 128)}


@pytest.mark.parametrize("rslora", [False, True])
def test_base_plus_adapter_equals_dense_update(tmp_path, family_f32, rslora):
    t = make_adapter(tmp_path / "lora", MODS, r=4, alpha=8, rslora=rslora,
                     embed={"model.embed_tokens": (128, 64)})
    r = setup(tmp_path, family_f32, 'model base = "./ckpt/base"\nadapter lora = "./lora"\n'
              'output m = base + lora { dtype = "float32" }\n'
              'output h = base + 0.5 * lora { dtype = "float32" }\n')
    build(r, tmp_path / "out")
    base = {k: v.astype(np.float32) for k, v in load_tensors(family_f32["base"]).items()}
    got, half = load_tensors(tmp_path / "out" / "m"), load_tensors(tmp_path / "out" / "h")
    scale = 8 / (np.sqrt(4) if rslora else 4)
    expected = dict(base)
    for mod in MODS:
        a, b = t[f"{PREFIX}{mod}.lora_A.weight"], t[f"{PREFIX}{mod}.lora_B.weight"]
        expected[mod + ".weight"] = base[mod + ".weight"] + scale * (b.astype(np.float64) @ a)
    a = t[f"{PREFIX}model.embed_tokens.lora_embedding_A"]
    b = t[f"{PREFIX}model.embed_tokens.lora_embedding_B"]
    expected["model.embed_tokens.weight"] = base["model.embed_tokens.weight"] + \
        scale * (b.astype(np.float64) @ a).T
    for n in base:
        np.testing.assert_allclose(got[n], expected[n], rtol=1e-5, atol=1e-6, err_msg=n)
        np.testing.assert_allclose(half[n], base[n] + 0.5 * (expected[n] - base[n]),
                                   rtol=1e-5, atol=1e-6, err_msg=n)
    untouched = "model.layers.1.mlp.up_proj.weight"
    assert np.array_equal(got[untouched], base[untouched])


def test_adapters_merge_with_methods(tmp_path, family_f32):
    t1 = make_adapter(tmp_path / "l1", MODS, seed=1)
    t2 = make_adapter(tmp_path / "l2", {"model.layers.0.self_attn.q_proj": (64, 64)}, seed=2)
    r = setup(tmp_path, family_f32, 'model base = "./ckpt/base"\nadapter l1 = "./l1"\n'
              'adapter l2 = "./l2"\n'
              'output m = base + task_arithmetic(l1, l2, weight=[0.3, 0.7]) '
              '{ dtype = "float32" }\n')
    build(r, tmp_path / "out")
    base = {k: v.astype(np.float32) for k, v in load_tensors(family_f32["base"]).items()}
    got = load_tensors(tmp_path / "out" / "m")
    q = "model.layers.0.self_attn.q_proj"
    d1 = 2 * (t1[f"{PREFIX}{q}.lora_B.weight"].astype(np.float64) @ t1[f"{PREFIX}{q}.lora_A.weight"])
    d2 = 2 * (t2[f"{PREFIX}{q}.lora_B.weight"].astype(np.float64) @ t2[f"{PREFIX}{q}.lora_A.weight"])
    np.testing.assert_allclose(got[q + ".weight"], base[q + ".weight"] + 0.3 * d1 + 0.7 * d2,
                               rtol=1e-5, atol=1e-6)
    dn = "model.layers.2.mlp.down_proj"  # only l1 adapts it; l2 contributes zero
    d = 2 * (t1[f"{PREFIX}{dn}.lora_B.weight"].astype(np.float64) @ t1[f"{PREFIX}{dn}.lora_A.weight"])
    np.testing.assert_allclose(got[dn + ".weight"], base[dn + ".weight"] + 0.3 * d,
                               rtol=1e-5, atol=1e-6)


def codes(excinfo):
    return [(d.code, d.message) for d in excinfo.value.diagnostics]


def test_adapter_that_does_not_fit_is_a_check_error(tmp_path, family_f32):
    make_adapter(tmp_path / "wrong_shape", {"model.layers.0.self_attn.q_proj": (32, 64)})
    make_adapter(tmp_path / "wrong_name", {"model.layers.9.self_attn.q_proj": (64, 64)})
    r = setup(tmp_path, family_f32, 'model base = "./ckpt/base"\n'
              'adapter a = "./wrong_shape"\nadapter b = "./wrong_name"\n'
              'output m = base + a\noutput n = base + b\n')
    with pytest.raises(MergecError) as ei:
        check(r)
    got = codes(ei)
    assert got[0] == ("E304", "the adapter's delta for `model.layers.0.self_attn.q_proj.weight`"
                      " is [32, 64], but it is [64, 64] in the model it is combined with")
    assert got[1] == ("E303", "the adapter adapts 1 tensor that the model it is combined with "
                      "lacks (`model.layers.9.self_attn.q_proj.weight`)")


def test_unsupported_adapters_are_explained(tmp_path, family_f32):
    make_adapter(tmp_path / "dora", MODS, extra_cfg={"use_dora": True})
    (tmp_path / "empty").mkdir()
    r = setup(tmp_path, family_f32, 'model base = "./ckpt/base"\nadapter d = "./dora"\n'
              'adapter e = "./empty"\noutput m = base + d + e\n')
    with pytest.raises(MergecError) as ei:
        check(r)
    got = codes(ei)
    assert got == [("E419", "`./dora` is a DoRA adapter, whose update is not a low-rank delta"),
                   ("E419", "`./empty` has no adapter_config.json")]


def test_adapters_build_the_same_in_forked_workers(tmp_path, family_f32):
    """A fresh `mergec build` (NumPy backend, worker processes) of recipes with adapters
    writes the same bytes as a one-worker build in this process."""
    import subprocess
    import sys

    make_adapter(tmp_path / "l1", MODS, seed=1)
    make_adapter(tmp_path / "l2", {"model.layers.0.self_attn.q_proj": (64, 64)}, seed=2)
    r = setup(tmp_path, family_f32, 'model base = "./ckpt/base"\nadapter l1 = "./l1"\n'
              'adapter l2 = "./l2"\n'
              'output m = base + task_arithmetic(l1, l2, weight=[0.3, 0.7])\n'
              'output t = ties(base + l1, base + l2, base=base, density=0.4)\n'
              'output s = slerp(base + l1, base + 0.5 * l2, t=0.3)\n')
    build(r, tmp_path / "one", jobs=1)
    exe = Path(sys.executable).with_name("mergec")
    run = subprocess.run([str(exe), "build", "r.merge", "-o", "forked", "-q", "-j", "2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    for out in ("m", "t", "s"):
        a, b = load_tensors(tmp_path / "one" / out), load_tensors(tmp_path / "forked" / out)
        assert a.keys() == b.keys()
        for n in a:
            assert np.array_equal(a[n].view(np.uint8), b[n].view(np.uint8)), (out, n)
