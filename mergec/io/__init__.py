"""Checkpoint I/O for mergec: sources, reading input checkpoints, writing outputs.

Every problem is raised as ``CheckpointError`` (codes in ``IO_ERRORS``).

The names below are loaded on first use (PEP 562), so that importing one light submodule
(``mergec.io.errors``, ``mergec.io.sizes``) does not import numpy and the readers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("Checkpoint", "TensorInfo", "open_checkpoint", "open_input",
                     "open_remote_headers"), "checkpoint"),
    **dict.fromkeys(("DTYPES", "normalize_dtype"), "dtypes"),
    **dict.fromkeys(("IO_ERRORS", "CheckpointError"), "errors"),
    **dict.fromkeys(("TOKENIZER_FILES", "derive_config", "layer_count", "model_card",
                     "tokenizer_files", "vocab_size"), "hf_files"),
    **dict.fromkeys(("format_size", "parse_size"), "sizes"),
    **dict.fromkeys(("SourceRef", "parse_source", "resolve", "resolve_metadata"), "sources"),
    **dict.fromkeys(("OutputWriter", "check_target", "cleanup_stale_temps"), "writer"),
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mergec.io' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mergec.io.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ loads these
    from mergec.io.checkpoint import (Checkpoint, TensorInfo, open_checkpoint, open_input,
                                      open_remote_headers)
    from mergec.io.dtypes import DTYPES, normalize_dtype
    from mergec.io.errors import IO_ERRORS, CheckpointError
    from mergec.io.hf_files import (TOKENIZER_FILES, derive_config, layer_count, model_card,
                                    tokenizer_files, vocab_size)
    from mergec.io.sizes import format_size, parse_size
    from mergec.io.sources import SourceRef, parse_source, resolve, resolve_metadata
    from mergec.io.writer import OutputWriter, check_target, cleanup_stale_temps
