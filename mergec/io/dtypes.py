"""Canonical dtype names used across mergec and their mappings.

A canonical name is one of ``DTYPES`` (the torch spelling without ``torch.``). This
module maps them to and from safetensors codes, numpy dtypes (``bfloat16`` and the
float8 types come from ``ml_dtypes``), torch dtype names, and item sizes, and turns
what a user writes (``bf16``, ``half``, ``fp32``...) into a canonical name.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

DTYPES: tuple[str, ...] = (
    "float32", "float16", "bfloat16", "float64",
    "int64", "int32", "int16", "int8", "uint8", "bool",
    "float8_e4m3fn", "float8_e5m2",
)

#: The floating-point dtypes mergec merges: tensors of these dtypes can be combined, and an
#: output stores its floating-point tensors in one of them. float8 tensors can be read
#: (they are in ``FLOAT_DTYPES``) but are not merged.
MERGE_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16", "float64")

#: Every floating-point dtype a checkpoint can hold.
FLOAT_DTYPES: frozenset[str] = frozenset(MERGE_DTYPES) | {"float8_e4m3fn", "float8_e5m2"}

_TO_SAFETENSORS: dict[str, str] = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
_FROM_SAFETENSORS: dict[str, str] = {v: k for k, v in _TO_SAFETENSORS.items()}

_ITEMSIZE: dict[str, int] = {
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8,
    "int64": 8, "int32": 4, "int16": 2, "int8": 1, "uint8": 1, "bool": 1,
    "float8_e4m3fn": 1, "float8_e5m2": 1,
}


@cache
def _numpy_dtypes() -> dict[str, np.dtype]:
    """Canonical name -> numpy dtype, little-endian as stored in safetensors files.

    Built on first use: numpy and ml_dtypes (whose import alone takes most of a second) are
    loaded only by the commands that read or write tensor data.
    """
    import ml_dtypes
    import numpy as np

    return {
        "float32": np.dtype("<f4"), "float16": np.dtype("<f2"),
        "bfloat16": np.dtype(ml_dtypes.bfloat16), "float64": np.dtype("<f8"),
        "int64": np.dtype("<i8"), "int32": np.dtype("<i4"), "int16": np.dtype("<i2"),
        "int8": np.dtype("i1"), "uint8": np.dtype("u1"), "bool": np.dtype("bool"),
        "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
        "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
    }


_ALIASES: dict[str, str] = {
    # float32
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
    "single": "float32",
    # float16
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    # bfloat16
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    # float64
    "float64": "float64", "fp64": "float64", "f64": "float64", "double": "float64",
    # integers
    "int64": "int64", "i64": "int64", "long": "int64",
    "int32": "int32", "i32": "int32", "int": "int32",
    "int16": "int16", "i16": "int16", "short": "int16",
    "int8": "int8", "i8": "int8",
    "uint8": "uint8", "u8": "uint8", "byte": "uint8",
    "bool": "bool", "boolean": "bool",
    # float8
    "float8_e4m3fn": "float8_e4m3fn", "float8_e4m3": "float8_e4m3fn",
    "fp8_e4m3": "float8_e4m3fn", "fp8_e4m3fn": "float8_e4m3fn", "f8_e4m3": "float8_e4m3fn",
    "e4m3": "float8_e4m3fn", "fp8": "float8_e4m3fn", "float8": "float8_e4m3fn",
    "float8_e5m2": "float8_e5m2", "fp8_e5m2": "float8_e5m2", "f8_e5m2": "float8_e5m2",
    "e5m2": "float8_e5m2",
}


def is_dtype(name: str) -> bool:
    """True when ``name`` is a canonical dtype name."""
    return name in _ITEMSIZE


def _check(name: str) -> str:
    if name not in _ITEMSIZE:
        raise ValueError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
    return name


def normalize_dtype(user_text: str) -> str:
    """Turn a user's dtype spelling into a canonical name.

    Accepts canonical names and common aliases, case-insensitively: ``bf16``,
    ``fp16``/``half``, ``fp32``/``float``, ``fp64``/``double``, ``fp8``/``e4m3``,
    ``e5m2``, safetensors codes (``BF16``, ``F32``...), and a ``torch.`` prefix.
    Raises ``ValueError`` for anything else.
    """
    if not isinstance(user_text, str):
        raise ValueError(f"unknown dtype {user_text!r}")
    key = user_text.strip().lower()
    if key.startswith("torch."):
        key = key[len("torch."):]
    key = key.replace("-", "_")
    if key in _ALIASES:
        return _ALIASES[key]
    upper = user_text.strip().upper()
    if upper in _FROM_SAFETENSORS:
        return _FROM_SAFETENSORS[upper]
    raise ValueError(
        f"unknown dtype {user_text!r}; use one of {', '.join(DTYPES)} "
        "(or an alias such as bf16, fp16, half, fp32, float)")


def to_safetensors(name: str) -> str:
    """Canonical name -> safetensors dtype code (``"bfloat16"`` -> ``"BF16"``)."""
    return _TO_SAFETENSORS[_check(name)]


def from_safetensors(code: str) -> str:
    """Safetensors dtype code -> canonical name; ``ValueError`` if mergec does not handle it."""
    try:
        return _FROM_SAFETENSORS[code]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported safetensors dtype {code!r}") from None


def itemsize(name: str) -> int:
    """Bytes per element of a canonical dtype."""
    return _ITEMSIZE[_check(name)]


def numpy_dtype(name: str) -> np.dtype:
    """Canonical name -> numpy dtype (little-endian; ml_dtypes for bfloat16/float8)."""
    return _numpy_dtypes()[_check(name)]


def from_numpy(dtype) -> str:
    """numpy dtype (any byte order) -> canonical name; ``ValueError`` if unsupported."""
    import numpy as np  # loaded on first use, as in _numpy_dtypes

    table = _numpy_dtypes()
    dt = np.dtype(dtype)
    for name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        if dt == table[name]:
            return name
    if dt.kind in "fiub":
        native = dt.newbyteorder("=")
        for name, cand in table.items():
            if cand.kind == native.kind and cand.itemsize == native.itemsize \
                    and cand.kind in "fiub" and name not in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
                return name
    raise ValueError(f"unsupported numpy dtype {dt}")


def from_torch_name(name: str) -> str:
    """``str(torch_dtype)`` (``"torch.bfloat16"``) -> canonical name; ``ValueError`` otherwise."""
    key = name[len("torch."):] if name.startswith("torch.") else name
    if key in _ITEMSIZE:
        return key
    raise ValueError(f"unsupported torch dtype {name!r}")


def is_float(name: str) -> bool:
    return _check(name) in FLOAT_DTYPES
