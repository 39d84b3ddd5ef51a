"""Did-you-mean suggestions."""

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
