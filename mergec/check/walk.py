"""Traversal of checked expressions, for the packages that consume a checked program."""

from __future__ import annotations

from collections.abc import Iterator

from mergec.check.program import CCall, CExpr, CInput, CLinear, CMoe, CSlice, CStack


def operands(e: CExpr) -> list[CExpr]:
    """The operands of a checked node, in the order they are written (a call's inputs,
    then its base and its fallback; a stack's parts, then `embed`, `head`)."""
    if isinstance(e, CLinear):
        return [t for t, _ in e.terms]
    if isinstance(e, CCall):
        return list(e.inputs) + [x for x in (e.base, e.fallback) if x is not None]
    if isinstance(e, CSlice):
        return [e.target]
    if isinstance(e, CMoe):
        return list(e.parts)
    if isinstance(e, CStack):
        return list(e.parts) + [x for x in (e.embed, e.head) if x is not None]
    return []


def walk(e: CExpr) -> Iterator[CExpr]:
    """Every node of the expression once, `e` first, then its operands in the order they
    are written (depth first). A `let` value used twice is one node: a checked program is
    a DAG, and this visits each node once, in time linear in the number of nodes."""
    seen: set[int] = set()
    stack = [e]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        yield n
        stack.extend(reversed(operands(n)))


def depth(e: CExpr, memo: dict[int, int]) -> int:
    """The number of nested nodes on the longest path from `e` down to an input;
    `memo` (node id -> depth) is kept between calls, so a recipe's statements are measured
    in time linear in the size of the whole program."""
    if id(e) in memo:
        return memo[id(e)]
    stack = [(e, False)]
    while stack:
        n, done = stack.pop()
        if done:
            memo[id(n)] = 1 + max((memo[id(o)] for o in operands(n)), default=0)
            continue
        if id(n) in memo:
            continue
        stack.append((n, True))
        stack.extend((o, False) for o in operands(n) if id(o) not in memo)
    return memo[id(e)]


def call_numbers(e: CExpr) -> dict[int, int]:
    """For each call under `e` (by id), the number of calls that precede its last
    occurrence when the expression is read as a tree, depth first, operands in written
    order — the stable identity that random methods derive their seeds from. Computed on
    the DAG (counts, then longest offsets in topological order), never by expanding it."""
    order: list[CExpr] = []  # post-order: operands before the node
    seen: set[int] = set()
    stack = [(e, False)]
    while stack:
        n, done = stack.pop()
        if done:
            order.append(n)
            continue
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.append((n, True))
        stack.extend((o, False) for o in reversed(operands(n)) if id(o) not in seen)
    count: dict[int, int] = {}  # calls in the subtree, as a tree
    for n in order:
        count[id(n)] = int(isinstance(n, CCall)) + sum(count[id(o)] for o in operands(n))
    offset: dict[int, int] = {id(e): 0}
    for n in reversed(order):  # every node after all the nodes that use it
        at = offset[id(n)] + int(isinstance(n, CCall))
        for o in operands(n):
            if offset.get(id(o), -1) < at:
                offset[id(o)] = at
            at += count[id(o)]
    return {id(n): offset[id(n)] for n in order if isinstance(n, CCall)}


def part_model(e: CExpr) -> CExpr:
    """The model a value's tensors outside the blocks come from (its first input)."""
    while True:
        if isinstance(e, CSlice):
            return e.target
        if isinstance(e, CCall):
            e = e.inputs[0]
        elif isinstance(e, CLinear):
            e = e.terms[0][0]
        else:
            return e


def first_input(e: CExpr) -> CInput | None:
    """The input whose config and tokenizer an output starts from by default: the base of
    a merge with `base=`, else its first input; for `stack`, the model of its embeddings."""
    seen: set[int] = set()
    stack = [e]
    while stack:  # depth first, as the recipe writes the operands
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, CInput):
            return e
        if isinstance(e, CCall):
            stack.append(e.base if e.base is not None else e.inputs[0])
        elif isinstance(e, CLinear):
            stack.extend(reversed([t for t, _ in e.terms]))
        elif isinstance(e, CSlice):
            stack.append(e.target)
        elif isinstance(e, CStack):
            stack.append(e.embed or part_model(e.parts[0]))
    return None
