"""The config.json of an output, derived from the config of its `config=` input."""

from __future__ import annotations

from mergec import arch
from mergec.check.program import CCall, CLinear, CStack, Output
from mergec.check.stacks import first_only, origin
from mergec.io.errors import E_CONFIG_DERIVE, CheckpointError
from mergec.io import hf_files
from mergec.io.dtypes import MERGE_DTYPES


def derive_output_config(out: Output) -> dict | None:
    """The config.json of an output: its `config=` input's, with the storage dtype and,
    when the merge changed it, the block count. Raises CheckpointError when the config
    cannot take the new block count."""
    src = out.config_from
    if src is None or src.config is None:
        return None
    cfg = src.config
    if getattr(out.form, "config", None):  # a mixture of experts: its own config
        cfg = out.form.config
    dtype = out.dtype
    if dtype is None:
        d = cfg.get("torch_dtype") or cfg.get("dtype")
        floats = [m.dtype for m in (out.expr.tensors or {}).values() if m.dtype in MERGE_DTYPES]
        dtype = d if d in MERGE_DTYPES else (floats[0] if floats else "float32")
    old = arch.layer_count(cfg, src.tensors or {})
    n = out.expr.n_layers
    st = _stack_of(out.expr)
    if st is not None:
        derived = hf_files.derive_config(cfg, dtype=dtype)
        _restack(derived, st)
    else:
        derived = hf_files.derive_config(cfg, dtype=dtype,
                                         num_layers=n if n is not None and n != old else None)
    pair = arch.head_pair(out.expr.tensors or {}) if out.tie else None
    if pair is not None:  # `set heads`: the config says whether the head is tied
        derived["tie_word_embeddings"] = pair[1] not in out.expr.tensors
    if out.vocab is not None:  # `set vocab`: the output's rows
        for holder in (derived, derived.get("text_config")):
            if isinstance(holder, dict) and "vocab_size" in holder:
                holder["vocab_size"] = out.vocab.size
    return derived


def _stack_of(e):
    """The `stack(...)` whose blocks an output has: the output itself, or the first operand
    of merges of stacks (their operands have the same tensors)."""
    while isinstance(e, (CCall, CLinear)):
        e = e.base if isinstance(e, CCall) and e.base is not None else \
            (e.inputs[0] if isinstance(e, CCall) else e.terms[0][0])
    return e if isinstance(e, CStack) and e.counts else None


def _holder(cfg: dict, prefix: str, n_stacks: int) -> tuple[dict, str] | None:
    """The dict and key of config.json that count the blocks of stack `prefix`."""
    key = arch.stack_count_key(cfg, prefix)
    if key is not None:
        *path, last = key.split(".")
        d = cfg
        for part in path:
            d = d[part]
        return d, last
    if n_stacks == 1:
        return hf_files.layer_holder(cfg)
    return None


def _restack(cfg: dict, e: CStack) -> None:
    """Set the block count of every stack of a `stack(...)` output, and rebuild the lists
    with one entry per block (`layer_types`, ...) from the blocks it took, in order."""
    by_block: dict[tuple[str, int], str] = {}
    for name in e.routes:
        p = arch.stack_prefix(name)
        if p is not None:
            by_block.setdefault((p, arch.block_index(name)), name)
    for prefix, count in e.counts.items():
        found = _holder(cfg, prefix, len(e.counts))
        if found is None:
            continue
        holder, key = found
        old = holder[key]
        holder[key] = count
        lists = [k for k in holder if isinstance(holder[k], list) and len(holder[k]) == old
                 and (k in hf_files.PER_LAYER_KEYS or k.endswith("_types"))]
        for list_key in lists:
            values = []
            for i in range(count):
                inp, name = origin(e, by_block[(prefix, i)])
                src = _holder(getattr(inp, "config", None) or {}, prefix, len(e.counts))
                entries = src[0].get(list_key) if src else None
                j = arch.block_index(name)
                if not isinstance(entries, list) or j is None or j >= len(entries):
                    raise CheckpointError(
                        E_CONFIG_DERIVE, f"cannot rebuild config.json's `{list_key}` for the "
                        f"stacked blocks: block {i} comes from a model whose config has no "
                        f"entry {j} there", "stack blocks of models with the same config layout")
                values.append(entries[j])
            holder[list_key] = values


def tensor_set_problems(out: Output, cfg: dict | None) -> list[tuple[str, str]]:
    """Where the output's tensors are not what its config.json implies: a stack whose
    block count differs from the config's, or a tensor only a stack's first block has
    (T5's relative attention bias) in another block. [] when they agree."""
    tensors = out.expr.tensors or {}
    found = arch.stacks(tensors)
    problems = []
    for prefix, count in found.items():
        holder = _holder(cfg or {}, prefix, len(found))
        declared = holder[0][holder[1]] if holder else None
        before = arch.stacks(out.config_from.tensors or {}).get(prefix) \
            if out.config_from is not None else None
        if holder is None and _stack_of(out.expr) is not None and before not in (None, count):
            problems.append((f"the stack `{prefix}N` has {count} blocks, {before} in the "
                             "model, and mergec does not know which config.json key counts "
                             "it", "keep that stack's block count, or add the stack to "
                             "STACK_KINDS in mergec/arch.py"))
        if isinstance(declared, int) and declared != count and \
                (_stack_of(out.expr) is not None or len(found) > 1):
            problems.append((f"the stack `{prefix}N` has {count} blocks but config.json "
                             f"declares {declared}",
                             "a model with several stacks needs the count of each in its "
                             "config; mergec/arch.py lists the keys it knows"))
        src = out.config_from
        if src is not None and src.tensors:
            only = first_only(src.tensors, prefix)
            wrong = sorted(n for n in tensors if arch.stack_prefix(n) == prefix
                           and arch.block_index(n) != 0 and arch.with_block_index(n, 0) in only)
            if wrong:
                problems.append((f"`{wrong[0]}` exists only in the first block of "
                                 f"`{prefix}N` in the model, but here it is in block "
                                 f"{arch.block_index(wrong[0])}",
                                 "start the stack's first run at its block 0 and take the "
                                 "other runs from later blocks (`[1:3]`)"))
    return problems

