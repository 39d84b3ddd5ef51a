"""`model` and `adapter` statements: the inputs, read as config.json and tensor headers."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mergec import arch
from mergec.check.program import DELTA, ERROR, MODEL, CAdapter, CExpr, CInput, TensorMeta
from mergec.check.report import Reporter
from mergec.io.errors import E_CONFIG, CheckpointError
from mergec.lang import ast

#: (source as written, folder of the recipe) -> a checkpoint (or an adapter); raises
#: CheckpointError
InputLoader = Callable[[str, Path], Any]


def read_model(report: Reporter, st: ast.ModelStmt, loader: InputLoader,
               base_dir: Path) -> CExpr:
    try:
        ckpt = loader(st.source.value, base_dir)
    except CheckpointError as e:
        report.add(e.to_diagnostic(st.source.span))
        return CExpr(ERROR, st.span)
    tensors = {n: TensorMeta(tuple(t.shape), t.dtype) for n, t in ckpt.tensors.items()}
    problem = arch.layer_count_problem(ckpt.config, tensors)
    if problem is not None:
        report.add(CheckpointError(
            E_CONFIG, f"config.json of `{st.source.value}`: {problem}",
            "restore config.json from the original model").to_diagnostic(st.source.span))
        return CExpr(ERROR, st.span)
    n_layers = arch.layer_count(ckpt.config, tensors)
    return CInput(MODEL, st.name.span, tensors, n_layers, name=st.name.name,
                  checkpoint=ckpt, config=ckpt.config)


def read_adapter(report: Reporter, st: ast.AdapterStmt, loader: InputLoader,
                 base_dir: Path) -> CExpr:
    try:
        ad = loader(st.source.value, base_dir)
    except CheckpointError as e:
        report.add(e.to_diagnostic(st.source.span))
        return CExpr(ERROR, st.span)
    tensors = {n: TensorMeta(p.shape, "float32") for n, p in ad.pairs.items()}
    return CAdapter(DELTA, st.name.span, tensors, None, sparse=True, name=st.name.name,
                    adapter=ad)

