"""Whole-tensor sums of a tensor computed in blocks (the L1 norms of DARE and DELLA, the
inner products of slerp and model_stock) are summed per row on the backend that holds the
values, then over the rows on the host, exactly as the backend sums a whole tensor: the
bytes of a split build are those of the unsplit build on every backend, also for rows long
enough that a backend's own summation order differs from NumPy's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from mergec.api import build
from mergec.demo import load_tensors

from io_helpers import make_safetensors

#: bytes per block of rows: the (24, 6000) tensors below are split into many blocks
LIMIT = 200 * 1024

RECIPE = """model base = "./ckpt/base"
model a = "./ckpt/a"
model b = "./ckpt/b"
model c = "./ckpt/c"
set seed = 11
output dt = dare_ties(a, b, c, base=base, weight=[1.0, 0.6, 0.3], density=0.4, rescale="l1")
output dl = dare_linear(a, b, base=base, density=[0.3, 0.7], rescale="l1")
output de = della(a, b, c, base=base, density=0.5, epsilon=0.1, rescale="l1")
output sl = slerp(a, b, t=0.3)
output ms = model_stock(a, b, c, base=base)
"""


def _tensors(seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    # magnitudes over many binades, so that the order of a float64 sum shows in its bits
    scale = 2.0 ** r.integers(-20, 20, (24, 6000))
    return {"long": (r.standard_normal((24, 6000)) * scale).astype(np.float32),
            "small": r.standard_normal((8, 5)).astype(np.float32)}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("split-sums")
    for i, name in enumerate(["base", "a", "b", "c"]):
        make_safetensors(root / name, _tensors(200 + i))
    return root


def _hashes(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256(a.tobytes()).hexdigest() for n, a in load_tensors(folder).items()}


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=pytest.mark.torch),
                                     pytest.param("jax", marks=pytest.mark.jax)])
def test_split_builds_give_the_bytes_of_whole_builds(tmp_path, ckpts, backend):
    (tmp_path / "ckpt").symlink_to(ckpts)
    r = tmp_path / "r.merge"
    r.write_text(RECIPE)
    build(r, tmp_path / "whole", jobs=1, backend=backend)
    build(r, tmp_path / "blocks", max_memory=LIMIT, jobs=1, backend=backend)
    for out in ("dt", "dl", "de", "sl", "ms"):
        whole, blocks = _hashes(tmp_path / "whole" / out), _hashes(tmp_path / "blocks" / out)
        assert whole.keys() == {"long", "small"}
        assert whole == blocks, out
