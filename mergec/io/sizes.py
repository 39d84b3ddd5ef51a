"""Human-readable byte sizes: ``parse_size("5GB")`` and ``format_size(n)``."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from mergec.io.errors import SizeError

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    # single letters are binary
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
    # explicit decimal units
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    # explicit binary units
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)

_HELP = ("write a number with an optional unit, e.g. `4096`, `500MB`, `5GB`, `512MiB`, "
         "`1.5G` (KB/MB/GB/TB are powers of 1000; KiB/MiB/GiB/TiB and K/M/G/T are powers of 1024)")


def parse_size(text: str) -> int:
    """Parse a byte size.

    ``"4096"`` is bytes; ``KB``/``MB``/``GB``/``TB`` are decimal (1000**n);
    ``KiB``/``MiB``/``GiB``/``TiB`` and the single letters ``K``/``M``/``G``/``T`` are
    binary (1024**n); ``B`` means bytes. Units are case-insensitive and may be separated
    from the number by spaces. Fractions are allowed (``"1.5G"``) and rounded down to
    whole bytes. Raises ``SizeError`` (a ``ValueError`` and a ``CheckpointError``, E416).
    """
    if isinstance(text, bool):
        raise SizeError(f"invalid size {text!r}", _HELP)
    if isinstance(text, int):
        if text < 0:
            raise SizeError(f"invalid size {text!r}: a size cannot be negative", _HELP)
        return text
    if not isinstance(text, str):
        raise SizeError(f"invalid size {text!r}: expected text such as '5GB'", _HELP)
    m = _SIZE_RE.match(text)
    if not m:
        raise SizeError(f"invalid size {text!r}", _HELP)
    number, unit = m.group(1), m.group(2).lower()
    if unit not in _UNITS:
        raise SizeError(f"invalid size {text!r}: unknown unit {m.group(2)!r}", _HELP)
    try:
        value = Decimal(number) * _UNITS[unit]
    except InvalidOperation:  # pragma: no cover - the regex only lets decimals through
        raise SizeError(f"invalid size {text!r}", _HELP) from None
    return int(value)  # rounds toward zero


def format_size(n: int) -> str:
    """Format a byte count with binary units: ``12 B``, ``512.0 KiB``, ``1.50 GiB``.

    Values below 10 in their unit get two decimals, larger ones one decimal.
    """
    n = int(n)
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n < 1024:
        return f"{sign}{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        value /= 1024.0
        if value < 1024.0 or unit == "EiB":
            break
    if value < 10:
        return f"{sign}{value:.2f} {unit}"
    return f"{sign}{value:.1f} {unit}"
