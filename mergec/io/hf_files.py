"""Hugging Face side files: tokenizer files, config.json derivation, the model card."""

from __future__ import annotations

import copy
import re
from pathlib import Path

from mergec.arch import LAYER_COUNT_KEYS
from mergec.io import dtypes
from mergec.io.errors import E_CONFIG_DERIVE, CheckpointError

TOKENIZER_FILES: tuple[str, ...] = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "spiece.model",
    "vocab.txt",
)
GENERATION_CONFIG_FILE = "generation_config.json"

VOCAB_SIZE_KEYS: tuple[str, ...] = ("vocab_size", "n_vocab")
# Lists with one entry per layer, rebuilt when the layer count changes.
PER_LAYER_KEYS: tuple[str, ...] = ("layer_types", "no_rope_layers", "block_types", "layers_block_type")
_NESTED_CONFIGS: tuple[str, ...] = ("text_config",)


def tokenizer_files(root: Path) -> list[Path]:
    """The tokenizer files present in ``root``, in ``TOKENIZER_FILES`` order."""
    root = Path(root)
    out = []
    for name in TOKENIZER_FILES:
        p = root / name
        try:
            if p.is_file():
                out.append(p)
        except OSError:
            continue
    return out


def carry_over_files(root: Path) -> list[Path]:
    """Tokenizer files plus ``generation_config.json``: what an output copies from its base."""
    out = tokenizer_files(root)
    p = Path(root) / GENERATION_CONFIG_FILE
    try:
        if p.is_file():
            out.append(p)
    except OSError:
        pass
    return out


#: files beside the weights that change how a model is used, carried from one input (the
#: output's `files =`): generation defaults, chat templates kept apart from the tokenizer,
#: image/audio/video processors, and sentence-transformers' own files
AUX_FILES: tuple[str, ...] = (
    GENERATION_CONFIG_FILE,
    "chat_template.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "modules.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
)
ST_MODULES_FILE = "modules.json"
_MAX_MODULE_FILES = 64


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except OSError:
        return False


def st_modules(root: Path) -> list[dict]:
    """The module entries of a sentence-transformers `modules.json` ([] when there is none
    or it cannot be read): dicts with `path` and `type`."""
    import json

    p = Path(root) / ST_MODULES_FILE
    if not _is_file(p):
        return []
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, list):
        return []
    return [m for m in data if isinstance(m, dict) and isinstance(m.get("path", ""), str)]


def _module_folder(root: Path, rel: str) -> list[tuple[str, Path]]:
    """The files of one sentence-transformers module folder (not the root), relative names."""
    parts = [x for x in rel.replace("\\", "/").split("/") if x not in ("", ".")]
    if not parts or ".." in parts:
        return []
    folder = Path(root).joinpath(*parts)
    out = []
    try:
        files = sorted(p for p in folder.rglob("*") if p.is_file())
    except OSError:
        return []
    for p in files[:_MAX_MODULE_FILES]:
        out.append((p.relative_to(root).as_posix(), p))
    return out


def aux_files(root: Path) -> list[tuple[str, Path]]:
    """The auxiliary files of a model folder, as (name in the output, path): `AUX_FILES`
    present, then every file of each sentence-transformers module folder that
    `modules.json` lists (pooling, normalize, dense layers...), in order."""
    root = Path(root)
    out = [(name, root / name) for name in AUX_FILES if _is_file(root / name)]
    seen = {n for n, _ in out}
    for m in st_modules(root):
        for name, p in _module_folder(root, m.get("path", "")):
            if name not in seen:
                seen.add(name)
                out.append((name, p))
    return out


