"""Non-float tensors (integer and boolean buffers such as `embeddings.position_ids`) are
never merged: an output carries the buffer over from the first input that has it. The
checker made sure every input holds one of the same dtype and shape; before anything is
written, the build checks that they hold the same bytes."""

from __future__ import annotations

from mergec.check.program import CheckedProgram
from mergec.diagnostics import Diagnostic, MergecError
from mergec.ir.lower import LoweredOutput


def _bytes(src, tensor: str) -> bytes:
    read_raw = getattr(src, "read_raw", None)
    if read_raw is not None and getattr(src, "format", "") != "bin":
        return bytes(read_raw(tensor))
    return src.read(tensor).tobytes()


def check_buffers(lo: LoweredOutput, checked: CheckedProgram) -> None:
    """Raise E311 (with every differing buffer) when the inputs of a carried-over tensor
    hold different values."""
    diags = []
    for name, leaves in lo.buffers:
        (s0, t0), rest = leaves[0], leaves[1:]
        ref = _bytes(checked.source(s0), t0)
        for s, t in rest:
            if _bytes(checked.source(s), t) != ref:
                diags.append(Diagnostic(
                    "E311", f"output `{lo.output.name}`: the non-float tensor `{name}` holds "
                    f"different values in `{s0}` and `{s}`", lo.output.span,
                    "integer and boolean buffers are carried over, not merged; give the "
                    f"inputs the same `{name}` (or merge only models that agree on it)"))
                break
    if diags:
        raise MergecError(diags)
