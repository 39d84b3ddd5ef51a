"""PEFT LoRA adapters read as Deltas.

An adapter folder holds `adapter_config.json` and `adapter_model.safetensors`. Each adapted
module `M` has a pair `lora_A` [r, in] and `lora_B` [out, r]; its dense delta for the base
tensor `M.weight` is

    scale * B @ A,   scale = lora_alpha / r     (lora_alpha / sqrt(r) with use_rslora)

transposed for modules stored as [in, out] (`fan_in_fan_out`), and for embeddings
(`lora_embedding_A` [r, vocab], `lora_embedding_B` [dim, r]) the delta of the [vocab, dim]
table is (B @ A)^T * scale. Key names lose the `base_model.model.` prefix PEFT adds, so
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` adapts
`model.layers.0.self_attn.q_proj.weight`. Only headers are read when the adapter is opened;
the pairs are read one at a time when the delta is computed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from mergec.io.checkpoint import Checkpoint
from mergec.io.weight_files import parse_safetensors_header
from mergec.io.errors import E_ADAPTER, CheckpointError, load_json
from mergec.io.sources import (SourceRef, download, hub_offline, local_folder, map_hub_error,
                               not_cached, parse_source, probe_commit, snapshot_cached)

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_BASE_LAYER = ".base_layer.weight"
_KEY = re.compile(r"^(?P<module>.+?)\.(?P<kind>lora_A|lora_B|lora_embedding_A|"
                  r"lora_embedding_B)(?:\.[A-Za-z0-9_]+)?(?:\.weight)?$")


@dataclass(frozen=True)
class LoraPair:
    target: str  # the base tensor this pair adapts
    a: str  # key of lora_A (or lora_embedding_A) in the adapter file
    b: str
    scale: float
    transpose: bool
    shape: tuple[int, int]  # of the dense delta
    rank: int


class Adapter:
    """An opened adapter: its config, its pairs by target tensor, one-tensor reads."""

    def __init__(self, ref: SourceRef | None, root: Path, config: dict, ckpt: Checkpoint,
                 pairs: dict[str, LoraPair]):
        self.ref, self.root, self.adapter_config = ref, root, config
        self.config = None  # no config.json: an adapter never provides an output's config
        self.pairs = pairs
        self._ckpt = ckpt
        self.tensors = ckpt.tensors

    def read(self, name: str):
        return self._ckpt.read(name)

    def fingerprint(self) -> str:
        return self._ckpt.fingerprint()

    def content_fingerprint(self) -> str:
        return self._ckpt.content_fingerprint()

    def close(self) -> None:
        self._ckpt.close()


def _bad(message: str, help: str | None = None) -> CheckpointError:
    return CheckpointError(E_ADAPTER, message, help)


def _folder(ref: SourceRef) -> Path:
    if ref.local:
        return local_folder(ref)
    patterns = (CONFIG, WEIGHTS)
    cached = snapshot_cached(ref, patterns)
    if cached is not None and (cached / WEIGHTS).is_file():
        return cached
    if hub_offline():
        raise not_cached(ref, "offline", "adapter")
    try:
        return download(ref, probe_commit(ref), patterns)
    except CheckpointError:
        raise
    except Exception as e:  # anything from huggingface_hub or the network
        raise map_hub_error(ref, e, "adapter") from None


def _pattern_value(patterns: dict, module: str, default):
    """A per-module override from PEFT's rank_pattern/alpha_pattern, as PEFT looks it up:
    the first key (a regular expression) that matches the end of the module name after a
    dot, `(.*\\.)?(KEY)$` (the group matters for keys such as `q_proj|v_proj`)."""
    for key, value in (patterns or {}).items():
        try:
            hit = re.fullmatch(rf"(.*\.)?({key})", module) is not None
        except re.error:  # not a regular expression: a module name or suffix
            hit = module == key or module.endswith("." + key)
        if hit:
            return value
    return default


def open_adapter(raw: str, base_dir: Path) -> Adapter:
    ref = parse_source(raw, Path(base_dir))
    try:
        root = _folder(ref)
    except CheckpointError as e:
        if e.code == "E401":
            raise CheckpointError("E401", f"adapter folder {ref.path} does not exist (from "
                                  f"source `{raw}`)", "relative paths are resolved against the "
                                  "recipe file's folder; point the source at the folder that "
                                  "holds adapter_config.json and adapter_model.safetensors") \
                from None
        raise
    cfg_path = root / CONFIG
    if not cfg_path.is_file():
        raise _bad(f"`{ref.raw}` has no {CONFIG}", "an adapter folder is what PEFT's "
                   "`save_pretrained` writes: adapter_config.json + adapter_model.safetensors")
    try:
        cfg_bytes = cfg_path.read_bytes()
        cfg = load_json(cfg_bytes, cfg_path)
    except (OSError, ValueError) as e:
        raise _bad(f"cannot read {cfg_path}: {e}") from None
    ptype = str(cfg.get("peft_type", "LORA")).upper()
    if ptype != "LORA":
        raise _bad(f"`{ref.raw}` is a PEFT {ptype} adapter; only LoRA adapters can be read "
                   "as deltas", "merge it into its base with PEFT's `merge_and_unload` and "
                   "declare the result with `model`")
    if cfg.get("use_dora"):
        raise _bad(f"`{ref.raw}` is a DoRA adapter, whose update is not a low-rank delta",
                   "merge it into its base with PEFT's `merge_and_unload` and declare the "
                   "result with `model`")
    if cfg.get("lora_bias"):
        raise _bad(f"`{ref.raw}` trains a bias with each LoRA pair (`lora_bias: true`), which "
                   "is not a low-rank delta", "merge it into its base with PEFT's "
                   "`merge_and_unload` and declare the result with `model`")
    weights = root / WEIGHTS
    if not weights.is_file():
        raise _bad(f"`{ref.raw}` has no {WEIGHTS}",
                   "save the adapter with safetensors (PEFT's default)")
    infos, wf = parse_safetensors_header(weights, WEIGHTS)
    tensors = {i.name: i for i in infos}
    ckpt = Checkpoint(ref=ref, root=root, config=None, config_bytes=cfg_bytes,
                      format="safetensors", tensors=tensors, metadata_files=[], files=[wf])
    found: dict[str, dict[str, str]] = {}
    base_layers: dict[str, str] = {}  # module -> key of a saved copy of its base weight
    for key in tensors:
        if key.endswith(_BASE_LAYER):
            # PEFT saves the frozen weight of an adapted embedding with the adapter
            # (`save_embedding_layers`); it is the base's own, not part of the update
            module = key[:-len(_BASE_LAYER)]
            base_layers[module[len(_PREFIX):] if module.startswith(_PREFIX) else module] = key
            continue
        m = _KEY.match(key) if not key.endswith(".bias") else None
        if not m:
            raise _bad(f"`{ref.raw}` holds `{key}`, which is not a LoRA factor",
                       "adapters with trained biases or extra modules (modules_to_save) are "
                       "not plain low-rank deltas; merge them with PEFT instead")
        module = m.group("module")
        if module.startswith(_PREFIX):
            module = module[len(_PREFIX):]
        found.setdefault(module, {})[m.group("kind")] = key
    alpha = cfg.get("lora_alpha", 8)  # PEFT's default, whatever r is
    rslora = bool(cfg.get("use_rslora", False))
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))
    pairs: dict[str, LoraPair] = {}
    for module, kinds in sorted(found.items()):
        emb = "lora_embedding_A" in kinds or "lora_embedding_B" in kinds
        ka, kb = ("lora_embedding_A", "lora_embedding_B") if emb else ("lora_A", "lora_B")
        if ka not in kinds or kb not in kinds:
            raise _bad(f"`{ref.raw}`: module `{module}` has only one of {ka}/{kb}")
        a, b = tensors[kinds[ka]], tensors[kinds[kb]]
        if len(a.shape) != 2 or len(b.shape) != 2 or a.shape[0] != b.shape[1]:
            raise _bad(f"`{ref.raw}`: the factors of `{module}` do not multiply "
                       f"({list(b.shape)} @ {list(a.shape)})")
        r = a.shape[0]
        al = _pattern_value(cfg.get("alpha_pattern"), module, alpha)
        scale = al / math.sqrt(r) if rslora else al / r
        out, inn = b.shape[0], a.shape[1]
        transpose = emb or fan_in_fan_out
        shape = (inn, out) if transpose else (out, inn)
        pairs[module + ".weight"] = LoraPair(module + ".weight", kinds[ka], kinds[kb],
                                             float(scale), transpose, shape, r)
    for module, key in base_layers.items():
        pair = pairs.get(module + ".weight")
        if pair is None or tuple(tensors[key].shape) != pair.shape:
            raise _bad(f"`{ref.raw}` holds `{key}`, a full weight that is not the base of one "
                       "of its LoRA pairs", "merge it into its base with PEFT's "
                       "`merge_and_unload` and declare the result with `model`")
    if not pairs:
        raise _bad(f"`{ref.raw}` holds no LoRA factors")
    return Adapter(ref, root, cfg, ckpt, pairs)