def st_behaviour(root: Path) -> dict[str, str]:
    """What a sentence-transformers folder does after the transformer, by what matters for
    the embeddings: the module types in order, and each module's config (pooling mode,
    dense sizes...). {} when the folder has no `modules.json`."""
    import json

    root = Path(root)
    out = {}
    for m in st_modules(root):
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        path = m.get("path", "")
        cfg = ""
        if path:
            p = root / path / "config.json"
            if _is_file(p):
                try:
                    cfg = json.dumps(json.loads(p.read_text(encoding="utf-8")), sort_keys=True)
                except (OSError, ValueError):
                    cfg = "<unreadable>"
        out[f"{m.get('idx', len(out))}:{kind}"] = cfg
    return out


def _layer_holder(config: dict) -> tuple[dict, str] | None:
    for key in LAYER_COUNT_KEYS:
        if isinstance(config.get(key), int) and not isinstance(config.get(key), bool):
            return config, key
    for nested in _NESTED_CONFIGS:
        sub = config.get(nested)
        if isinstance(sub, dict):
            found = _layer_holder(sub)
            if found:
                return found
    return None


def layer_holder(config: dict) -> tuple[dict, str] | None:
    """The dict of `config` (itself or a nested `text_config`) and the key that hold its
    layer count, or None."""
    return _layer_holder(config)


def layer_count(config: dict | None) -> int | None:
    """Number of transformer layers the config declares (top level, then ``text_config``)."""
    if not isinstance(config, dict):
        return None
    found = _layer_holder(config)
    return found[0][found[1]] if found else None


def vocab_size(config: dict | None) -> int | None:
    """Vocabulary size the config declares (top level, then ``text_config``)."""
    if not isinstance(config, dict):
        return None
    for key in VOCAB_SIZE_KEYS:
        v = config.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    for nested in _NESTED_CONFIGS:
        sub = config.get(nested)
        if isinstance(sub, dict):
            v = vocab_size(sub)
            if v is not None:
                return v
    return None


def _set_dtype(cfg: dict, dtype: str, top: bool) -> None:
    if top or "dtype" in cfg or "torch_dtype" in cfg:
        cfg["dtype"] = dtype
    if "torch_dtype" in cfg:
        cfg["torch_dtype"] = dtype
    for value in cfg.values():
        if isinstance(value, dict) and ("dtype" in value or "torch_dtype" in value):
            _set_dtype(value, dtype, False)


def derive_config(config: dict, *, dtype: str, num_layers: int | None = None) -> dict:
    """A copy of ``config`` for an output stored in ``dtype`` with ``num_layers`` layers.

    Sets ``"dtype"`` (what transformers >= 5 writes) and also ``"torch_dtype"`` when the
    config had it (nested sub-configs that carry a dtype key are updated too). With
    ``num_layers``, sets the layer-count key the config uses (``num_hidden_layers``,
    ``n_layer``, ``num_layers``, ``n_layers``; inside ``text_config`` when that is where
    it lives) and rebuilds per-layer lists (``PER_LAYER_KEYS`` and other ``*_types``
    lists of the old length) when all their entries are equal; otherwise raises E418.
    """
    try:
        canonical = dtypes.normalize_dtype(dtype)
    except ValueError as e:
        raise CheckpointError(E_CONFIG_DERIVE, f"cannot set the output dtype in config.json: {e}") from None
    out = copy.deepcopy(config)
    _set_dtype(out, canonical, True)
    if num_layers is None:
        return out
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers <= 0:
        raise CheckpointError(E_CONFIG_DERIVE, f"invalid layer count {num_layers!r} for config.json")
    found = _layer_holder(out)
    if found is None:
        raise CheckpointError(
            E_CONFIG_DERIVE, "config.json has no layer-count key "
                             f"({', '.join(LAYER_COUNT_KEYS)}), so the output's layer count cannot be set",
            "use a model whose config declares its layer count")
    holder, key = found
    old = holder[key]
    holder[key] = num_layers
    if old == num_layers:
        return out
    per_layer = list(PER_LAYER_KEYS) + [k for k in holder if k.endswith("_types") and k not in PER_LAYER_KEYS]
    for list_key in per_layer:
        values = holder.get(list_key)
        if not isinstance(values, list) or len(values) != old:
            continue
        if not values or all(v == values[0] for v in values):
            holder[list_key] = [copy.deepcopy(values[0]) for _ in range(num_layers)] if values else []
            continue
        distinct = []
        for v in values:
            if v not in distinct:
                distinct.append(v)
        shown = ", ".join(repr(v) for v in distinct[:3])
        raise CheckpointError(
            E_CONFIG_DERIVE,
            f"cannot change the layer count from {old} to {num_layers}: config.json's `{list_key}` "
            f"has different entries per layer ({shown})",
            f"mergec cannot tell which `{list_key}` entries the new layers should take; "
            f"make `stack(...)` the output (or the first operand of its merge): it rebuilds "
            f"`{list_key}` from the blocks it takes")
    return out


