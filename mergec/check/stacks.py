"""How `stack(...)` assembles a model from runs of layers, stack by stack.

A model has one or more layer stacks (`arch.stacks`: a decoder; an encoder and a decoder;
a vision and a text tower). The parts of a `stack` call address one stack each
(`a.encoder.layers[0:2]`; `a.layers[0:2]` where there is one); the parts of one stack
follow each other, renumbered from 0. A stack no part addresses is taken whole from the
first part's model. A tensor outside the blocks belongs to the stack whose tower its name
starts with (`vision_model.post_layernorm` to the vision tower), else to the model:
before the blocks (embeddings, input convolutions, pre-norms) it comes from `embed=`, else
the first part of its stack; after them (final norms, output heads) from `head=`, else
the last part of its stack.

`layout` answers, for every tensor of the result, which value and tensor it is: the
checker's table, the lowering and the output's config all read that one answer.
"""

from __future__ import annotations

from mergec import arch
from mergec.check.program import CCall, CExpr, CInput, CLinear, CSlice, CStack
from mergec.check.walk import part_model

#: output tensor -> (where it comes from, its name there); where: ("part", i) the i-th
#: part, ("model", i) the model of the i-th part, ("embed",) or ("head",). Symbolic, so
#: that the routes stay true when `where` blocks copy the parts.
Routes = dict[str, tuple[tuple, str]]


def route_source(e: CStack, where: tuple) -> CExpr:
    """The value a route of stack `e` names."""
    if where[0] == "part":
        return e.parts[where[1]]
    if where[0] == "model":
        return part_model(e.parts[where[1]])
    return e.embed if where[0] == "embed" else e.head


def part_prefixes(part: CExpr) -> list[str]:
    """The stacks (prefixes) whose blocks a part holds."""
    if isinstance(part, CSlice) and part.prefix is not None:
        return [part.prefix]
    return list(arch.stacks(part.tensors or {}))


def layout(parts, embed: CExpr | None, head: CExpr | None) -> tuple[Routes, dict[str, int]]:
    """The routes of `stack(parts, embed=, head=)` and the block count of each stack."""
    first = part_model(parts[0])
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(parts):
        for prefix in part_prefixes(p):
            groups.setdefault(prefix, []).append(i)
    every = list(groups)
    for p in parts:
        for prefix in arch.stacks(part_model(p).tensors or {}):
            if prefix not in every:
                every.append(prefix)
    before: Routes = {}
    blocks: Routes = {}
    after: Routes = {}
    counts: dict[str, int] = {}
    for prefix in every:
        if prefix in groups:
            offset = 0
            for i in groups[prefix]:
                p = parts[i]
                for name in p.tensors:
                    if arch.stack_prefix(name) == prefix:
                        out = arch.with_block_index(name, arch.block_index(name) + offset)
                        blocks[out] = (("part", i), name)
                offset += _count(p, prefix)
            counts[prefix] = offset
        else:  # a stack no part addresses: whole, from the first part's model
            for name in first.tensors:
                if arch.stack_prefix(name) == prefix:
                    blocks[name] = (("model", 0), name)
            counts[prefix] = arch.stacks(first.tensors).get(prefix, 0)
    sources = [part_model(p) for p in parts] + [x for x in (embed, head) if x]
    seen: set[str] = set()
    for model in sources:
        for name in model.tensors or {}:
            if name in seen or arch.stack_prefix(name) is not None:
                continue
            seen.add(name)
            where = arch.placement(name)
            own = arch.owner(name, every)
            if own is not None and own not in groups:
                src = ("model", 0)
            elif where == "before":
                src = ("embed",) if embed is not None else \
                    ("model", groups[own][0] if own else 0)
            else:
                src = ("head",) if head is not None else \
                    ("model", groups[own][-1] if own else len(parts) - 1)
            value = {"embed": embed, "head": head}.get(src[0]) or part_model(parts[src[1]])
            if value.tensors is not None and name in value.tensors:
                (before if where == "before" else after)[name] = (src, name)
    return {**before, **blocks, **after}, counts


def _count(part: CExpr, prefix: str) -> int:
    if isinstance(part, CSlice) or len(arch.stacks(part.tensors or {})) == 1:
        return part.n_layers or 0
    return arch.stacks(part.tensors or {}).get(prefix, 0)


def origin(e: CExpr, name: str) -> tuple[CInput | None, str]:
    """The input (and its tensor) where tensor `name` of `e` starts: through slices and
    stacks, and for a merge its base or first input."""
    while True:
        if isinstance(e, CInput):
            return e, name
        if isinstance(e, CSlice):
            name = arch.with_block_index(name, arch.block_index(name) + e.start)
            e = e.target
        elif isinstance(e, CStack):
            if e.routes is None or name not in e.routes:
                return None, name
            where, name = e.routes[name]
            e = route_source(e, where)
        elif isinstance(e, CCall):
            e = e.base if e.base is not None else e.inputs[0]
        elif isinstance(e, CLinear):
            e = e.terms[0][0]
        else:
            return None, name


def first_only(tensors: dict, prefix: str) -> set[str]:
    """Tensors of a stack's first block that no other block has (T5's relative attention
    bias), as names with block index 0."""
    at0, rest = set(), set()
    for n in tensors:
        if arch.stack_prefix(n) == prefix:
            (at0 if arch.block_index(n) == 0 else rest).add(arch.with_block_index(n, 0))
    return at0 - rest if rest else set()
