"""Reading a recipe file: its text and the name diagnostics give it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from mergec.diagnostics import Diagnostic, UsageError

#: the largest recipe file read, in bytes: far beyond any real recipe
MAX_RECIPE_BYTES = 10 * 1000**2


def read_recipe(path: str | Path) -> tuple[str, str]:
    """(text, name) of the recipe at ``path``: a regular file of UTF-8 text of at most
    MAX_RECIPE_BYTES (E501 when it cannot be read as one, E504 when it is larger). A
    device, FIFO or folder is refused before it is opened, so it can neither block nor
    fill memory."""
    p = Path(path)
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(Diagnostic(
                "E501", f"cannot read recipe `{path}`: not a regular file",
                help="a recipe is a text file; devices, pipes and folders are not read"))
        if st.st_size > MAX_RECIPE_BYTES:
            raise _too_large(path)
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since the stat
                raise UsageError(Diagnostic(
                    "E501", f"cannot read recipe `{path}`: not a regular file"))
            data = f.read(MAX_RECIPE_BYTES + 1)
        if len(data) > MAX_RECIPE_BYTES:
            raise _too_large(path)
        # as text mode reads it: universal newlines
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        return text, str(path)
    except FileNotFoundError:
        raise UsageError(Diagnostic("E501", f"recipe file `{path}` not found")) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(Diagnostic("E501", f"cannot read recipe `{path}`: {e}")) from None


def _too_large(path) -> UsageError:
    return UsageError(Diagnostic(
        "E504", f"recipe `{path}` is larger than {MAX_RECIPE_BYTES // 1000**2} MB",
        help="a recipe is a short text file; is this the right path?"))
