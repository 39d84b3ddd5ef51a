"""`mergec lock` and builds against the lock: local files (a changed byte, a new file)
and hub models (the revision pinned; a moved revision detected, with the hub's metadata
mocked: the code calls huggingface_hub, the test replaces its answers)."""

from __future__ import annotations

import shutil
import types

import numpy as np
import pytest

from mergec.demo import load_tensors, make_llama
from mergec.tools import lock as lk

SIZES = dict(layers=2, hidden=32, intermediate=64, heads=4, kv_heads=2, vocab=64,
             dtype="float32")
A = "a" * 40
B = "b" * 40


@pytest.fixture()
def local(tmp_path):
    make_llama(tmp_path / "ckpt" / "base", seed=0, noise=0.0, **SIZES)
    make_llama(tmp_path / "ckpt" / "math", base=tmp_path / "ckpt" / "base", seed=1, **SIZES)
    (tmp_path / "r.merge").write_text(
        'model base = "./ckpt/base"\nmodel math = "./ckpt/math"\n\n'
        "output half = base + 0.5 * (math - base)\n")
    return tmp_path


def test_lock_file_lists_every_file_in_a_stable_order(local, run_cli):
    r = run_cli("lock", local / "r.merge")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == f"wrote {local / 'r.merge.lock'} (2 inputs, 12 files)\n"
    text = (local / "r.merge.lock").read_text()
    lock = lk.load(local / "r.merge.lock")
    assert [i.name for i in lock.inputs] == ["base", "math"]
    files = lock.inputs[1].files
    assert [f.path for f in files] == sorted(f.path for f in files)
    weights = next(f for f in files if f.path == "model.safetensors")
    path = local / "ckpt" / "math" / "model.safetensors"
    import hashlib
    assert weights.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert weights.size == path.stat().st_size and len(weights.header) == 64
    # locking again gives the same bytes
    assert run_cli("lock", local / "r.merge").exit_code == 0
    assert (local / "r.merge.lock").read_text() == text
    r = run_cli("lock", "--check", local / "r.merge")
    assert r.exit_code == 0 and r.stdout == f"{local / 'r.merge'}: every input matches " \
        "r.merge.lock\n"


def test_locked_build_stops_on_a_changed_byte(local, run_cli):
    assert run_cli("lock", local / "r.merge").exit_code == 0
    path = local / "ckpt" / "math" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of the last tensor's data: same size, same header
    path.write_bytes(data)
    r = run_cli("build", local / "r.merge", "-o", local / "out", "--locked", "-q")
    assert r.exit_code == 1
    first = r.stderr.splitlines()[0]
    assert first.startswith(f"{local / 'r.merge'}:2:14: E440 `math`: the content of "
                            "`model.safetensors` changed (sha256 ")
    assert r.stderr.rstrip().endswith("found 1 error")
    assert not (local / "out").exists()  # stopped before computing anything
    # without --locked the build compares sizes and headers only, and goes on
    r = run_cli("build", local / "r.merge", "-o", local / "out", "-q")
    assert r.exit_code == 0 and "W333" not in r.stderr


def test_build_warns_about_a_new_file_and_locked_lists_every_drift(local, run_cli):
    assert run_cli("lock", local / "r.merge").exit_code == 0
    (local / "ckpt" / "base" / "notes.txt").write_text("new")
    (local / "ckpt" / "math" / "generation_config.json").unlink()
    r = run_cli("build", local / "r.merge", "-o", local / "out", "-q")
    assert r.exit_code == 0
    assert "W333 `base`: `notes.txt` is new since the lock" in r.stderr
    assert "W333 `math`: `generation_config.json` is gone" in r.stderr
    r = run_cli("build", local / "r.merge", "-o", local / "out2", "--locked", "-q")
    assert r.exit_code == 1 and r.stderr.count("E440") == 2
    r = run_cli("build", local / "r.merge", "-o", local / "out2", "--locked", "-q")
    (local / "r.merge.lock").unlink()
    r = run_cli("build", local / "r.merge", "-o", local / "out2", "--locked", "-q")
    assert r.exit_code == 2 and "E441 no lock file" in r.stderr


