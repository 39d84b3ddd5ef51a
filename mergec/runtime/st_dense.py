"""sentence-transformers `Dense` modules merged like the transformer: the output's
expression, over the inputs' dense modules (`mergec.check.aux_files.dense_modules`), is
lowered and built as a small output of its own, whose weights file goes into the module's
folder of the output."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mergec.check.aux_files import dense_modules
from mergec.check.program import CheckedProgram, Output
from mergec.ir.lower import LoweredOutput, lower, optimize

#: weight files of a module folder: replaced by the merged one
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def merge_dense(lo: LoweredOutput, checked: CheckedProgram, backend, tmp: Path) -> dict:
    """Build the merged dense modules of an output under `tmp`; returns {name in the
    output: the file to copy there} (the weights of each merged module)."""
    from mergec.runtime.build import build_output  # build imports this module

    out = lo.output
    merged, _ = dense_modules(out)
    files = {}
    for i, (path, dense, expr) in enumerate(merged):
        first = next(iter(dense.values()))
        o2 = Output(f"{out.name}:{path}", expr, out.dtype, first, None, out.span)
        c2 = dataclasses.replace(checked, inputs=dict(dense), outputs=[o2], warnings=[])
        lo2 = optimize(lower(c2))[0]
        res = build_output(lo2, c2, tmp / f"dense{i}", backend, jobs=1)
        files[f"{path}/model.safetensors"] = res.path / "model.safetensors"
    return files
