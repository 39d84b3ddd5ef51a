"""Synthetic tiny Llama checkpoints for demos and tests.

``python -m mergec.demo DIR`` writes a small family of Hugging Face
``LlamaForCausalLM`` checkpoints under DIR:

- ``base``: random weights (normal * 0.02, norm weights 1 + small noise);
- ``math``, ``code``, ``chat``: "fine-tunes" of base (base + noise * N(0, 1),
  each with its own seed);
- ``other_vocab``: base with a larger vocabulary (vocab + 32 rows; the shared
  rows and every other tensor equal base's exactly), for vocabulary-mismatch
  cases;
- ``deep``: base with twice the layers (layers 0..L-1 equal base's exactly, the
  rest fresh), for layer-stacking cases.

Each directory has ``config.json``, ``generation_config.json``, weights and a
small word-level tokenizer (``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``). Everything is made with numpy; torch is needed
only to write the ``pytorch_model.bin`` format.

Making a family is idempotent: a checkpoint whose stamp file records the same
arguments is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import sys
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "DTYPES",
    "FAMILY_NAMES",
    "llama_shapes",
    "load_tensors",
    "make_family",
    "make_llama",
    "main",
]

#: bumped whenever the bytes written for the same arguments change
DEMO_FORMAT = 1
STAMP = ".mergec-demo.json"
FAMILY_NAMES = ("base", "math", "code", "chat")

DTYPES: dict[str, Any] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}

_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}

# Token ids shared by every demo tokenizer and config.
UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIALS = (UNK, BOS, EOS, PAD)
BOS_ID, EOS_ID, PAD_ID = 1, 2, 3

_WORDS = (
    "the a an and or of to in on is are was be it this that with for as at by "
    "from not no yes we you they he she i model merge base math code chat "
    "layer weight tensor sum mean task vector add scale one two three four five "
    "six seven eight nine ten zero plus minus times equals number print def "
    "return if else while for x y z hello world good bad . , ! ? ( ) = + - * /"
).split()


# ---------------------------------------------------------------------------
# shapes and values


def llama_shapes(
    *,
    layers: int = 4,
    hidden: int = 64,
    intermediate: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 128,
    tie_embeddings: bool = False,
) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a ``LlamaForCausalLM`` with these sizes."""
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
    if heads % kv_heads:
        raise ValueError(f"heads ({heads}) must be a multiple of kv_heads ({kv_heads})")
    head_dim = hidden // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.q_proj.weight"] = (heads * head_dim, hidden)
        shapes[p + "self_attn.k_proj.weight"] = (kv_heads * head_dim, hidden)
        shapes[p + "self_attn.v_proj.weight"] = (kv_heads * head_dim, hidden)
        shapes[p + "self_attn.o_proj.weight"] = (hidden, heads * head_dim)
        shapes[p + "mlp.gate_proj.weight"] = (intermediate, hidden)
        shapes[p + "mlp.up_proj.weight"] = (intermediate, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, intermediate)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    if not tie_embeddings:
        shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def _is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


