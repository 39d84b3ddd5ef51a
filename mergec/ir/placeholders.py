"""Placeholder parameter values: numbers the lowering cannot know per tensor, which the
runtime computes over a whole model and substitutes before the per-tensor pass
(`mergec.runtime.prepass`). They are plain hashable values, so merge nodes holding them stay
interned and comparable, and the IR printer writes them as `model_topk(...)`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelTopK:
    """The magnitude of the k-th largest entry of one task vector over a whole model,
    k = keep_count(density, number of entries)."""

    call: str  # identifies the merge call (and output) it belongs to
    input: int
    density: float

    def __repr__(self) -> str:
        return f"model_topk(call={self.call!r}, input={self.input!r}, density={self.density!r})"
