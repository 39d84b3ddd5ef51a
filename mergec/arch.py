"""Architecture facts as data: how tensor names encode transformer blocks.

Recipes address blocks by index (`x.layers[a:b]`, `where layers[a:b]`, `ramp`), and
`stack` renumbers them. Everything mergec knows about tensor naming lives here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

#: The block index of a tensor name: `model.layers.7.mlp.up_proj.weight` (Llama, Mistral,
#: Qwen, ...), `transformer.h.7.attn.c_attn.weight` (GPT-2), `encoder.layer.7.output.dense`
#: (BERT), `blocks.7.` and `block.7.` (others).
BLOCK_RE = re.compile(r"(^|\.)(layers|layer|h|blocks|block)\.(\d+)(\.|$)")

#: Config keys that hold the block count, in the order they are looked up.
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")

#: Tensors outside the blocks that sit *before* them (embeddings); every other tensor
#: outside the blocks (final norm, output head) counts as *after* them.
EMBED_RE = re.compile(r"(embed|wte|wpe|word_embeddings|position_embeddings|token_type)")

#: Tensors whose first dimension is the vocabulary.
VOCAB_RE = re.compile(r"(embed_tokens|wte|word_embeddings|lm_head|embed_out|output\.weight$)")


#: output heads a model may tie to its input embeddings, as (embedding, head): a tied
#: checkpoint stores the embedding only. The more specific names come first.
TIED_HEADS: tuple[tuple[str, str], ...] = (
    ("model.language_model.embed_tokens.weight", "lm_head.weight"),  # VLMs (LLaVA, Qwen2-VL)
    ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"),
    ("model.decoder.embed_tokens.weight", "proj_out.weight"),  # Whisper
    ("model.embed_tokens.weight", "lm_head.weight"),  # Llama, Mistral, Qwen2, Gemma, Phi-3
    ("transformer.wte.weight", "lm_head.weight"),  # GPT-2
    ("gpt_neox.embed_in.weight", "embed_out.weight"),  # GPT-NeoX, Pythia
    ("shared.weight", "lm_head.weight"),  # T5
    ("tok_embeddings.weight", "output.weight"),  # original Llama layout
)


def head_pair(names) -> tuple[str, str] | None:
    """The (embedding, head) pair of `TIED_HEADS` whose embedding the model has."""
    for emb, head in TIED_HEADS:
        if emb in names:
            return emb, head
    return None


def block_index(name: str) -> int | None:
    m = BLOCK_RE.search(name)
    return int(m.group(3)) if m else None


def with_block_index(name: str, index: int) -> str:
    m = BLOCK_RE.search(name)
    if not m:
        raise ValueError(f"{name} is not a block tensor")
    return name[: m.start(3)] + str(index) + name[m.end(3):]


def is_embedding(name: str) -> bool:
    """An input embedding (outside the blocks, not an output head such as NeoX's
    `embed_out`)."""
    return block_index(name) is None and bool(EMBED_RE.search(name)) and \
        not HEAD_RE.search(name)


def is_vocab_tensor(name: str) -> bool:
    return block_index(name) is None and bool(VOCAB_RE.search(name))


def layer_count(config: dict | None, names) -> int | None:
    """Block count from config.json (also a nested text_config), else from tensor names."""
    cfgs = [config or {}]
    if isinstance((config or {}).get("text_config"), dict):
        cfgs.append(config["text_config"])
    for cfg in cfgs:
        for key in LAYER_COUNT_KEYS:
            if isinstance(cfg.get(key), int):
                return cfg[key]
    idx = [block_index(n) for n in names]
    idx = [i for i in idx if i is not None]
    return max(idx) + 1 if idx else None


def layer_count_problem(config: dict | None, names) -> str | None:
    """What is wrong with the block count config.json declares (top level, then a nested
    text_config), or None: it must be a whole number >= 1 and, where the tensor names
    number their blocks, no more than the blocks there are (a config may count fewer: extra
    prediction blocks, a vision tower with more layers)."""
    cfgs = [config or {}]
    if isinstance((config or {}).get("text_config"), dict):
        cfgs.append(config["text_config"])
    for cfg in cfgs:
        for key in LAYER_COUNT_KEYS:
            if key not in cfg or cfg[key] is None:
                continue
            v = cfg[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                return f"`{key}` is {json.dumps(v)}, not a whole number of blocks >= 1"
            idx = [i for i in (block_index(n) for n in names) if i is not None]
            if idx and v > max(idx) + 1:
                n = max(idx) + 1
                return (f"`{key}` is {v}, but the weights have {n} block{'s' if n != 1 else ''} "
                        f"(0 to {max(idx)})")
            return None
    return None


# --------------------------------------------------------------------------- layer stacks

@dataclass(frozen=True)
class StackKind:
    """A known layer stack: the tensor-name prefix of its blocks (up to the index), the
    name a recipe addresses it by (`m.encoder.layers[0:2]`), and the config keys (dotted
    paths into config.json) that hold its block count, first found wins."""

    prefix: str
    name: str
    count_keys: tuple[str, ...]
    #: what the tensors of its tower start with (default: the prefix less its last word)
    root: str | None = None


#: The stacks of models with more than one (and of nested layouts), as data. A model with
#: one stack of another prefix has the stack `layers`, counted by LAYER_COUNT_KEYS.
STACK_KINDS: tuple[StackKind, ...] = (
    StackKind("vision_model.encoder.layers.", "vision", ("vision_config.num_hidden_layers",),
              "vision_model."),  # CLIP, SigLIP
    StackKind("text_model.encoder.layers.", "text", ("text_config.num_hidden_layers",),
              "text_model."),
    StackKind("model.encoder.layers.", "encoder", ("encoder_layers", "num_hidden_layers")),
    StackKind("model.decoder.layers.", "decoder", ("decoder_layers", "num_hidden_layers")),
    StackKind("encoder.block.", "encoder", ("num_layers",)),  # T5
    StackKind("decoder.block.", "decoder", ("num_decoder_layers", "num_layers")),  # T5
    StackKind("model.language_model.layers.", "decoder", ("text_config.num_hidden_layers",)),
    StackKind("model.visual.blocks.", "vision", ("vision_config.depth",)),  # Qwen2-VL
    StackKind("model.vision_tower.vision_model.encoder.layers.", "vision",
              ("vision_config.num_hidden_layers",), "model.vision_tower."),  # LLaVA
    StackKind("language_model.model.layers.", "decoder", ("text_config.num_hidden_layers",),
              "language_model."),  # LLaVA, as saved by transformers 5
    StackKind("vision_tower.encoder.layers.", "vision", ("vision_config.num_hidden_layers",),
              "vision_tower."),
    StackKind("model.vision_tower.encoder.layers.", "vision",
              ("vision_config.num_hidden_layers",), "model.vision_tower."),
)

#: Tensors outside the blocks that come after them although their names look like
#: embeddings: output heads (GPT-NeoX `embed_out`, Whisper `proj_out`, ...).
HEAD_RE = re.compile(r"(^|\.)(lm_head|embed_out|proj_out)\.|^output\.weight$")
#: Tensors outside the blocks that come before them besides embeddings: convolutions in
#: front of an audio encoder, a vision tower's pre-norm, patch and class embeddings.
BEFORE_RE = re.compile(r"(^shared\.|embed|wte|wpe|word_embeddings|position_embeddings|token_type|"
                       r"\.conv\d|pre_layrnorm|pre_layernorm|class_embedding|patch_)")


def stack_prefix(name: str) -> str | None:
    """The prefix of the layer stack a block tensor belongs to (`encoder.block.`), or None
    for a tensor outside the blocks."""
    m = BLOCK_RE.search(name)
    return name[: m.start(3)] if m else None


def stack_kind(prefix: str) -> StackKind | None:
    for k in STACK_KINDS:
        if k.prefix == prefix:
            return k
    return None


def stacks(names) -> dict[str, int]:
    """prefix -> number of blocks (highest index + 1) of every stack, in order."""
    out: dict[str, int] = {}
    for n in names:
        m = BLOCK_RE.search(n)
        if m:
            p = n[: m.start(3)]
            out[p] = max(out.get(p, 0), int(m.group(3)) + 1)
    return out


def stack_names(names) -> dict[str, str]:
    """name a recipe uses -> prefix, for every stack of a model: the known stacks by their
    name (`encoder`, `decoder`, `vision`, `text`); a model with one stack also answers to
    `layers`."""
    found = stacks(names)
    out: dict[str, str] = {}
    for p in found:
        k = stack_kind(p)
        out.setdefault(k.name if k else p.split(".")[0] if len(found) > 1 else "layers", p)
    if len(found) == 1:
        out["layers"] = next(iter(found))
    return out


def stack_root(prefix: str) -> str:
    """What the tensors of a stack's tower share: `vision_model.` for
    `vision_model.encoder.layers.`, `encoder.` for `encoder.block.`, `model.` for
    `model.layers.`."""
    k = stack_kind(prefix)
    if k is not None and k.root is not None:
        return k.root
    parts = prefix.rstrip(".").split(".")
    return ".".join(parts[:-1]) + "." if len(parts) > 1 else ""


def placement(name: str) -> str:
    """Where a tensor outside the blocks sits: "before" the blocks (embeddings, input
    convolutions, pre-norms) or "after" them (final norms, output heads, projections)."""
    if HEAD_RE.search(name):
        return "after"
    return "before" if BEFORE_RE.search(name) else "after"


def owner(name: str, prefixes) -> str | None:
    """The stack (prefix) a tensor outside the blocks belongs to: the one whose tower root
    is the longest start of its name, when the model has more than one stack; else None
    (the model's own tensors: shared embeddings, the output head)."""
    prefixes = list(prefixes)
    if len(prefixes) < 2:
        return None
    best = None
    for p in prefixes:
        root = stack_root(p)
        if root and name.startswith(root) and (best is None or len(root) > len(stack_root(best))):
            best = p
    return best


def config_get(config: dict | None, path: str):
    cur = config or {}
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def stack_count_key(config: dict | None, prefix: str) -> str | None:
    """The config key (dotted path) that holds the block count of a known stack."""
    k = stack_kind(prefix)
    if k is None:
        return None
    for key in k.count_keys:
        v = config_get(config, key)
        if isinstance(v, int) and not isinstance(v, bool):
            return key
    return None

