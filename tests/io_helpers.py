"""Tiny synthetic checkpoints for the mergec.io tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402

CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 2,
          "vocab_size": 16, "hidden_size": 4, "torch_dtype": "float32"}


def sample_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """A small mixed-dtype state dict, in a deliberate (non-alphabetical) order."""
    rng = np.random.default_rng(seed)
    return {
        "model.embed_tokens.weight": rng.standard_normal((16, 4)).astype(np.float32),
        "model.layers.0.mlp.weight": rng.standard_normal((4, 4)).astype(ml_dtypes.bfloat16),
        "model.layers.1.mlp.weight": rng.standard_normal((4, 4)).astype(np.float16),
        "model.norm.weight": np.ones(4, dtype=np.float32),
        "lm_head.weight": rng.standard_normal((16, 4)).astype(np.float32),
        "position_ids": np.arange(8, dtype=np.int64),
    }


def write_config(root: Path, config: dict | None = None) -> None:
    (root / "config.json").write_text(json.dumps(config or CONFIG, indent=2))


def make_safetensors(root: Path, tensors: dict[str, np.ndarray] | None = None, *, config=True) -> Path:
    from safetensors.numpy import save_file

    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors if tensors is not None else sample_tensors(), str(root / "model.safetensors"))
    if config:
        write_config(root)
    return root


def make_sharded_safetensors(root: Path, shards: list[dict[str, np.ndarray]], *,
                             index_extra: dict[str, str] | None = None) -> Path:
    from safetensors.numpy import save_file

    root.mkdir(parents=True, exist_ok=True)
    n = len(shards)
    weight_map = {}
    for i, part in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        save_file(part, str(root / name))
        for k in part:
            weight_map[k] = name
    weight_map.update(index_extra or {})
    index = {"metadata": {"total_size": 0}, "weight_map": dict(sorted(weight_map.items()))}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    write_config(root)
    return root


def _to_torch(arr: np.ndarray):
    import torch

    if arr.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(arr.copy())


def make_bin(root: Path, tensors: dict[str, np.ndarray] | None = None) -> Path:
    import torch

    root.mkdir(parents=True, exist_ok=True)
    tensors = tensors if tensors is not None else sample_tensors()
    torch.save({k: _to_torch(v) for k, v in tensors.items()}, root / "pytorch_model.bin")
    write_config(root)
    return root


def make_sharded_bin(root: Path, shards: list[dict[str, np.ndarray]]) -> Path:
    import torch

    root.mkdir(parents=True, exist_ok=True)
    n = len(shards)
    weight_map = {}
    for i, part in enumerate(shards, 1):
        name = f"pytorch_model-{i:05d}-of-{n:05d}.bin"
        torch.save({k: _to_torch(v) for k, v in part.items()}, root / name)
        for k in part:
            weight_map[k] = name
    (root / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    write_config(root)
    return root


def make_fake_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], *,
                        commit: str = "0123456789abcdef0123456789abcdef01234567",
                        ref: str = "main") -> Path:
    """Lay out ``cache`` as huggingface_hub does; returns the snapshot folder."""
    owner_name = repo_id.replace("/", "--")
    repo = cache / f"models--{owner_name}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


def assert_same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert a.tobytes() == b.tobytes()
