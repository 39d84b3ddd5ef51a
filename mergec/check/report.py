"""The diagnostics of one check, collected so that every problem is reported at once."""

from __future__ import annotations

from mergec.diagnostics import Diagnostic, Label, MergecError, Span


class Reporter:
    def __init__(self) -> None:
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def error(self, code: str, message: str, span: Span | None, help: str | None = None,
              labels: tuple[Label, ...] = ()) -> None:
        self.errors.append(Diagnostic(code, message, span, help, labels))

    def add(self, diagnostic: Diagnostic) -> None:
        """An error made elsewhere (a CheckpointError's diagnostic)."""
        self.errors.append(diagnostic)

    def warn(self, code: str, message: str, span: Span | None, help: str | None = None) -> None:
        self.warnings.append(Diagnostic(code, message, span, help, severity="warning"))

    def raise_errors(self) -> None:
        """Raise every error, with the warnings, in the order of the recipe text."""
        if self.errors:
            raise MergecError(sorted(self.errors + self.warnings, key=_position))


def _position(d: Diagnostic):
    s = d.span
    return (0, s.file, s.start, s.line, s.col) if s else (1, "", 0, 0, 0)