def _rng(seed: int, name: str) -> np.random.Generator:
    # One stream per tensor, so a tensor's values do not depend on which other
    # tensors the checkpoint has.
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def _fresh(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    x = _rng(seed, name).standard_normal(shape, dtype=np.float32)
    if _is_norm(name):
        return 1.0 + 0.01 * x
    return 0.02 * x


def _derive(name: str, shape: tuple[int, ...], base: np.ndarray, seed: int,
            noise: float) -> np.ndarray:
    """base + noise * N(0, 1) where base overlaps, fresh values elsewhere."""
    base = np.asarray(base, dtype=np.float32)
    if base.ndim != len(shape):
        return _fresh(name, shape, seed)
    out = _fresh(name, shape, seed + 7919) if base.shape != shape else None
    overlap = tuple(slice(0, min(a, b)) for a, b in zip(base.shape, shape))
    if out is None:
        out = base.copy()
    else:
        out[overlap] = base[overlap]
    if noise:
        n = _rng(seed, name).standard_normal(shape, dtype=np.float32)
        out[overlap] += noise * n[overlap]
    return out


# ---------------------------------------------------------------------------
# reading and writing weights


def _write_safetensors(path: Path, tensors: Mapping[str, np.ndarray]) -> None:
    metadata = {"format": "pt"}
    try:
        from safetensors.numpy import save_file

        save_file(dict(tensors), str(path), metadata=metadata)
        return
    except (ImportError, TypeError, ValueError):
        pass  # an old safetensors without bf16 numpy support: write by hand
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    blobs = []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        data = arr.tobytes()
        header[name] = {
            "dtype": _ST_DTYPES[str(arr.dtype)],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    back = {v: k for k, v in _ST_DTYPES.items()}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        dt = DTYPES[back[info["dtype"]]]
        out[name] = np.frombuffer(data[lo:hi], dtype=dt).reshape(info["shape"]).copy()
    return out


def load_tensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read the weights of a checkpoint directory (or one weight file) as numpy.

    Handles ``model.safetensors``, sharded safetensors with an index and
    ``pytorch_model.bin`` (the last needs torch). bf16 comes back as
    ``ml_dtypes.bfloat16``.
    """
    p = Path(path)
    if p.is_file():
        files = [p]
    elif (p / "model.safetensors").exists():
        files = [p / "model.safetensors"]
    elif (p / "model.safetensors.index.json").exists():
        index = json.loads((p / "model.safetensors.index.json").read_text())
        files = [p / f for f in sorted(set(index["weight_map"].values()))]
    elif (p / "pytorch_model.bin").exists():
        files = [p / "pytorch_model.bin"]
    else:
        raise FileNotFoundError(f"no weights found in {p}")
    out: dict[str, np.ndarray] = {}
    for f in files:
        if f.suffix == ".safetensors":
            out.update(_read_safetensors(f))
        else:
            import torch

            sd = torch.load(f, map_location="cpu", weights_only=True)
            for name, t in sd.items():
                if t.dtype == torch.bfloat16:
                    out[name] = t.float().numpy().astype(ml_dtypes.bfloat16)
                else:
                    out[name] = t.numpy()
    return out


def _shard(names: list[str], sizes: dict[str, int], n: int) -> list[list[str]]:
    total = sum(sizes.values())
    target = total / n
    shards: list[list[str]] = [[]]
    acc = 0
    for name in names:
        if acc >= target * len(shards) and len(shards) < n:
            shards.append([])
        shards[-1].append(name)
        acc += sizes[name]
    return shards


def _write_weights(d: Path, tensors: dict[str, np.ndarray], dtype: str, *,
                   sharded: bool | int, fmt: str) -> list[str]:
    if fmt == "bin":
        if sharded:
            raise ValueError("sharded=True is only supported with fmt='safetensors'")
        import torch

        tdt = {"float32": torch.float32, "float16": torch.float16,
               "bfloat16": torch.bfloat16}[dtype]
        sd = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)).to(tdt).contiguous()
              for k, v in tensors.items()}
        torch.save(sd, d / "pytorch_model.bin")
        return ["pytorch_model.bin"]
    if fmt != "safetensors":
        raise ValueError(f"unknown fmt {fmt!r} (expected 'safetensors' or 'bin')")
    cast = {k: np.asarray(v, dtype=np.float32).astype(DTYPES[dtype]) for k, v in tensors.items()}
    if not sharded:
        _write_safetensors(d / "model.safetensors", cast)
        return ["model.safetensors"]
    n = 3 if sharded is True else int(sharded)
    names = list(cast)
    sizes = {k: v.nbytes for k, v in cast.items()}
    groups = [g for g in _shard(names, sizes, n) if g]
    weight_map: dict[str, str] = {}
    files = []
    for i, group in enumerate(groups, 1):
        fname = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
        _write_safetensors(d / fname, {k: cast[k] for k in group})
        weight_map.update({k: fname for k in group})
        files.append(fname)
    index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
    (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files + ["model.safetensors.index.json"]


# ---------------------------------------------------------------------------
# config and tokenizer files


def _vocab_list(vocab: int) -> list[str]:
    """The first ``vocab`` tokens; a smaller vocabulary is a prefix of a larger one."""
    if vocab < len(SPECIALS) + 1:
        raise ValueError(f"vocab must be at least {len(SPECIALS) + 1}")
    toks = list(SPECIALS)
    for w in _WORDS:
        if len(toks) == vocab:
            break
        if w not in toks:
            toks.append(w)
    i = 0
    while len(toks) < vocab:
        toks.append(f"tok{i}")
        i += 1
    return toks


def _tokenizer_json(vocab: int) -> dict:
    toks = _vocab_list(vocab)
    special = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, t in enumerate(SPECIALS)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": special,
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": BOS, "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {BOS: {"id": BOS, "ids": [BOS_ID], "tokens": [BOS]}},
        },
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(toks)},
                  "unk_token": UNK},
    }


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _write_metadata(d: Path, *, layers: int, hidden: int, intermediate: int, heads: int,
                    kv_heads: int, vocab: int, dtype: str, tie_embeddings: bool) -> None:
    rope_theta = 10000.0
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden // heads,
        "vocab_size": vocab,
        "max_position_embeddings": 128,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "tie_word_embeddings": tie_embeddings,
        "torch_dtype": dtype,
        "dtype": dtype,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "use_cache": True,
    }
    _write_json(d / "config.json", config)
    _write_json(d / "generation_config.json", {
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "max_length": 128,
    })
    _write_json(d / "tokenizer.json", _tokenizer_json(vocab))
    _write_json(d / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "model_max_length": 128,
        "clean_up_tokenization_spaces": False,
    })
    _write_json(d / "special_tokens_map.json", {
        "bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
    })


# ---------------------------------------------------------------------------
# public API


def make_llama(
    path: str | os.PathLike,
    *,
    layers: int = 4,
    hidden: int = 64,
    intermediate: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 128,
    dtype: str = "bfloat16",
    seed: int = 0,
    base: Mapping[str, np.ndarray] | str | os.PathLike | None = None,
    noise: float = 0.02,
    tie_embeddings: bool = False,
    sharded: bool | int = False,
    fmt: str = "safetensors",
    stamp: Mapping[str, Any] | None = None,
) -> Path:
    """Write a tiny ``LlamaForCausalLM`` checkpoint directory at ``path``.

    Without ``base`` the weights are random (normal * 0.02; norm weights
    1 + 0.01 * normal) drawn with ``seed``. With ``base`` (a dict of arrays or a
    checkpoint directory) each tensor is base + noise * N(0, 1) drawn with
    ``seed``; where the requested shape is larger than base's (more vocabulary
    rows) the extra part is fresh random, and tensors base lacks (extra layers)
    are fresh random.

    ``sharded=True`` (or a shard count) writes several safetensors files and
    ``model.safetensors.index.json``; ``fmt="bin"`` writes ``pytorch_model.bin``
    (needs torch). An existing directory at ``path`` is replaced.
    Returns the path.
    """
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    path = Path(path)
    shapes = llama_shapes(layers=layers, hidden=hidden, intermediate=intermediate,
                          heads=heads, kv_heads=kv_heads, vocab=vocab,
                          tie_embeddings=tie_embeddings)
    if base is not None and not isinstance(base, Mapping):
        base = load_tensors(base)
    tensors: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if base is not None and name in base:
            tensors[name] = _derive(name, shape, base[name], seed, noise)
        else:
            tensors[name] = _fresh(name, shape, seed)

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        _write_metadata(tmp, layers=layers, hidden=hidden, intermediate=intermediate,
                        heads=heads, kv_heads=kv_heads, vocab=vocab, dtype=dtype,
                        tie_embeddings=tie_embeddings)
        _write_weights(tmp, tensors, dtype, sharded=sharded, fmt=fmt)
        if stamp is not None:
            _write_json(tmp / STAMP, dict(stamp))
        _umask_modes(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _umask_modes(d: Path) -> None:
    # mkdtemp makes a private directory; give it the modes a plain mkdir would.
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(d, 0o777 & ~mask)
    for f in d.iterdir():
        os.chmod(f, 0o666 & ~mask)


def _read_stamp(path: Path) -> dict | None:
    try:
        return json.loads((path / STAMP).read_text())
    except (OSError, ValueError):
        return None


def make_family(
    dir: str | os.PathLike,
    names: tuple[str, ...] | list[str] = FAMILY_NAMES,
    *,
    layers: int = 4,
    hidden: int = 64,
    intermediate: int | None = None,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 128,
    dtype: str = "bfloat16",
    seed: int = 0,
    noise: float = 0.02,
    tie_embeddings: bool = False,
    sharded: bool | int = False,
    fmt: str = "safetensors",
) -> dict[str, Path]:
    """Make a base checkpoint, its fine-tunes and two odd relatives under ``dir``.

    ``names[0]`` is the base (seed ``seed``); ``names[i]`` is base + noise with
    seed ``seed + i``. Also made: ``other_vocab`` (vocab + 32, otherwise equal to
    base) and ``deep`` (2 * layers; the first ``layers`` equal base's).
    ``intermediate`` defaults to 2 * hidden.

    Idempotent: a checkpoint whose stamp records the same arguments is kept.
    Returns a dict name -> path, in the order made.
    """
    if not names:
        raise ValueError("names must name at least the base checkpoint")
    names = tuple(names)
    extra = {"other_vocab", "deep"} & set(names)
    if extra:
        raise ValueError(f"names may not include {sorted(extra)}: made by the family")
    if intermediate is None:
        intermediate = 2 * hidden
    root = Path(dir)
    root.mkdir(parents=True, exist_ok=True)
    sizes = dict(layers=layers, hidden=hidden, intermediate=intermediate, heads=heads,
                 kv_heads=kv_heads, vocab=vocab, dtype=dtype,
                 tie_embeddings=tie_embeddings, sharded=sharded, fmt=fmt)
    common = {"demo_format": DEMO_FORMAT, **sizes}

    plan: list[tuple[str, dict, dict]] = []  # name, make_llama kwargs, stamp
    base_name = names[0]
    plan.append((base_name, dict(sizes, seed=seed), dict(common, seed=seed, base=None)))
    for i, name in enumerate(names[1:], 1):
        plan.append((name, dict(sizes, seed=seed + i, noise=noise),
                     dict(common, seed=seed + i, base=base_name, base_seed=seed,
                          noise=noise)))
    plan.append(("other_vocab", dict(sizes, vocab=vocab + 32, seed=seed + 100, noise=0.0),
                 dict(common, vocab=vocab + 32, seed=seed + 100, base=base_name,
                      base_seed=seed, noise=0.0)))
    plan.append(("deep", dict(sizes, layers=2 * layers, seed=seed + 200, noise=0.0),
                 dict(common, layers=2 * layers, seed=seed + 200, base=base_name,
                      base_seed=seed, noise=0.0)))

    made: dict[str, Path] = {}
    base_tensors: dict[str, np.ndarray] | None = None
    for name, kwargs, stamp in plan:
        path = root / name
        made[name] = path
        if _read_stamp(path) == stamp:
            continue
        if name != base_name:
            if base_tensors is None:
                base_tensors = load_tensors(root / base_name)
            kwargs["base"] = base_tensors
        make_llama(path, **kwargs, stamp=stamp)
    return made


def _fmt_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m mergec.demo",
        description="Write a family of tiny synthetic Llama checkpoints "
                    "(base, fine-tunes, other_vocab, deep) for mergec demos and tests.",
    )
    ap.add_argument("dir", help="directory to write the checkpoints into")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--intermediate", type=int, default=None,
                    help="MLP width (default: 2 * hidden)")
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=128)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.02,
                    help="scale of the fine-tunes' difference from base")
    ap.add_argument("--names", default=",".join(FAMILY_NAMES),
                    help="comma-separated names; the first is the base")
    ap.add_argument("--tie-embeddings", action="store_true")
    ap.add_argument("--sharded", action="store_true",
                    help="write sharded safetensors with an index")
    ap.add_argument("--format", dest="fmt", choices=("safetensors", "bin"),
                    default="safetensors")
    args = ap.parse_args(argv)
    names = tuple(n.strip() for n in args.names.split(",") if n.strip())
    try:
        made = make_family(args.dir, names, layers=args.layers, hidden=args.hidden,
                           intermediate=args.intermediate, heads=args.heads,
                           kv_heads=args.kv_heads, vocab=args.vocab, dtype=args.dtype,
                           seed=args.seed, noise=args.noise,
                           tie_embeddings=args.tie_embeddings, sharded=args.sharded,
                           fmt=args.fmt)
    except ValueError as e:
        print(f"mergec.demo: error: {e}", file=sys.stderr)
        return 2
    for name, path in made.items():
        cfg = json.loads((path / "config.json").read_text())
        size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
        print(f"{name:12s} {path}  layers={cfg['num_hidden_layers']} "
              f"hidden={cfg['hidden_size']} vocab={cfg['vocab_size']} "
              f"dtype={cfg['dtype']} ({_fmt_size(size)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
