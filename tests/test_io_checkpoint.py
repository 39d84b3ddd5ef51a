import sys
import json
import pathlib
import struct

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from io_helpers import (  # noqa: E402
    CONFIG, assert_same, make_bin, make_safetensors, make_sharded_bin, make_sharded_safetensors,
    sample_tensors, write_config,
)
from mergec.io import weight_files as wfmod  # noqa: E402
from mergec.io.checkpoint import open_checkpoint, open_input  # noqa: E402
from mergec.io.errors import CheckpointError  # noqa: E402


def _no_reads(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("tensor data was read")
    monkeypatch.setattr(wfmod, "read_span", boom)


def test_single_safetensors_reads_values_and_order(tmp_path):
    tensors = sample_tensors()
    root = make_safetensors(tmp_path / "m", tensors)
    ck = open_checkpoint(root)
    assert ck.format == "safetensors"
    assert ck.config == CONFIG
    # safetensors.numpy sorts the data by dtype alignment then name; our order is the on-disk one
    offsets = [t.offset for t in ck.tensors.values()]
    assert offsets == sorted(offsets)
    assert set(ck.tensors) == set(tensors)
    info = ck.tensors["model.layers.0.mlp.weight"]
    assert info.dtype == "bfloat16" and info.shape == (4, 4) and info.nbytes == 32
    assert info.file == root / "model.safetensors"
    assert ck.tensors["position_ids"].dtype == "int64"
    for name, arr in tensors.items():
        got = ck.read(name)
        assert_same(got, arr)
        got[...] = 0  # the result is the caller's own writable copy
    assert_same(ck.read("model.norm.weight"), tensors["model.norm.weight"])
    # the bf16 array is an ml_dtypes array with the exact values
    bf = ck.read("model.layers.0.mlp.weight")
    assert bf.dtype == ml_dtypes.bfloat16
    assert np.array_equal(bf.astype(np.float32), tensors["model.layers.0.mlp.weight"].astype(np.float32))
    raw = ck.read_raw("model.layers.0.mlp.weight")
    assert raw == tensors["model.layers.0.mlp.weight"].tobytes()
    ck.close()


def test_on_disk_order_follows_offsets(tmp_path):
    # hand-written header with tensors listed in a different order than their data
    a = np.arange(4, dtype=np.float32)
    b = np.arange(2, dtype=np.float32) + 10
    header = {"b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]},
              "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "__metadata__": {"format": "pt"}}
    hb = json.dumps(header).encode()
    root = tmp_path / "m"
    root.mkdir()
    (root / "model.safetensors").write_bytes(struct.pack("<Q", len(hb)) + hb + a.tobytes() + b.tobytes())
    ck = open_checkpoint(root)
    assert list(ck.tensors) == ["a", "b"]
    assert ck.config is None
    assert_same(ck.read("b"), b)


def test_sharded_safetensors(tmp_path):
    t = sample_tensors()
    names = list(t)
    shards = [{n: t[n] for n in names[:3]}, {n: t[n] for n in names[3:]}]
    root = make_sharded_safetensors(tmp_path / "m", shards)
    ck = open_checkpoint(root)
    assert ck.format == "safetensors"
    files = [i.file.name for i in ck.tensors.values()]
    assert files == sorted(files)  # shard 1 first, then shard 2
    assert set(ck.tensors) == set(t)
    assert [n for n in ck.tensors if ck.tensors[n].file.name.startswith("model-00001")] == \
        [n for n in ck.tensors if n in shards[0]]
    for n, arr in t.items():
        assert_same(ck.read(n), arr)


def test_index_lists_missing_tensor(tmp_path):
    t = sample_tensors()
    root = make_sharded_safetensors(tmp_path / "m", [t], index_extra={"ghost.weight": "model-00001-of-00001.safetensors"})
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(root)
    e = ei.value
    assert e.code == "E409"
    assert "`ghost.weight`" in e.message and "model-00001-of-00001.safetensors" in e.message
    assert "download" in e.help


def test_index_names_missing_shard(tmp_path):
    t = sample_tensors()
    root = make_sharded_safetensors(tmp_path / "m", [t], index_extra={"x": "model-00002-of-00002.safetensors"})
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(root)
    assert ei.value.code == "E409" and "model-00002-of-00002.safetensors" in ei.value.message


def test_truncated_file(tmp_path):
    root = make_safetensors(tmp_path / "m")
    f = root / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-10])
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(root)
    e = ei.value
    assert e.code == "E408"
    assert str(f) in e.message and "truncated" in e.message
    assert "download it again" in e.help