# --------------------------------------------------------------------------- model card

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?$")


def _hub_id(source: str) -> str | None:
    text = source.strip()
    if text.startswith(("./", "../", "/", "~")) or text in (".", ".."):
        return None
    repo = text.split("@", 1)[0]
    if _HUB_ID.match(repo) and "--" not in repo and ".." not in repo and len(repo) <= 96:
        return repo
    return None


def _cell(text) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _yaml_str(text: str) -> str:
    if re.match(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$", text) and text.lower() not in {"yes", "no", "true", "false",
                                                                                      "null", "on", "off"}:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def model_card(*, output_name: str, recipe_text: str, recipe_path: str, inputs: list[dict],
               mergec_version: str, seed: int | None, base_models: list[str],
               params: dict | None = None, overridden: tuple[str, ...] = (),
               notes: dict[str, str] | None = None) -> str:
    """README.md for an output: YAML front matter, description, inputs, seed and recipe.

    ``base_model`` in the front matter lists only hub ids (local paths are left out;
    ``@revision`` suffixes are dropped, duplicates removed). ``inputs`` are dicts with
    ``name``, ``source`` and ``fingerprint``. ``notes`` replace the note of a param in
    the parameters table (the point of a sweep).
    """
    hub_ids: list[str] = []
    for b in base_models:
        rid = _hub_id(str(b))
        if rid and rid not in hub_ids:
            hub_ids.append(rid)
    lines = ["---", "library_name: transformers", "tags:", "- mergec", "- merge"]
    if hub_ids:
        lines.append("base_model:")
        lines += [f"- {_yaml_str(r)}" for r in hub_ids]
    lines += ["---", "", f"# {output_name}", ""]
    n = len(inputs)
    lines.append(f"This model was produced by merging {n} input model{'s' if n != 1 else ''} with "
                 f"mergec {mergec_version}, following the recipe `{recipe_path}` shown below.")
    lines.append("")
    lines += ["## Inputs", "", "| name | source | fingerprint |", "| --- | --- | --- |"]
    for item in inputs:
        lines.append(f"| {_cell(item.get('name', ''))} | {_cell(item.get('source', ''))} | "
                     f"`{_cell(item.get('fingerprint', ''))}` |")
    lines.append("")
    if seed is not None:
        lines += [f"Random seed: `{seed}`", ""]
    if params:
        lines += ["## Parameters", "", "| param | value | |", "| --- | --- | --- |"]
        for k, v in params.items():
            val = ("true" if v else "false") if isinstance(v, bool) else \
                (f'"{v}"' if isinstance(v, str) else repr(v))
            note = "set on the command line (`--set`)" if k in overridden else "recipe default"
            note = (notes or {}).get(k, note)
            lines.append(f"| {_cell(k)} | `{_cell(val)}` | {note} |")
        lines.append("")
    fence = "```"
    while fence in recipe_text:
        fence += "`"
    lines += ["## Recipe", "", f"{fence}merge", recipe_text.rstrip("\n"), fence, ""]
    return "\n".join(lines)
