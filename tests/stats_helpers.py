"""Statistics folders for the test families (docs/stats.md), made without a data set.

Gram matrices are Toeplitz kernels ``scale * rho^|i - j|`` (symmetric positive definite)
and Fisher values squares of seeded random numbers: element-wise NumPy only, so the
folders are the same bytes on every machine (the golden corpus hashes what is built
from them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mergec.io.checkpoint import open_checkpoint
from mergec.io.stats_files import checkpoint_fingerprint, write_stats

#: model -> (rho, scale) of its Gram matrices
GRAM = {"math": (0.5, 1.0), "code": (0.3, 2.0)}


def toeplitz_gram(n: int, rho: float, scale: float) -> np.ndarray:
    i = np.arange(n)
    return (scale * rho ** np.abs(i[:, None] - i[None, :])).astype(np.float32)


def make_family_stats(root: Path, fam: dict) -> Path:
    """root/{fisher,gram}_{math,code}: Fisher statistics for every tensor but the norms,
    Gram matrices for every 2-D weight but the embeddings and the head."""
    for i, name in enumerate(GRAM):
        ckpt = open_checkpoint(Path(fam[name]))
        fp = checkpoint_fingerprint(ckpt.tensors)
        rng = np.random.default_rng(100 + i)
        fisher = {n: rng.random(t.shape).astype(np.float32) ** 2
                  for n, t in ckpt.tensors.items() if "norm" not in n}
        write_stats(root / f"fisher_{name}", "fisher", 64, fp, fisher)
        rho, scale = GRAM[name]
        gram = {n: toeplitz_gram(t.shape[1], rho, scale) for n, t in ckpt.tensors.items()
                if len(t.shape) == 2 and "embed" not in n and "lm_head" not in n}
        write_stats(root / f"gram_{name}", "gram", 64, fp, gram)
    return root