def test_truncated_inside_header(tmp_path):
    root = make_safetensors(tmp_path / "m")
    f = root / "model.safetensors"
    f.write_bytes(f.read_bytes()[:20])
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(root)
    assert ei.value.code == "E408" and str(f) in ei.value.message


@pytest.mark.parametrize("payload,fragment", [
    (struct.pack("<Q", 10**12) + b"{}", "impossible header length"),
    (struct.pack("<Q", 8) + b"{not js}", "not valid JSON"),
    (struct.pack("<Q", 8) + b"[1,2,3] ", "not a JSON object"),
])
def test_corrupt_header(tmp_path, payload, fragment):
    root = tmp_path / "m"
    root.mkdir()
    (root / "model.safetensors").write_bytes(payload + b"\0" * 64)
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(root)
    assert ei.value.code == "E407"
    assert fragment in ei.value.message and "model.safetensors" in ei.value.message


def _write_header(path, header, data_len):
    hb = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + b"\0" * data_len)


def test_bad_entries(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    f = root / "model.safetensors"
    _write_header(f, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, 16)
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(root)
    assert ei.value.code == "E407" and "`a`" in ei.value.message
    _write_header(f, {"a": {"dtype": "C64", "shape": [2], "data_offsets": [0, 16]}}, 16)
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(root)
    assert ei.value.code == "E417" and "C64" in ei.value.message
    _write_header(f, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 16)
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(root)
    assert ei.value.code == "E407" and "overlap" in ei.value.message


LAYOUTS = {
    "safetensors": lambda root, t: make_safetensors(root, t),
    "sharded": lambda root, t: make_sharded_safetensors(
        root, [dict(list(t.items())[:2]), dict(list(t.items())[2:])]),
    "bin": lambda root, t: make_bin(root, t),  # written and read with torch
}


@pytest.mark.parametrize("layout", ["safetensors", "sharded",
                                    pytest.param("bin", marks=pytest.mark.torch)])
def test_open_reads_no_tensor_data(tmp_path, monkeypatch, layout):
    t = sample_tensors()
    root = LAYOUTS[layout](tmp_path / "m", t)
    _no_reads(monkeypatch)
    ck = open_checkpoint(root)
    assert len(ck.tensors) == len(t)
    fp = ck.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    # reading goes through the patched function (wrapped as a CheckpointError)
    with pytest.raises(CheckpointError, match="tensor data was read"):
        ck.read("model.norm.weight")


def test_fingerprint_stable_and_sensitive(tmp_path):
    t = sample_tensors()
    a = open_checkpoint(make_safetensors(tmp_path / "a", t)).fingerprint()
    b = open_checkpoint(make_safetensors(tmp_path / "b", t)).fingerprint()
    assert a == b
    t2 = dict(t)
    t2["extra"] = np.zeros(3, dtype=np.float32)
    c = open_checkpoint(make_safetensors(tmp_path / "c", t2)).fingerprint()
    assert c != a
    (tmp_path / "b" / "config.json").write_text(json.dumps({**CONFIG, "vocab_size": 17}))
    assert open_checkpoint(tmp_path / "b").fingerprint() != a


@pytest.mark.torch
def test_bin_single_and_sharded(tmp_path):
    t = sample_tensors()
    ck = open_checkpoint(make_bin(tmp_path / "a", t))
    assert ck.format == "bin"
    assert list(ck.tensors) == list(t)  # state-dict order
    assert ck.tensors["model.layers.0.mlp.weight"].dtype == "bfloat16"
    assert ck.tensors["model.layers.0.mlp.weight"].offset is None
    for n, arr in t.items():
        assert_same(ck.read(n), arr)
    with pytest.raises(CheckpointError) as ei:
        ck.read_raw("model.norm.weight")
    assert ei.value.code == "E412"
    ck.close()

    names = list(t)
    ck = open_checkpoint(make_sharded_bin(tmp_path / "b", [{n: t[n] for n in names[:2]},
                                                           {n: t[n] for n in names[2:]}]))
    assert list(ck.tensors) == names
    for n, arr in t.items():
        assert_same(ck.read(n), arr)


@pytest.mark.torch
def test_bin_non_contiguous_and_scalar(tmp_path):
    import torch

    root = tmp_path / "m"
    root.mkdir()
    base = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    torch.save({"t": base.t(), "s": torch.tensor(2.5), "e": torch.zeros(0, 3)}, root / "pytorch_model.bin")
    ck = open_checkpoint(root)
    assert_same(ck.read("t"), base.t().contiguous().numpy())
    assert ck.read("s").shape == () and float(ck.read("s")) == 2.5
    assert ck.read("e").shape == (0, 3)


@pytest.mark.torch
def test_truncated_bin(tmp_path):
    root = make_bin(tmp_path / "m")
    f = root / "pytorch_model.bin"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(root)
    assert ei.value.code == "E410" and str(f) in ei.value.message
    assert "download it again" in ei.value.help


def _garbage_bin(root, t):
    """A pytorch_model.bin that is not one (never loaded), and a config."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytorch_model.bin").write_bytes(b"not a torch file")
    write_config(root)
    return root


@pytest.mark.parametrize("bin_maker", [
    pytest.param(make_bin, id="torch-bin", marks=pytest.mark.torch),
    pytest.param(_garbage_bin, id="garbage-bin"),
])
def test_prefers_safetensors_over_bin(tmp_path, monkeypatch, bin_maker):
    t = sample_tensors()
    root = bin_maker(tmp_path / "m", t)
    make_safetensors(root, t)
    monkeypatch.setattr(wfmod, "load_bin", lambda p: (_ for _ in ()).throw(AssertionError("bin loaded")))
    assert open_checkpoint(root).format == "safetensors"


def test_bin_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    """Reading .bin weights needs torch: without it, opening one is an E410 that says so
    (not an ImportError), whatever the file holds."""
    root = _garbage_bin(tmp_path / "m", None)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, as without it
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(root)
    e = ei.value
    assert e.code == "E410"
    assert "PyTorch is needed" in e.message and "torch" in e.help and "safetensors" in e.help


def test_no_weights_and_adapter_hint(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    (root / "config.json").write_text("{}")
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(root)
    e = ei.value
    assert e.code == "E406" and str(root) in e.message
    assert "model.safetensors" in e.help and "pytorch_model.bin" in e.help
    (root / "adapter_config.json").write_text("{}")
    (root / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(root)
    assert ei.value.code == "E406"
    assert "LoRA adapter" in ei.value.message and "`adapter`" in ei.value.help


def test_missing_folder_and_bad_config(tmp_path):
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(tmp_path / "nope")
    assert ei.value.code == "E401" and "nope" in ei.value.message
    root = make_safetensors(tmp_path / "m")
    (root / "config.json").write_text("{bad")
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(root)
    assert ei.value.code == "E411" and "config.json" in ei.value.message


def test_metadata_files_and_unknown_tensor(tmp_path):
    root = make_safetensors(tmp_path / "m")
    for name in ("tokenizer.json", "generation_config.json", "README.md"):
        (root / name).write_text("{}")
    (root / "training_args.bin").write_bytes(b"x")
    ck = open_checkpoint(root)
    assert [p.name for p in ck.metadata_files] == ["README.md", "generation_config.json", "tokenizer.json"]
    with pytest.raises(CheckpointError) as ei:
        ck.read("model.norm.weigth")
    assert ei.value.code == "E412" and "model.norm.weight" in ei.value.help


def test_file_shrinks_after_open(tmp_path):
    root = make_safetensors(tmp_path / "m")
    ck = open_checkpoint(root)
    last = list(ck.tensors)[-1]
    f = root / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-4])
    with pytest.raises(CheckpointError) as ei:
        ck.read(last)
    assert ei.value.code == "E408"


def test_open_input_local(tmp_path):
    make_safetensors(tmp_path / "models" / "a")
    ck = open_input("./models/a", tmp_path)
    assert ck.ref.local and ck.root == tmp_path / "models" / "a"
    assert ck.name == str(tmp_path / "models" / "a")
    with pytest.raises(CheckpointError) as ei:
        open_input("./models/b", tmp_path)
    assert ei.value.code == "E401" and str(tmp_path / "models" / "b") in ei.value.message


def test_advise_asks_the_system_to_read_ahead_exactly_one_tensor(tmp_path, monkeypatch):
    """advise() is a read-ahead hint for one tensor's bytes: no data is read by mergec, the
    hint covers exactly the tensor's span, and unknown tensors or .bin files are no-ops."""
    import os

    if not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise here")
    calls = []
    monkeypatch.setattr(os, "posix_fadvise",
                        lambda fd, off, n, advice: calls.append((off, n, advice)))
    _no_reads(monkeypatch)
    ck = open_checkpoint(make_safetensors(tmp_path / "m", sample_tensors()))
    info = ck.tensors["model.layers.0.mlp.weight"]
    ck.advise("model.layers.0.mlp.weight")
    ck.advise("no.such.tensor")
    assert calls == [(info.offset, info.nbytes, os.POSIX_FADV_WILLNEED)]
    ck.close()
    ck.advise("model.layers.0.mlp.weight")  # closed: nothing
    assert len(calls) == 1
