import sys
import json
import pathlib
import time
from pathlib import Path

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import pytest  # noqa: E402

from io_helpers import CONFIG, make_fake_hub_cache, sample_tensors  # noqa: E402
from mergec.io import sources  # noqa: E402
from mergec.io.checkpoint import open_checkpoint, open_input, open_remote_headers  # noqa: E402
from mergec.io.errors import CheckpointError  # noqa: E402
from mergec.io.sources import SourceRef, parse_source, resolve, resolve_metadata  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"
BASE = Path("/recipes/project")


@pytest.mark.parametrize("raw,path", [
    ("./model", "/recipes/project/model"),
    ("../shared/m", "/recipes/shared/m"),
    (".", "/recipes/project"),
    ("..", "/recipes"),
    ("/abs/path/m", "/abs/path/m"),
    ("./a/../b", "/recipes/project/b"),
    ("./m@v1", "/recipes/project/m@v1"),
])
def test_local_sources(raw, path):
    ref = parse_source(raw, BASE)
    assert ref == SourceRef(raw=raw, local=True, path=Path(path), repo_id=None, revision=None)
    assert ref.display() == path


def test_home_expansion(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    ref = parse_source("~/models/m", BASE)
    assert ref.local and ref.path == tmp_path / "models" / "m"


@pytest.mark.parametrize("raw,repo,rev,display", [
    ("gpt2", "gpt2", None, "gpt2"),
    ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B", None, "meta-llama/Llama-3.1-8B"),
    ("Qwen/Qwen2.5-0.5B@main", "Qwen/Qwen2.5-0.5B", "main", "Qwen/Qwen2.5-0.5B@main"),
    ("org/m_1.5@v1.0", "org/m_1.5", "v1.0", "org/m_1.5@v1.0"),
    (f"org/m@{COMMIT}", "org/m", COMMIT, f"org/m@{COMMIT}"),
    ("org/m@refs/pr/1", "org/m", "refs/pr/1", "org/m@refs/pr/1"),
    ("ckpt/a", "ckpt/a", None, "ckpt/a"),
])
def test_hub_sources(raw, repo, rev, display):
    ref = parse_source(raw, BASE)
    assert ref == SourceRef(raw=raw, local=False, path=None, repo_id=repo, revision=rev)
    assert ref.display() == display


@pytest.mark.parametrize("raw,why,path_help", [
    ("ckpt/a/b", "at most one `/`", "`./ckpt/a/b`"),
    ("ckpt\\a", "backslash", "`./ckpt/a`"),
    ("a--b/c", "`--`", None),
    ("a/b..c", "`..`", None),
    ("-abc/x", "start or end", None),
    ("org/na me", "not allowed", None),
    ("org/m@", "empty revision", None),
    ("x" * 97, "longer than 96", None),
    ("", "empty model source", None),
    ("org/", "empty name", "`./org/`"),
])
def test_invalid_sources(raw, why, path_help):
    with pytest.raises(CheckpointError) as ei:
        parse_source(raw, BASE)
    e = ei.value
    assert e.code == "E402"
    assert why in e.message
    if path_help:
        assert path_help in e.help and "local folder" in e.help
    else:
        assert e.help


def test_local_resolve(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "f").write_text("x")
    assert resolve(parse_source("./m", tmp_path)) == tmp_path / "m"
    with pytest.raises(CheckpointError) as ei:
        resolve(parse_source("./missing", tmp_path))
    assert ei.value.code == "E401" and str(tmp_path / "missing") in ei.value.message
    with pytest.raises(CheckpointError) as ei:
        resolve(parse_source("./f", tmp_path))
    assert ei.value.code == "E401" and "not a directory" in ei.value.message


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    cache = tmp_path / "hfcache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    from huggingface_hub import constants
    # huggingface_hub reads HF_HUB_OFFLINE once at import; tests set it per case
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return cache


@pytest.mark.parametrize("offline", ["0", "1"])
def test_hub_unreachable(hub_env, monkeypatch, tmp_path, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    ref = parse_source("owner/name@v2", tmp_path)
    for fn in (resolve, resolve_metadata):
        t0 = time.monotonic()
        with pytest.raises(CheckpointError) as ei:
            fn(ref)
        assert time.monotonic() - t0 < 5
        e = ei.value
        assert e.code == "E403"
        assert "`owner/name@v2`" in e.message and "not in the local cache" in e.message
        assert "hf download owner/name --revision v2" in e.help
        if offline == "1":
            assert "HF_HUB_OFFLINE" in e.message
        else:
            assert "cannot be reached" in e.message and "Connect" in e.message


def test_open_input_hub_unreachable(hub_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    (tmp_path / "owner" / "name").mkdir(parents=True)  # a local folder with the same spelling
    with pytest.raises(CheckpointError) as ei:
        open_input("owner/name", tmp_path)
    assert ei.value.code == "E403"
    assert "`owner/name@main`" in ei.value.message
    assert "write `./owner/name`" in ei.value.help


def _st_bytes(tensors):
    from safetensors.numpy import save

    return save(tensors)


def test_cache_first(hub_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # even online, a cached snapshot needs no network
    t = sample_tensors()
    snap = make_fake_hub_cache(hub_env, "owner/name", {
        "config.json": json.dumps(CONFIG).encode(),
        "tokenizer.json": b"{}",
        "model.safetensors": _st_bytes(t),
    }, commit=COMMIT)
    ref = parse_source("owner/name", tmp_path)
    assert resolve(ref) == snap
    assert resolve(ref, allow_download=False) == snap
    assert resolve_metadata(ref) == snap
    assert resolve(parse_source(f"owner/name@{COMMIT}", tmp_path)) == snap
    ck = open_input("owner/name", tmp_path)
    assert not ck.remote and ck.root == snap and ck.name == "owner/name"
    assert [p.name for p in ck.metadata_files] == ["tokenizer.json"]
    for n, a in t.items():
        assert ck.read(n).tobytes() == a.tobytes()
    # a revision that is not cached is not found, and no network is tried when offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as ei:
        resolve(parse_source("owner/name@other", tmp_path))
    assert ei.value.code == "E403" and "owner/name@other" in ei.value.message


def test_cache_has_metadata_only(hub_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = make_fake_hub_cache(hub_env, "owner/name", {"config.json": json.dumps(CONFIG).encode()},
                               commit=COMMIT)
    ref = parse_source("owner/name", tmp_path)
    assert resolve_metadata(ref) == snap
    with pytest.raises(CheckpointError) as ei:
        resolve(ref)
    assert ei.value.code == "E403" and "weights not in the local cache" in ei.value.message
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(CheckpointError) as ei:
        resolve(ref, allow_download=False)
    assert ei.value.code == "E403" and "downloads are disabled" in ei.value.message
    # opening the metadata folder tries remote headers: offline -> a clear error
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as ei:
        open_checkpoint(snap, ref)
    assert ei.value.code == "E403" and "owner/name@main" in ei.value.message


class _FakeInfo:
    def __init__(self, dtype, shape, data_offsets):
        self.dtype, self.shape, self.data_offsets = dtype, shape, tuple(data_offsets)


class _FakeFile:
    def __init__(self, header):
        self.tensors = {k: _FakeInfo(**v) for k, v in header.items() if k != "__metadata__"}


class _FakeRepoMeta:
    def __init__(self, files, weight_map, sharded):
        self.files_metadata = files
        self.weight_map = weight_map
        self.sharded = sharded


def _header_of(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])


def test_remote_headers_with_mocked_hub(hub_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    t = sample_tensors()
    st = _st_bytes(t)
    snap = make_fake_hub_cache(hub_env, "owner/name", {"config.json": json.dumps(CONFIG).encode()},
                               commit=COMMIT)
    calls = []

    def fake_get_meta(self, repo_id, *, revision=None, timeout=None, **kw):
        calls.append((repo_id, revision, timeout))
        return _FakeRepoMeta({"model.safetensors": _FakeFile(_header_of(st))},
                             {k: "model.safetensors" for k in t}, False)

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.HfApi, "get_safetensors_metadata", fake_get_meta)
    ref = parse_source("owner/name", tmp_path)
    ck = open_input("owner/name", tmp_path)  # metadata from the cache, headers from the "hub"
    assert calls == [("owner/name", COMMIT, 2.0)]
    assert ck.remote and ck.root == snap and ck.format == "safetensors"
    assert set(ck.tensors) == set(t)
    assert ck.tensors["model.layers.0.mlp.weight"].dtype == "bfloat16"
    assert all(i.offset is None for i in ck.tensors.values())
    remote_fp = ck.fingerprint()
    # same fingerprint as the local copy of the same files
    (snap / "model.safetensors").write_bytes(st)
    local = open_checkpoint(snap, ref)
    assert not local.remote and local.fingerprint() == remote_fp
    assert list(local.tensors) == list(ck.tensors)
    # reading the remote checkpoint fetches the weights (here: now in the cache) and switches
    assert ck.read("lm_head.weight").tobytes() == t["lm_head.weight"].tobytes()
    assert not ck.remote and ck.tensors["lm_head.weight"].offset is not None


def test_remote_headers_errors(hub_env, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    make_fake_hub_cache(hub_env, "owner/name", {"config.json": b"{}"}, commit=COMMIT)
    from huggingface_hub import errors as hf_errors
    import huggingface_hub

    def not_st(self, repo_id, **kw):
        raise hf_errors.NotASafetensorsRepoError("no safetensors")

    real = huggingface_hub.HfApi.get_safetensors_metadata
    monkeypatch.setattr(huggingface_hub.HfApi, "get_safetensors_metadata", not_st)
    with pytest.raises(CheckpointError) as ei:
        open_remote_headers(parse_source("owner/name", tmp_path))
    assert ei.value.code == "E406" and "owner/name@main" in ei.value.message
    # the real call against an unreachable endpoint
    monkeypatch.setattr(huggingface_hub.HfApi, "get_safetensors_metadata", real)
    with pytest.raises(CheckpointError) as ei:
        open_remote_headers(parse_source("owner/name", tmp_path))
    assert ei.value.code == "E403" and "cannot be reached" in ei.value.message


def test_hub_error_mapping(tmp_path):
    import httpx2
    from huggingface_hub import errors as hf_errors

    ref = parse_source("owner/name@dev", tmp_path)
    req = httpx2.Request("GET", "http://x")

    def resp(code):
        return httpx2.Response(code, request=req)

    cases = [
        (hf_errors.GatedRepoError("gated", response=resp(403)), "E405", "gated"),
        (hf_errors.RepositoryNotFoundError("nf", response=resp(404)), "E404", "not found"),
        (hf_errors.RevisionNotFoundError("nf", response=resp(404)), "E404", "revision `dev`"),
        (hf_errors.HfHubHTTPError("denied", response=resp(401)), "E405", "HTTP 401"),
        (hf_errors.HfHubHTTPError("down", response=resp(503)), "E403", "cannot be reached"),
        (hf_errors.OfflineModeIsEnabled("off"), "E403", "HF_HUB_OFFLINE"),
        (OSError("disk"), "E403", "OSError"),
    ]
    for exc, code, fragment in cases:
        e = sources.map_hub_error(ref, exc)
        assert e.code == code, (exc, e)
        assert fragment in e.message and "owner/name" in e.message


def test_weights_present(tmp_path):
    root = tmp_path / "m"
    root.mkdir()
    assert not sources.weights_present(root)
    (root / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "s1.safetensors"}}))
    assert not sources.weights_present(root)
    (root / "s1.safetensors").write_bytes(b"")
    assert sources.weights_present(root)


def _mock_hub(monkeypatch, remote: dict[str, bytes]) -> list:
    """Serve ``remote`` files as the hub would (downloads land in the fake cache)."""
    import fnmatch

    import huggingface_hub

    real_snapshot = huggingface_hub.snapshot_download
    downloads: list = []

    def fake_snapshot(repo_id, *, revision=None, cache_dir=None, local_files_only=False,
                      allow_patterns=None, **kw):
        if local_files_only:
            return real_snapshot(repo_id, revision=revision, cache_dir=cache_dir,
                                 local_files_only=True, allow_patterns=allow_patterns)
        assert revision == COMMIT and kw["endpoint"] == "http://127.0.0.1:9" and kw["etag_timeout"] == 2.0
        picked = {n: d for n, d in remote.items() if any(fnmatch.fnmatch(n, p) for p in allow_patterns)}
        downloads.append(sorted(picked))
        return str(make_fake_hub_cache(Path(cache_dir), repo_id, picked, commit=COMMIT))

    class _F:
        def __init__(self, path):
            self.path = path

    monkeypatch.setattr(sources, "probe_commit", lambda ref: COMMIT)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub, "get_cached_repo_tree", lambda *a, **k: [_F(n) for n in remote])
    return downloads


def test_download_path_with_mocked_hub(hub_env, monkeypatch, tmp_path):
    """Not cached, online: probe the commit, fetch metadata, then one weight format only."""
    from safetensors.numpy import save

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    t = sample_tensors()
    names = list(t)
    s1, s2 = {n: t[n] for n in names[:3]}, {n: t[n] for n in names[3:]}
    wm = {**{n: "model-00001-of-00002.safetensors" for n in s1},
          **{n: "model-00002-of-00002.safetensors" for n in s2}}
    downloads = _mock_hub(monkeypatch, {
        "config.json": json.dumps(CONFIG).encode(),
        "tokenizer.json": b"{}",
        "model.safetensors.index.json": json.dumps({"metadata": {}, "weight_map": wm}).encode(),
        "model-00001-of-00002.safetensors": save(s1),
        "model-00002-of-00002.safetensors": save(s2),
        "pytorch_model.bin": b"not used",
        "README.md": b"# remote",
    })
    ref = parse_source("owner/name", tmp_path)
    assert resolve_metadata(ref).name == COMMIT
    assert downloads == [["config.json", "model.safetensors.index.json", "tokenizer.json"]]
    downloads.clear()
    folder = resolve(ref)
    assert folder == hub_env / "models--owner--name" / "snapshots" / COMMIT
    # metadata again, then exactly the shards of the index; the .bin is never fetched
    assert downloads == [["config.json", "model.safetensors.index.json", "tokenizer.json"],
                         ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]]
    ck = open_checkpoint(folder, ref)
    assert not ck.remote and set(ck.tensors) == set(t)
    # now cached: no further downloads, even with the hub unreachable
    downloads.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve(ref) == folder and downloads == []


