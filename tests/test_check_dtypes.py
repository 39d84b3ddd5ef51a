"""E306: tensors of a dtype mergec does not merge, named with the reason."""

from __future__ import annotations

import shutil

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mergec.api import check
from mergec.diagnostics import MergecError


@pytest.mark.parametrize("dtype,why", [
    (ml_dtypes.float8_e4m3fn, "float8 tensors are read but not merged"),
    (np.int32, "only floating-point tensors can be merged"),
])
def test_unmergeable_dtype_is_e306(family, tmp_path, dtype, why):
    odd = tmp_path / "odd"
    shutil.copytree(family["math"], odd)
    tensors = load_file(str(odd / "model.safetensors"))
    name = "model.norm.weight"
    tensors[name] = tensors[name].astype(np.float32).astype(dtype)
    save_file(tensors, str(odd / "model.safetensors"))
    text = f'model base = "{family["base"]}"\nmodel odd = "{odd}"\noutput o = linear(base, odd)\n'
    with pytest.raises(MergecError) as e:
        check("r.merge", text=text)
    (d,) = e.value.diagnostics
    canonical = {ml_dtypes.float8_e4m3fn: "float8_e4m3fn", np.int32: "int32"}[dtype]
    assert d.code == "E306"
    assert d.message == (f"`{name}` holds {canonical} values here and bfloat16 in the other "
                         f"input; {why}")
