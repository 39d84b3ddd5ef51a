"""Traversal of checked expressions, for the packages that consume a checked program."""

from __future__ import annotations

from collections.abc import Iterator

from mergec.check.program import CCall, CExpr, CInput, CLinear, CSlice, CStack


def walk(e: CExpr) -> Iterator[CExpr]:
    """Every node of the expression, `e` first, then its operands in the order they are
    written (a call's inputs, then its base and its fallback; a stack's parts, then `embed`, `head`). A
    node used twice is visited twice."""
    yield e
    if isinstance(e, CLinear):
        for t, _ in e.terms:
            yield from walk(t)
    elif isinstance(e, CCall):
        for i in e.inputs:
            yield from walk(i)
        if e.base is not None:
            yield from walk(e.base)
        if e.fallback is not None:
            yield from walk(e.fallback)
    elif isinstance(e, CSlice):
        yield from walk(e.target)
    elif isinstance(e, CStack):
        for p in e.parts:
            yield from walk(p)
        for x in (e.embed, e.head):
            if x is not None:
                yield from walk(x)


def part_model(e: CExpr) -> CExpr:
    """The model a value's tensors outside the blocks come from (its first input)."""
    if isinstance(e, CSlice):
        return e.target
    if isinstance(e, CCall):
        return part_model(e.inputs[0])
    if isinstance(e, CLinear):
        return part_model(e.terms[0][0])
    return e


def first_input(e: CExpr) -> CInput | None:
    """The input whose config and tokenizer an output starts from by default: the base of
    a merge with `base=`, else its first input; for `stack`, the model of its embeddings."""
    if isinstance(e, CInput):
        return e
    if isinstance(e, CCall):
        return first_input(e.base if e.base is not None else e.inputs[0])
    if isinstance(e, CLinear):
        return next((x for x in (first_input(t) for t, _ in e.terms) if x is not None), None)
    if isinstance(e, CSlice):
        return first_input(e.target)
    if isinstance(e, CStack):
        return first_input(e.embed or part_model(e.parts[0]))
    return None