@pytest.mark.torch  # .bin weights are written and read with torch
def test_open_input_bin_only_hub_repo_downloads(hub_env, monkeypatch, tmp_path):
    import io

    import huggingface_hub
    import torch
    from huggingface_hub import errors as hf_errors

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4, dtype=torch.float32)}, buf)
    downloads = _mock_hub(monkeypatch, {"config.json": b"{}", "pytorch_model.bin": buf.getvalue()})

    def not_st(self, repo_id, **kw):
        raise hf_errors.NotASafetensorsRepoError("no safetensors")

    monkeypatch.setattr(huggingface_hub.HfApi, "get_safetensors_metadata", not_st)
    ck = open_input("owner/name", tmp_path)
    assert ck.format == "bin" and not ck.remote
    assert downloads[-1] == ["pytorch_model.bin"]
    assert ck.read("w").tolist() == [0.0, 1.0, 2.0, 3.0]
    with pytest.raises(CheckpointError) as ei:
        open_remote_headers(parse_source("owner/name", tmp_path))
    assert ei.value.code == "E406"


def test_url_source_is_refused_with_repo_id_help():
    with pytest.raises(CheckpointError) as ei:
        parse_source("https://huggingface.co/Qwen/Qwen2.5-0.5B/tree/main", BASE)
    assert ei.value.code == "E402" and "`Qwen/Qwen2.5-0.5B`" in ei.value.help
