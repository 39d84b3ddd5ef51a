"""Architecture facts as data: how tensor names encode transformer blocks.

Recipes address blocks by index (`x.layers[a:b]`, `where layers[a:b]`, `ramp`), and
`stack` renumbers them. Everything mergec knows about tensor naming lives here.
"""

from __future__ import annotations

import json
import re

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
    return block_index(name) is None and bool(EMBED_RE.search(name))


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
                return (f"`{key}` is {v}, but the weights have {max(idx) + 1} blocks "
                        f"(0 to {max(idx)})")
            return None
    return None
