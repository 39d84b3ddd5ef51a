"""Syntax tree -> checked program, reading only config.json and tensor headers.

The checker walks the statements in order, resolving names (`scope`), reading the inputs
(`inputs`), computing the kind of every expression (`exprs`), validating calls against
the method registry (`calls`, `wheres`), and — for tensor-valued expressions — the table
of tensors each produces (`tables`), so that missing tensors, shape and vocabulary
mismatches and layer ranges are found before any tensor byte is read. It keeps going
after a problem, so a recipe's problems are all reported at once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mergec.check.aux_files import aux_warnings
from mergec.check.exprs import Exprs
from mergec.check.inputs import InputLoader, read_adapter, read_model
from mergec.check.lowrank import check_lowrank_output, is_lowrank
from mergec.check.moe import check_moe_output, is_moe
from mergec.check.output_config import derive_output_config, tensor_set_problems
from mergec.check.outputs import check_output
from mergec.check.program import ERROR, CExpr, CheckedProgram, CStats, Output
from mergec.check.report import Reporter
from mergec.check.scope import Const, Scope
from mergec.check.settings import Params, SetStatements, heads_setting
from mergec.check.vocab import (caching_loader, open_models, plan_vocabulary,
                                unused_vocab_settings, vocab_request)
from mergec.check.stats import StatsLoader, read_stats
from mergec.check.walk import depth
from mergec.check.wheres import apply_wheres
from mergec.diagnostics import Label
from mergec.io import open_input
from mergec.io.adapter import open_adapter
from mergec.io.errors import CheckpointError
from mergec.io.stats_files import open_stats
from mergec.lang import ast
from mergec.limits import MAX_VALUE_DEPTH


def check_program(program: ast.Program, *, overrides: dict[str, str] | None = None,
                  loader: InputLoader | None = None, base_dir: Path | None = None,
                  adapter_loader: InputLoader | None = None,
                  stats_loader: StatsLoader | None = None) -> CheckedProgram:
    """Check a parsed recipe; raises MergecError with every problem found. `overrides`
    are the `--set name=value` given; `loader`, `adapter_loader` and `stats_loader` open
    the inputs (`mergec.io.open_input`, `open_adapter`, `open_stats`) from the recipe's
    folder, `base_dir`."""
    overrides = dict(overrides or {})
    loader = loader or open_input
    adapter_loader = adapter_loader or open_adapter
    stats_loader = stats_loader or open_stats
    stats: dict[str, CStats] = {}
    if base_dir is None:
        base_dir = Path(program.file).resolve().parent
    stmts = program.statements
    report = Reporter()
    scope = Scope(report, stmts)
    exprs = Exprs(report, scope)
    settings = SetStatements(exprs)
    params = Params(exprs, overrides)
    inputs: dict[str, CExpr] = {}
    outputs: list[Output] = []
    depths: dict[int, int] = {}  # checked node id -> depth, shared by the statements
    heads = heads_setting(stmts)
    vocab = None
    vreq = vocab_request(stmts)
    if vreq is not None:
        opened, by_source = open_models(stmts, loader, base_dir)
        loader = caching_loader(loader, by_source)
        vocab = plan_vocabulary(report, stmts, opened, vreq)
    for st in stmts:
        name = st.name.name
        if isinstance(st, ast.SetStmt):
            settings.add(st)
            continue
        first = scope.get(name)
        if first is not None:
            report.error("E202", f"`{name}` is defined twice", st.name.span,
                         "give each value its own name",
                         (Label(first.span, "first defined here"),))
            continue
        if isinstance(st, (ast.ModelStmt, ast.AdapterStmt)):
            value = (read_model(report, st, loader, base_dir, heads, vocab)
                     if isinstance(st, ast.ModelStmt)
                     else read_adapter(report, st, adapter_loader, base_dir))
            if value.kind != ERROR:
                inputs[name] = value
        elif isinstance(st, ast.StatsStmt):
            value = read_stats(report, st, stats_loader, base_dir)
            if value.kind != ERROR:
                stats[name] = value.value
        elif isinstance(st, ast.ParamStmt):
            value = params.add(st)
        elif isinstance(st, ast.OutputStmt) and (is_lowrank(st.expr) or is_moe(st.expr)):
            value, out = (check_lowrank_output if is_lowrank(st.expr) else
                          check_moe_output)(exprs, st)
            if out is not None and vreq is not None:
                report.error("E321", f"`set vocab` is not supported for output `{name}`: "
                             f"{'a LoRA adapter' if is_lowrank(st.expr) else 'a mixture of experts'}"
                             " is built on one model's vocabulary", st.name.span,
                             "build it in a recipe without `set vocab`, from a model merged "
                             "with `set vocab` first")
            elif out is not None:
                outputs.append(out)
        else:
            value = _tensor_statement(exprs, st)
            if isinstance(value, CExpr) and value.kind != ERROR and \
                    depth(value, depths) > MAX_VALUE_DEPTH:
                report.error("E109", f"`{name}` nests values more than {MAX_VALUE_DEPTH:,} "
                             "levels deep (merges, arithmetic and slices, through `let` "
                             "statements)", st.expr.span,
                             "build long chains in several recipes, or combine the steps "
                             "into one merge call")
                value = CExpr(ERROR, st.expr.span)
            if isinstance(st, ast.OutputStmt):
                out = check_output(exprs, st, value)
                if out is not None:
                    if heads:
                        out = dataclasses.replace(out, tie=heads)
                    if vocab is not None:
                        out = dataclasses.replace(out, vocab=vocab)
                    outputs.append(out)
        scope.bind(name, value, st.name.span)
    params.check_overrides_used(stmts)
    if vreq is None:
        unused_vocab_settings(report, stmts)
    if vreq is not None and vocab is None:  # `set vocab` failed (reported): no E305 too
        report.errors = [d for d in report.errors if d.code != "E305"]
    if not outputs and not any(d.severity == "error" for d in report.errors):
        report.error("E224", "the recipe has no `output`", None,
                     "add a statement such as `output merged = linear(a, b)`")
    if not report.errors:
        for out in outputs:
            try:
                cfg = derive_output_config(out)
            except CheckpointError as e:
                report.add(e.to_diagnostic(out.span))
                cfg = None
            for problem, help_ in tensor_set_problems(out, cfg) if cfg is not None else ():
                report.error("E315", f"output `{out.name}`: {problem}", out.span, help_)
            report.warnings += aux_warnings(out)
    report.raise_errors()
    return CheckedProgram(program.file, program.text, inputs, params.values,
                          settings.settings(), outputs, program, overrides=overrides,
                          warnings=list(report.warnings), stats=stats)


def _tensor_statement(exprs: Exprs, st):
    """The value of a `let` or `output` statement, with its `where` blocks."""
    value = exprs.value(st.expr)
    if isinstance(st, ast.OutputStmt):
        value = exprs.whole(value)
    if isinstance(value, Const):
        if value.kind != ERROR:
            if isinstance(st, ast.OutputStmt):
                exprs.report.error("E214", f"output `{st.name.name}` is a {value.kind}, not a "
                                   "Model", st.expr.span, "an output is a merge of models, "
                                   "such as `linear(a, b)`")
            elif st.wheres:
                exprs.report.error("E217", "`where` applies to merge calls; this is a "
                                   f"{value.kind}", st.wheres[0].span)
        return value
    if st.wheres:
        value = apply_wheres(exprs.calls, value, st.wheres)
    return value
