"""Spans, diagnostics and their rendering.

This module is the one place that turns a problem into text. Every stage raises
``MergecError`` carrying one or more ``Diagnostic`` objects; the CLI renders them with
``render`` (human) or ``to_json`` (machine).

Error codes are grouped by stage:
  E1xx syntax, E2xx names/types/parameters, E3xx inputs and planning,
  E4xx I/O and backend, E5xx usage.
The registry of codes with their explanations lives in ``mergec.errors``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Span:
    """A range of source text. Lines and columns are 1-based; ``end_col`` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    start: int = 0  # character offset
    end: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Label:
    """A secondary span with a short note, shown under the main one."""

    span: Span
    message: str


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    span: Span | None = None
    help: str | None = None
    labels: tuple[Label, ...] = ()
    severity: str = "error"

    def to_dict(self) -> dict:
        def sp(s: Span | None):
            if s is None:
                return None
            return {"file": s.file, "line": s.line, "col": s.col,
                    "end_line": s.end_line, "end_col": s.end_col}

        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "span": sp(self.span),
            "help": self.help,
            "labels": [{"span": sp(l.span), "message": l.message} for l in self.labels],
        }


class MergecError(Exception):
    """Raised by any stage with the problems it found (one or many)."""

    def __init__(self, diagnostics: Diagnostic | list[Diagnostic] | tuple[Diagnostic, ...]):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        super().__init__("; ".join(f"{d.code} {d.message}" for d in self.diagnostics))


class UsageError(MergecError):
    """A problem with how mergec was called (exit code 2)."""


@dataclass
class SourceMap:
    """Source texts by file name, so spans can be shown with their line."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, file: str, text: str) -> None:
        self.texts[file] = text

    def line(self, file: str, line: int) -> str | None:
        text = self.texts.get(file)
        if text is None:
            try:
                text = Path(file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return None
            self.texts[file] = text
        lines = text.splitlines()
        if 1 <= line <= len(lines):
            return lines[line - 1]
        return None


#: characters never printed raw: C0 and C1 controls (terminal escape sequences start with
#: ESC or CSI) and the bidirectional overrides that reorder what a terminal shows. Text
#: from input files (tensor names, config values, file names) reaches messages as it is.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape(text: str, keep: str = "") -> str:
    """``text`` with every control character written as an escape (``\\x1b``,
    ``\\u202e``); tabs and line breaks are kept, and any character in ``keep``."""
    def one(m: re.Match) -> str:
        c = m.group(0)
        if c in keep:
            return c
        return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
    return _UNSAFE.sub(one, text)


def _snippet(span: Span, sources: SourceMap, note: str | None = None) -> list[str]:
    src = sources.line(span.file, span.line)
    if src is None:
        return []
    gutter = str(span.line)
    pad = " " * len(gutter)
    start = max(span.col - 1, 0)
    if span.end_line == span.line:
        width = max(span.end_col - span.col, 1)
    else:
        width = max(len(src) - start, 1)
    width = min(width, max(len(src) - start, 1))
    caret = " " * start + "^" * width
    if note:
        caret += " " + note
    return [f"{pad} |", f"{gutter} | {escape(src)}", f"{pad} | {caret}"]


def render(diag: Diagnostic, sources: SourceMap | None = None) -> str:
    """Render one diagnostic as text:

    recipe.merge:3:14: E201 unknown name `mth`
      |
    3 | output m = mth + base
      |            ^^^
      = help: did you mean `math`?
    """
    sources = sources or SourceMap()
    head = f"{diag.code} {diag.message}" if diag.severity == "error" else \
        f"{diag.severity}: {diag.code} {diag.message}"
    out = [escape(f"{diag.span}: {head}" if diag.span else f"mergec: {head}")]
    if diag.span:
        out += _snippet(diag.span, sources)
    for label in diag.labels:
        out.append(escape(f"  {label.span}: {label.message}"))
        out += _snippet(label.span, sources)
    if diag.help:
        out.append(escape(f"  = help: {diag.help}"))
    return "\n".join(out)


def render_all(diags: list[Diagnostic], sources: SourceMap | None = None) -> str:
    sources = sources or SourceMap()
    parts = [render(d, sources) for d in diags]
    n = sum(1 for d in diags if d.severity == "error")
    w = len(diags) - n
    if n:
        parts.append(f"found {n} error{'s' if n != 1 else ''}" +
                     (f" and {w} warning{'s' if w != 1 else ''}" if w else ""))
    return "\n\n".join(parts[:-1]) + ("\n\n" if len(parts) > 1 else "") + parts[-1] if parts else ""


def to_json(diags: list[Diagnostic]) -> str:
    return json.dumps({"diagnostics": [d.to_dict() for d in diags]}, indent=2)
