"""Checkpoint I/O for mergec: sources, reading input checkpoints, writing outputs.

Every problem is raised as ``CheckpointError`` (codes in ``IO_ERRORS``).
"""

from mergec.io.checkpoint import (
    Checkpoint, TensorInfo, open_checkpoint, open_input, open_remote_headers,
)
from mergec.io.dtypes import DTYPES, normalize_dtype
from mergec.io.errors import IO_ERRORS, CheckpointError
from mergec.io.hf_files import (
    TOKENIZER_FILES, derive_config, layer_count, model_card, tokenizer_files, vocab_size,
)
from mergec.io.sizes import format_size, parse_size
from mergec.io.sources import SourceRef, parse_source, resolve, resolve_metadata
from mergec.io.writer import OutputWriter, check_target, cleanup_stale_temps

__all__ = [
    "Checkpoint", "TensorInfo", "open_checkpoint", "open_input", "open_remote_headers",
    "DTYPES", "normalize_dtype",
    "IO_ERRORS", "CheckpointError",
    "TOKENIZER_FILES", "derive_config", "layer_count", "model_card", "tokenizer_files", "vocab_size",
    "format_size", "parse_size",
    "SourceRef", "parse_source", "resolve", "resolve_metadata",
    "OutputWriter", "check_target", "cleanup_stale_temps",
]
