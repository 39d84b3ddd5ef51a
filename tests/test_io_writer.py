import sys
import json
import os
import pathlib
import struct
import subprocess

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from io_helpers import assert_same, make_safetensors, sample_tensors  # noqa: E402
from mergec.io import dtypes  # noqa: E402
from mergec.io.checkpoint import open_checkpoint  # noqa: E402
from mergec.io.errors import CheckpointError  # noqa: E402
from mergec.io.writer import OutputWriter, check_target, cleanup_stale_temps  # noqa: E402


def decl(tensors):
    return [(n, a.shape, dtypes.from_numpy(a.dtype)) for n, a in tensors.items()]


def siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


def test_single_shard(tmp_path):
    t = sample_tensors()
    target = tmp_path / "out"
    w = OutputWriter(target, decl(t), metadata={"mergec_version": "0.1.0"})
    assert not target.exists()
    for n, a in t.items():
        w.write(n, a)
    assert not target.exists()  # nothing at the target before commit
    assert w.commit() == target
    assert sorted(p.name for p in target.iterdir()) == ["model.safetensors"]
    assert siblings(target) == ["out"]  # no temp folder left

    from safetensors import safe_open
    from safetensors.numpy import load_file
    loaded = load_file(str(target / "model.safetensors"))
    for n, a in t.items():
        assert_same(loaded[n], a)
    with safe_open(str(target / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt", "mergec_version": "0.1.0"}
    # header padded to a multiple of 8, tensors in declaration order
    raw = (target / "model.safetensors").read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    assert hlen % 8 == 0
    header = json.loads(raw[8:8 + hlen])
    assert [k for k in header if k != "__metadata__"] == list(t)
    ck = open_checkpoint(target)
    assert list(ck.tensors) == list(t)


@pytest.mark.parametrize("framework", ["numpy", pytest.param("torch", marks=pytest.mark.torch)])
def test_multi_shard_out_of_order(tmp_path, framework):
    rng = np.random.default_rng(1)
    t = {f"layer.{i}.w": rng.standard_normal((8, 8)).astype(np.float32) for i in range(5)}  # 256 B each
    t["bf"] = rng.standard_normal((16,)).astype(ml_dtypes.bfloat16)  # 32 B
    target = tmp_path / "out"
    with OutputWriter(target, decl(t), shard_size=600) as w:
        assert w.shard_files == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                 "model-00003-of-00003.safetensors"]
        for n in reversed(list(t)):  # any order
            w.write(n, t[n])
    names = sorted(p.name for p in target.iterdir())
    assert names == ["model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                     "model-00003-of-00003.safetensors", "model.safetensors.index.json"]
    index = json.loads((target / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": 5 * 256 + 32}
    assert index["weight_map"] == {
        "bf": "model-00003-of-00003.safetensors",
        "layer.0.w": "model-00001-of-00003.safetensors",
        "layer.1.w": "model-00001-of-00003.safetensors",
        "layer.2.w": "model-00002-of-00003.safetensors",
        "layer.3.w": "model-00002-of-00003.safetensors",
        "layer.4.w": "model-00003-of-00003.safetensors",
    }
    # every shard loads with safetensors, in numpy and in torch
    if framework == "torch":
        import torch
        from safetensors.torch import load_file

        bf16 = torch.bfloat16
        to_f32, to_numpy = (lambda v: v.float().numpy()), (lambda v: v.numpy())
    else:
        from safetensors.numpy import load_file

        bf16 = np.dtype(ml_dtypes.bfloat16)
        to_f32, to_numpy = (lambda v: v.astype(np.float32)), (lambda v: v)
    for shard in names[:3]:
        loaded = load_file(str(target / shard))
        for n, v in loaded.items():
            if n == "bf":
                assert v.dtype == bf16
                assert np.array_equal(to_f32(v), t[n].astype(np.float32))
            else:
                assert np.array_equal(to_numpy(v), t[n])
    ck = open_checkpoint(target)
    assert list(ck.tensors) == list(t)
    for n, a in t.items():
        assert_same(ck.read(n), a)


def test_tensor_bigger_than_shard_gets_own_shard(tmp_path):
    t = {"a": np.zeros(4, np.float32), "big": np.zeros(100, np.float32), "c": np.zeros(4, np.float32)}
    w = OutputWriter(tmp_path / "o", decl(t), shard_size=20)
    assert [w.shard_of(n) for n in t] == ["model-00001-of-00003.safetensors",
                                          "model-00002-of-00003.safetensors",
                                          "model-00003-of-00003.safetensors"]
    w.abort()
    assert siblings(tmp_path / "o") == []


def test_missing_write_fails_commit(tmp_path):
    t = sample_tensors()
    target = tmp_path / "out"
    w = OutputWriter(target, decl(t))
    w.write("lm_head.weight", t["lm_head.weight"])
    with pytest.raises(CheckpointError) as ei:
        w.commit()
    assert ei.value.code == "E414" and "never written" in ei.value.message
    assert "`model.embed_tokens.weight`" in ei.value.message
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_exception_in_context_aborts(tmp_path):
    t = sample_tensors()
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with OutputWriter(target, decl(t)) as w:
            w.write("lm_head.weight", t["lm_head.weight"])
            raise RuntimeError("boom")
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_write_validation(tmp_path):
    t = {"a": np.zeros((2, 3), np.float32)}
    with OutputWriter(tmp_path / "o", decl(t)) as w:
        with pytest.raises(CheckpointError, match="shape") as ei:
            w.write("a", np.zeros((3, 2), np.float32))
        assert ei.value.code == "E414"
        with pytest.raises(CheckpointError, match="declared as float32 but written as float16"):
            w.write("a", np.zeros((2, 3), np.float16))
        with pytest.raises(CheckpointError, match="not declared"):
            w.write("b", np.zeros((2, 3), np.float32))
        with pytest.raises(CheckpointError, match="needs 24 bytes"):
            w.write_raw("a", b"\0" * 8)
        w.write("a", np.asfortranarray(np.arange(6, dtype=">f4").reshape(2, 3)))  # any layout/byte order
        with pytest.raises(CheckpointError, match="written twice"):
            w.write("a", np.zeros((2, 3), np.float32))
        with pytest.raises(CheckpointError, match="written by the weights writer"):
            w.add_file("model.safetensors", b"")
        with pytest.raises(CheckpointError, match="relative"):
            w.add_file("../evil.txt", b"")
    assert_same(open_checkpoint(tmp_path / "o").read("a"), np.arange(6, dtype=np.float32).reshape(2, 3))


def test_write_raw_and_files(tmp_path):
    src = make_safetensors(tmp_path / "src")
    (src / "tokenizer.json").write_text('{"x": 1}')
    ck = open_checkpoint(src)
    target = tmp_path / "out"
    with OutputWriter(target, [(n, i.shape, i.dtype) for n, i in ck.tensors.items()]) as w:
        for n in ck.tensors:
            w.write_raw(n, ck.read_raw(n))
        w.add_file("config.json", json.dumps({"a": 1}))
        w.add_file("sub/notes.txt", "hello")
        w.copy_file("tokenizer.json", src / "tokenizer.json")
    out = open_checkpoint(target)
    assert out.config == {"a": 1}
    assert (target / "sub" / "notes.txt").read_text() == "hello"
    assert (target / "tokenizer.json").read_text() == '{"x": 1}'
    for n in ck.tensors:
        assert out.read_raw(n) == ck.read_raw(n)


def test_target_checks(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("old")
    with pytest.raises(CheckpointError) as ei:
        check_target(full, force=False)
    assert ei.value.code == "E413" and str(full) in ei.value.message and "--force" in ei.value.help
    check_target(full, force=True)
    empty = tmp_path / "empty"
    empty.mkdir()
    check_target(empty, force=False)
    check_target(tmp_path / "new" / "deeper", force=False)
    afile = tmp_path / "afile"
    afile.write_text("x")
    for force in (False, True):
        with pytest.raises(CheckpointError) as ei:
            check_target(afile, force=force)
        assert ei.value.code == "E413" and "is a file" in ei.value.message
    with pytest.raises(CheckpointError) as ei:
        check_target(afile / "sub", force=False)
    assert ei.value.code == "E415"
    # the writer refuses at construction, before creating anything
    with pytest.raises(CheckpointError):
        OutputWriter(full, [("a", (1,), "float32")])
    assert sorted(os.listdir(tmp_path)) == ["afile", "empty", "full"]


def test_force_replaces_and_empty_target_is_used(tmp_path):
    t = {"a": np.ones(3, np.float32)}
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("old")
    with OutputWriter(full, decl(t), force=True) as w:
        w.write("a", t["a"])
        assert (full / "keep.txt").exists()  # old output untouched until commit
    assert sorted(os.listdir(full)) == ["model.safetensors"]
    assert sorted(os.listdir(tmp_path)) == ["full"]  # old folder removed, no temp left
    empty = tmp_path / "empty"
    empty.mkdir()
    with OutputWriter(empty, decl(t)) as w:
        w.write("a", t["a"])
    assert os.listdir(empty) == ["model.safetensors"]


def test_stale_temp_cleanup(tmp_path):
    target = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = tmp_path / f".out.mergec-tmp-{proc.pid}-abcd1234"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"x")
    live = tmp_path / f".out.mergec-tmp-{os.getppid()}-abcd1234"
    live.mkdir()
    other = tmp_path / ".other.mergec-tmp-1-abcd"
    other.mkdir()
    assert cleanup_stale_temps(target) == [dead]
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name])
    # the constructor cleans up too
    dead.mkdir()
    w = OutputWriter(target, [("a", (1,), "float32")])
    assert not dead.exists()
    w.abort()


@pytest.mark.torch  # transformers makes and loads models with torch
def test_loads_with_transformers(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    sd = {k: v.float().numpy().astype(ml_dtypes.bfloat16) for k, v in model.state_dict().items()}
    target = tmp_path / "tiny"
    with OutputWriter(target, decl(sd), shard_size=4000) as w:
        for n, a in sd.items():
            w.write(n, a)
        w.add_file("config.json", cfg.to_json_string())
    assert (target / "model.safetensors.index.json").exists()
    loaded = LlamaForCausalLM.from_pretrained(target, dtype=torch.bfloat16)
    for k, v in loaded.state_dict().items():
        assert np.array_equal(v.float().numpy(), sd[k].astype(np.float32)), k
