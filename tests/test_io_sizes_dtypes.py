import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mergec.diagnostics import Diagnostic, Span  # noqa: E402
from mergec.io import dtypes  # noqa: E402
from mergec.io.errors import IO_ERRORS, CheckpointError  # noqa: E402
from mergec.io.sizes import format_size, parse_size  # noqa: E402


@pytest.mark.parametrize("text,expected", [
    ("4096", 4096),
    ("0", 0),
    ("5GB", 5 * 10**9),
    ("5gb", 5 * 10**9),
    ("500MB", 500 * 10**6),
    ("500 MB", 500 * 10**6),
    ("2KB", 2000),
    ("1TB", 10**12),
    ("512MiB", 512 * 2**20),
    ("512mib", 512 * 2**20),
    ("1GiB", 2**30),
    ("3KiB", 3072),
    ("1.5G", int(1.5 * 2**30)),
    ("1.5g", int(1.5 * 2**30)),
    ("2M", 2 * 2**20),
    ("4k", 4096),
    ("1T", 2**40),
    ("12B", 12),
    (" 7 ", 7),
    ("0.5KB", 500),
])
def test_parse_size_table(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "5 XB", "-5GB", "5GBs", "1e9", "five", "5.5.5MB", "5 G B"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError) as ei:
        parse_size(text)
    assert repr(text) in str(ei.value)
    # it is also a CheckpointError with a registered code and a help text
    assert isinstance(ei.value, CheckpointError)
    assert ei.value.code in IO_ERRORS
    assert "5GB" in ei.value.help


@pytest.mark.parametrize("n,expected", [
    (0, "0 B"),
    (12, "12 B"),
    (1023, "1023 B"),
    (1024, "1.00 KiB"),
    (512 * 1024, "512.0 KiB"),
    (int(1.5 * 2**30), "1.50 GiB"),
    (5 * 10**9, "4.66 GiB"),
    (20 * 2**20, "20.0 MiB"),
    (3 * 2**40, "3.00 TiB"),
])
def test_format_size(n, expected):
    assert format_size(n) == expected


@pytest.mark.parametrize("text,expected", [
    ("bf16", "bfloat16"), ("BF16", "bfloat16"), ("bfloat16", "bfloat16"), ("torch.bfloat16", "bfloat16"),
    ("fp16", "float16"), ("float16", "float16"), ("half", "float16"), ("F16", "float16"),
    ("fp32", "float32"), ("float32", "float32"), ("float", "float32"), ("F32", "float32"),
    ("fp64", "float64"), ("double", "float64"),
    ("int8", "int8"), ("uint8", "uint8"), ("bool", "bool"), ("I64", "int64"),
    ("fp8", "float8_e4m3fn"), ("F8_E4M3", "float8_e4m3fn"), ("float8_e5m2", "float8_e5m2"),
    (" Bf16 ", "bfloat16"),
])
def test_normalize_dtype(text, expected):
    assert dtypes.normalize_dtype(text) == expected


@pytest.mark.parametrize("text", ["bf17", "", "float128", "complex64", "fp4"])
def test_normalize_dtype_rejects(text):
    with pytest.raises(ValueError, match="unknown dtype"):
        dtypes.normalize_dtype(text)


def test_dtype_tables_are_complete():
    assert len(dtypes.DTYPES) == 12
    for name in dtypes.DTYPES:
        code = dtypes.to_safetensors(name)
        assert dtypes.from_safetensors(code) == name
        nd = dtypes.numpy_dtype(name)
        assert nd.itemsize == dtypes.itemsize(name)
        assert dtypes.from_numpy(nd) == name
        assert dtypes.from_torch_name(f"torch.{name}") == name
    assert dtypes.to_safetensors("bfloat16") == "BF16"
    assert dtypes.to_safetensors("float8_e4m3fn") == "F8_E4M3"
    assert dtypes.numpy_dtype("bfloat16") == np.dtype(ml_dtypes.bfloat16)
    assert dtypes.from_numpy(np.dtype(">f4")) == "float32"
    with pytest.raises(ValueError):
        dtypes.from_safetensors("U16")
    with pytest.raises(ValueError):
        dtypes.from_numpy(np.complex64)


def test_error_contract():
    e = CheckpointError("E406", "no weights file in /x", "expected model.safetensors")
    assert (e.code, e.message, e.help) == ("E406", "no weights file in /x", "expected model.safetensors")
    assert str(e) == "E406 no weights file in /x"
    span = Span("r.merge", 1, 1, 1, 5)
    d = e.to_diagnostic(span)
    assert d == Diagnostic("E406", "no weights file in /x", span=span, help="expected model.safetensors")
    assert e.to_mergec_error().diagnostics[0].code == "E406"
    for code, (title, text) in IO_ERRORS.items():
        assert code.startswith("E4") and 401 <= int(code[1:]) <= 449
        assert title and len(text) > 40
