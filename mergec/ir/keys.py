"""Content keys of output tensors: a hash of a tensor's IR, with every input named by what
it is rather than what the recipe calls it.

Two tensors with the same key are computed by the same operations, with the same
parameters and seeds, from the same input tensors, into the same dtype, so they have the
same bytes (on one backend and version of mergec). ``mergec diff`` compares recipes with
them, without reading weights. The caller says what each input source is
(``source_id``: a recipe input name -> its identity, e.g. the resolved location and the
checkpoint's header fingerprint); this module knows nothing about files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from mergec.ir.nodes import Node, format_value, topo
from mergec.ir.placeholders import ModelTopK

#: bumped when the meaning of a key changes
KEY_VERSION = "mergec-tensor-key-v1"


def tensor_keys(roots: list[Node], source_id: Callable[[str], str]) -> list[str]:
    """One hex key per root (the tensors of one output). Shared sub-expressions are hashed
    once. Where a computation depends on the whole output (TIES with `trim="model"`: a
    threshold over every tensor that shares its call), every key also covers all the
    others, so that a change anywhere changes them all."""
    memo: dict[int, str] = {}
    keys = [_key(r, source_id, memo) for r in roots]
    if any(_model_wide(n) for r in roots for n in topo(r)):
        whole = hashlib.sha256("\0".join(keys).encode()).hexdigest()
        keys = [hashlib.sha256(f"{k}\0{whole}".encode()).hexdigest() for k in keys]
    return keys


def _model_wide(n: Node) -> bool:
    def has(v) -> bool:
        if isinstance(v, ModelTopK):
            return True
        if isinstance(v, (tuple, list)):
            return any(has(x) for x in v)
        return False
    return any(has(v) for _, v in n.attrs)


def _key(root: Node, source_id: Callable[[str], str], memo: dict[int, str]) -> str:
    stack = [root]
    while stack:  # iterative post-order: deep sums do not reach the recursion limit
        n = stack[-1]
        if id(n) in memo:
            stack.pop()
            continue
        todo = [a for a in n.args if id(a) not in memo]
        if todo:
            stack.extend(todo)
            continue
        stack.pop()
        h = hashlib.sha256()
        h.update(f"{KEY_VERSION}\0{n.op}\0{n.dtype}\0{list(n.shape)}\0".encode())
        for k, v in n.attrs:
            if k == "source":
                v = source_id(v)
                h.update(f"{k}={v}\0".encode())
            else:
                h.update(f"{k}={_attr_text(v)}\0".encode())
        for a in n.args:
            h.update(memo[id(a)].encode())
        memo[id(n)] = h.hexdigest()
    return memo[id(root)]


def _attr_text(v) -> str:
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{_attr_text(x)}" for k, x in sorted(v.items())) + "}"
    if isinstance(v, (list, tuple)):
        return "(" + ",".join(_attr_text(x) for x in v) + ")"
    try:
        return format_value(v)
    except TypeError:
        return repr(v)
