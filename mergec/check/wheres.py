"""`where` blocks: parameter values for some tensors of a statement's merge calls.

A block's selectors (globs over tensor names, `layers[a:b]`) are checked against the
blocks the calls produce, and each value against every call of the expression that takes
the parameter. The statement gets its own copy of the calls, carrying the blocks: a `let`
used elsewhere keeps its own parameters.
"""

from __future__ import annotations

from dataclasses import replace

from mergec import arch
from mergec.check.calls import (INVALID, Calls, zero_sum_block, zero_sum_help,
                                 zero_sum_text)
from mergec.check.program import ERROR, CCall, CExpr, CInput, CLinear, CSlice, CStack, Override
from mergec.check.suggest import did_you_mean
from mergec.check.walk import walk
from mergec.lang import ast
from mergec.lang.fmt import slice_text


def apply_wheres(calls_checker: Calls, value: CExpr, wheres) -> CExpr:
    """`value` with the `where` blocks `wheres` checked and added to each of its calls."""
    err = calls_checker.report.error
    calls = [c for c in walk(value) if isinstance(c, CCall) and c.method is not None]
    overrides = []
    for w in wheres:
        globs = tuple(s.pattern for s in w.selectors if isinstance(s, ast.GlobSel))
        layers = tuple((s.start, s.stop) for s in w.selectors if isinstance(s, ast.LayersSel))
        for s in w.selectors:
            if isinstance(s, ast.LayersSel) and s.start is not None and \
                    s.stop is not None and s.stop <= s.start:
                err("E302", f"empty layer range `layers[{s.start}:{s.stop}]`", s.span)
            elif isinstance(s, ast.LayersSel):
                frames = [c.n_layers for c in calls if c.n_layers is not None]
                n = max(frames) if frames and len(frames) == len(calls) else None
                lo = s.start or 0
                if n is not None and (lo >= n or (s.stop is not None and s.stop > n)):
                    err("E301", f"`layers[{slice_text(s.start, s.stop)}]` is out of bounds: "
                        f"the merged blocks are numbered 0 to {n - 1}", s.span,
                        f"the largest range is `layers[0:{n}]`")
        values = []
        for en in w.entries:
            key = en.name.name
            takers = [c for c in calls if c.method.param(key) is not None]
            if not takers:
                names = sorted({p for c in calls for p in c.method.param_names})
                err("E217", f"no merge call in this expression takes `{key}`", en.name.span,
                    did_you_mean(key, names, "their parameters are")
                    if names else "`where` applies to merge calls")
                continue
            first = takers[0]
            pv = calls_checker.param_value(first.method.name, first.method.param(key),
                                           en.value, len(first.inputs))
            if pv is INVALID:
                continue
            for c in takers[1:]:
                calls_checker.param_value(c.method.name, c.method.param(key), en.value,
                                          len(c.inputs))
            if first.method.param(key).per_input and isinstance(pv, tuple) and \
                    not isinstance(en.value, ast.ListExpr):
                # one value for every input, of every call, whatever its number of inputs
                # (the lowering repeats it per input)
                pv = pv[0]
            values.append((key, pv))
        ov = Override(globs, layers, tuple(values), w.span)
        overrides.append(ov)
        _check_normalized_weights(calls_checker, calls, ov)
        tables = [c.tensors for c in calls if c.tensors is not None]
        if tables and len(tables) == len(calls) and not any(
                ov.matches(n, arch.block_index(n)) for t in tables for n in t):
            calls_checker.report.warn(
                "W301", "this `where` matches no tensor, so it changes nothing", w.span,
                "globs match full tensor names: `\"*.mlp.*\"`, not `\"mlp\"`; "
                "`mergec plan --tensors` lists the names")
    return _with_overrides(value, tuple(overrides))


def _check_normalized_weights(calls_checker: Calls, calls: list[CCall], ov: Override) -> None:
    """E208 where the block's weights (or its `normalize`) make a call normalize weights
    that sum to 0 for some tensor the block matches."""
    given = dict(ov.values)
    if "weight" not in given and "normalize" not in given:
        return
    for c in calls:
        params = {**c.params, **given}
        if c.tensors is None or "weight" not in params or not c.method.traits.normalizes(params):
            continue
        w = params["weight"]
        blocks = {arch.block_index(n) for n in c.tensors if ov.matches(n, arch.block_index(n))}
        order = sorted(blocks, key=lambda b: -1 if b is None else b)
        block = zero_sum_block(w, order, c.n_layers)
        if block is not False:
            calls_checker.report.error(
                "E208", f"with this `where`, the weights of `{c.method.name}` sum to 0"
                f"{zero_sum_text(w, block)}, so they cannot be normalized", ov.span,
                zero_sum_help(c.method))
            return


def _with_overrides(e: CExpr, overrides: tuple[Override, ...],
                    memo: dict[int, CExpr] | None = None) -> CExpr:
    """A copy of the expression down to (not including) the inputs, with `overrides`
    added to every call. A node used twice is copied once (`memo`), so the copy keeps the
    DAG's sharing and its size."""
    if memo is None:
        memo = {}
    if isinstance(e, CInput) or e.kind == ERROR:
        return e
    done = memo.get(id(e))
    if done is not None:
        return done

    def sub(x):
        return _with_overrides(x, overrides, memo) if x is not None else None

    if isinstance(e, CLinear):
        new = replace(e, terms=tuple((sub(t), k) for t, k in e.terms))
    elif isinstance(e, CCall):
        new = replace(e, inputs=tuple(sub(i) for i in e.inputs), base=sub(e.base),
                      fallback=sub(e.fallback), overrides=e.overrides + overrides)
    elif isinstance(e, CSlice):
        new = replace(e, target=sub(e.target))
    elif isinstance(e, CStack):
        new = replace(e, parts=tuple(sub(p) for p in e.parts), embed=sub(e.embed),
                      head=sub(e.head))
    else:
        new = replace(e)
    memo[id(e)] = new
    return new
