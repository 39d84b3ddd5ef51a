"""Reading a recipe file: its text and the name diagnostics give it."""

from __future__ import annotations

from pathlib import Path

from mergec.diagnostics import Diagnostic, UsageError


def read_recipe(path: str | Path) -> tuple[str, str]:
    """(text, name) of the recipe at ``path``; E501 when it cannot be read as UTF-8 text."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8"), str(path)
    except FileNotFoundError:
        raise UsageError(Diagnostic("E501", f"recipe file `{path}` not found")) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(Diagnostic("E501", f"cannot read recipe `{path}`: {e}")) from None
