"""Did-you-mean suggestions, and the name=value entries they are most often about."""

from __future__ import annotations

import difflib


def did_you_mean(word: str, candidates, what: str = "") -> str | None:
    cands = sorted(set(candidates))
    close = difflib.get_close_matches(word, cands, n=1, cutoff=0.6)
    if not close:
        low = {c.lower(): c for c in cands}
        if word.lower() in low:
            close = [low[word.lower()]]
    if close:
        return f"did you mean `{close[0]}`?"
    if cands and what:
        shown = ", ".join(f"`{c}`" for c in cands[:12])
        more = ", ..." if len(cands) > 12 else ""
        return f"{what}: {shown}{more}"
    return None


def known_entries(entries, known, err, *, kind: str, code: str, unknown: str,
                  takes: str) -> tuple[list, bool]:
    """The `name = value` entries (keyword arguments, output options) whose name is in
    `known` and given once; each other one is reported (E220 for a repeat, `code` with the
    message `unknown {kind} `name` {unknown}` and a did-you-mean naming what `takes`).
    Returns (the good entries, whether all were good)."""
    good, ok, seen = [], True, set()
    for e in entries:
        key = e.name.name
        if key in seen:
            err("E220", f"{kind} `{key}` is given twice", e.name.span, "remove one of them")
            ok = False
            continue
        seen.add(key)
        if key not in known:
            err(code, f"unknown {kind} `{key}` {unknown}", e.name.span,
                did_you_mean(key, known, takes))
            ok = False
            continue
        good.append(e)
    return good, ok