# hub models ------------------------------------------------------------------------------


def _snapshot(cache, commit: str, src) -> None:
    repo = cache / "models--org--tiny"
    shutil.copytree(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """org/tiny in a Hugging Face cache at commit A; the hub mocked: `main` -> A."""
    cache = tmp_path / "hub"
    make_llama(tmp_path / "v1", seed=0, noise=0.0, **SIZES)
    make_llama(tmp_path / "v2", base=tmp_path / "v1", seed=5, **SIZES)
    make_llama(tmp_path / "ckpt" / "math", base=tmp_path / "v1", seed=1, **SIZES)
    _snapshot(cache, A, tmp_path / "v1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    import huggingface_hub

    state = {"main": A, "calls": []}

    def repo_info(self, repo_id, revision=None, timeout=None, **kw):
        state["calls"].append(("repo_info", repo_id, revision))
        return types.SimpleNamespace(sha=state["main"] if revision in (None, "main")
                                     else revision)

    def model_info(self, repo_id, revision=None, timeout=None, files_metadata=False, **kw):
        state["calls"].append(("model_info", repo_id, revision, files_metadata))
        folder = cache / "models--org--tiny" / "snapshots" / revision
        sibs = []
        for p in sorted(folder.iterdir()):
            lfs = None
            if p.suffix == ".safetensors":  # the LFS object id is the sha256 of the bytes
                lfs = types.SimpleNamespace(sha256=lk.file_sha256(p), size=p.stat().st_size)
            sibs.append(types.SimpleNamespace(rfilename=p.name, size=p.stat().st_size,
                                              blob_id="0" * 40, lfs=lfs))
        return types.SimpleNamespace(sha=revision, siblings=sibs)

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", repo_info)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    (tmp_path / "r.merge").write_text(
        'model base = "org/tiny"\nmodel math = "./ckpt/math"\n\n'
        "output half = base + 0.5 * (math - base)\n")
    return types.SimpleNamespace(root=tmp_path, cache=cache, state=state)


def test_hub_model_is_locked_from_metadata_and_pinned(hub, run_cli):
    r = run_cli("lock", hub.root / "r.merge")
    assert r.exit_code == 0, r.stderr
    lock = lk.load(hub.root / "r.merge.lock")
    base = lock.inputs[0]
    assert (base.source, base.repo, base.revision, base.commit) == \
        ("org/tiny", "org/tiny", "main", A)
    assert ("model_info", "org/tiny", A, True) in hub.state["calls"]
    weights = next(f for f in base.files if f.path == "model.safetensors")
    assert weights.sha256 == lk.file_sha256(hub.root / "v1" / "model.safetensors")
    # the revision moves on the hub and in the cache: a build keeps using the locked commit
    _snapshot(hub.cache, B, hub.root / "v2")
    hub.state["main"] = B
    r = run_cli("build", hub.root / "r.merge", "-o", hub.root / "out", "-q")
    assert r.exit_code == 0, r.stderr
    got = load_tensors(hub.root / "out" / "half")
    v1, math = load_tensors(hub.root / "v1"), load_tensors(hub.root / "ckpt" / "math")
    name = "model.layers.0.mlp.up_proj.weight"
    want = (0.5 * v1[name].astype(np.float64) + 0.5 * math[name]).astype(np.float32)
    assert np.array_equal(got[name], want)
    # --locked asks the hub where `main` points now, and stops
    r = run_cli("build", hub.root / "r.merge", "-o", hub.root / "out2", "--locked", "-q")
    assert r.exit_code == 1
    assert r.stderr.splitlines()[0] == (
        f"{hub.root / 'r.merge'}:1:14: E440 `base`: org/tiny@main has moved to commit {B}; "
        f"the lock has {A}")
    # locking again moves the lock to the new commit
    assert run_cli("lock", hub.root / "r.merge").exit_code == 0
    assert lk.load(hub.root / "r.merge.lock").inputs[0].commit == B
    r = run_cli("build", hub.root / "r.merge", "-o", hub.root / "out3", "--locked", "-q")
    assert r.exit_code == 0, r.stderr
