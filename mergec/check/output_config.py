"""The config.json of an output, derived from the config of its `config=` input."""

from __future__ import annotations

from mergec import arch
from mergec.check.program import Output
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
    dtype = out.dtype
    if dtype is None:
        d = cfg.get("torch_dtype") or cfg.get("dtype")
        floats = [m.dtype for m in (out.expr.tensors or {}).values() if m.dtype in MERGE_DTYPES]
        dtype = d if d in MERGE_DTYPES else (floats[0] if floats else "float32")
    old = arch.layer_count(cfg, src.tensors or {})
    n = out.expr.n_layers
    derived = hf_files.derive_config(cfg, dtype=dtype,
                                     num_layers=n if n is not None and n != old else None)
    pair = arch.head_pair(out.expr.tensors or {}) if out.tie else None
    if pair is not None:  # `set heads`: the config says whether the head is tied
        derived["tie_word_embeddings"] = pair[1] not in out.expr.tensors
    return derived
