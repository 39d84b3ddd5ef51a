"""The compiled Philox kernel makes exactly NumPy's words, masks and floats; NumPy is used
when it is forced, missing or too small a draw to load it; the machine code is cached."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mergec.ops import compiled
from mergec.ops import random as rnd

ROOT = Path(__file__).resolve().parents[1]
MASK64 = (1 << 64) - 1


def numpy_words(seed: int, stream: int, start: int, n: int) -> np.ndarray:
    """Words [start, start + n) straight from numpy's Philox (the format's definition)."""
    bg = np.random.Philox(key=np.array([seed & MASK64, stream], dtype=np.uint64))
    return bg.random_raw(start + n)[start:]


def limit_of(density: float) -> int:
    f = float(np.float32(density))
    return math.ceil(f * 2.0**24) << 40 if f > 0 else 0


SEEDS = [0, 1, 7, 2**32 - 1, 2**32, 2**63 - 1, 2**63, MASK64, 0x0123456789ABCDEF]
CASES = [(s, stream, start, n) for s in SEEDS for stream in (0, 1, 5)
         for start, n in ((0, 0), (0, 1), (1, 2), (2, 3), (3, 1), (3, 4), (4, 4), (5, 11),
                          (0, 257), (1021, 63))]


@pytest.fixture(scope="module")
def jit():
    pytest.importorskip("numba")
    from mergec.ops import jit
    return jit


@pytest.mark.parametrize("seed,stream,start,n", CASES)
def test_kernel_words_are_numpys(jit, seed, stream, start, n):
    words = numpy_words(seed, stream, start, n)
    for density in (0.0, 1e-9, 0.1, 0.5, 0.9, 1 - 2**-24, 0.3333333):
        lim = limit_of(density)
        got = jit.fill_mask(seed, stream, start, lim, np.empty(n, dtype=bool))
        assert np.array_equal(got, words < np.uint64(lim))
    got = jit.fill_uniform(seed, stream, start, np.empty(n, dtype=np.float32))
    want = ((words >> np.uint64(40)).astype(np.float64) * 2.0**-24).astype(np.float32)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_kernel_limits_at_the_edges(jit):
    words = numpy_words(99, 2, 0, 4096)
    for lim in (0, 1, int(words.min()), int(words.min()) + 1, int(words.max()),
                int(words.max()) + 1, MASK64):
        got = jit.fill_mask(99, 2, 0, lim, np.empty(4096, dtype=bool))
        assert np.array_equal(got, words < np.uint64(lim))
    assert not jit.fill_mask(99, 2, 0, 0, np.empty(4096, dtype=bool)).any()


SHAPES = [(), (0,), (1,), (3,), (7, 5), (4, 0), (0, 4), (3, 1, 9), (2, 3, 4, 5), (1031,)]


@pytest.fixture
def force_jit(jit, monkeypatch):
    """Every draw goes through the compiled kernel (no size threshold)."""
    monkeypatch.delenv("MERGEC_NO_JIT", raising=False)
    monkeypatch.setattr(compiled, "JIT_MIN_VALUES", 0)
    assert compiled.kernels(0) is jit


def numpy_path(monkeypatch, fn, *args):
    with monkeypatch.context() as m:
        m.setenv("MERGEC_NO_JIT", "1")
        assert compiled.kernels(1 << 40) is None
        return fn(*args)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("seed", [3, 2**64 - 5, rnd.derive_seed(42, "out", "w")])
def test_masks_and_uniforms_equal_on_both_paths(force_jit, monkeypatch, shape, seed):
    for stream in (0, 2):
        for density in (0.0, 0.01, 0.5, 0.97, 1.0, 1.5, 1 - 2**-25):
            want = numpy_path(monkeypatch, rnd.keep_mask, seed, stream, shape, density)
            got = rnd.keep_mask(seed, stream, shape, density)
            assert got.dtype == bool and got.shape == want.shape
            assert np.array_equal(got, want)
        want = numpy_path(monkeypatch, rnd.uniform, seed, stream, shape)
        got = rnd.uniform(seed, stream, shape)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize("shape", [(7, 5), (9, 4, 3), (13, 1)], ids=str)
def test_rows_equal_on_both_paths(force_jit, monkeypatch, shape):
    whole = numpy_path(monkeypatch, rnd.keep_mask, 11, 1, shape, 0.4)
    for a in range(shape[0] + 1):
        for b in (a, min(a + 1, shape[0]), shape[0]):
            got = rnd.keep_mask_rows(11, 1, shape, 0.4, a, b)
            assert np.array_equal(got, whole[a:b])
            u = rnd.uniform_rows(11, 1, shape, a, b)
            ref = numpy_path(monkeypatch, rnd.uniform_rows, 11, 1, shape, a, b)
            assert np.array_equal(u.view(np.uint32), ref.view(np.uint32))


def test_large_draw_cut_in_blocks_equals_numpy(force_jit, monkeypatch):
    monkeypatch.setattr(rnd, "_CHUNK", 1 << 10)  # many blocks on the thread pool
    n = (1 << 14) + 3
    want = numpy_path(monkeypatch, rnd.keep_mask, 5, 0, (n,), 0.3)
    assert np.array_equal(rnd.keep_mask(5, 0, (n,), 0.3), want)
    assert np.array_equal(rnd.keep_mask_rows(5, 0, (n, 1), 0.3, 17, n - 5)[:, 0], want[17:n - 5])
    w = numpy_words(5, 0, 0, n)
    assert np.array_equal(want, w < np.uint64(limit_of(0.3)))


def test_negative_stream_is_refused_on_both_paths(force_jit, monkeypatch):
    with pytest.raises(ValueError, match="stream must be >= 0"):
        rnd.keep_mask(1, -1, (4,), 0.5)
    with pytest.raises(ValueError, match="stream must be >= 0"):
        numpy_path(monkeypatch, rnd.keep_mask, 1, -1, (4,), 0.5)


def _run(code: str, env: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


DRAW = """import json, sys
from mergec.ops import compiled
from mergec.ops import random as rnd
compiled.JIT_MIN_VALUES = 1 << 16
small = rnd.keep_mask(1, 0, (1000,), 0.5)
after_small = "numba" in sys.modules
m = rnd.keep_mask(1, 0, (compiled.JIT_MIN_VALUES,), 0.5)
k = compiled.kernels()
stats = k._fill_mask.stats if k is not None else None
print(json.dumps({"after_small": after_small, "numba": "numba" in sys.modules,
                  "jit": k is not None, "kept": int(m.sum()), "small": int(small.sum()),
                  "hits": sum(stats.cache_hits.values()) if stats else 0,
                  "misses": sum(stats.cache_misses.values()) if stats else 0}))
"""


def test_compiled_code_is_cached_in_mergecs_cache_dir(jit, tmp_path):
    env = {"MERGEC_CACHE_DIR": str(tmp_path / "cache"), "MERGEC_NO_JIT": ""}
    cold = _run(DRAW, env)
    assert cold["jit"] and not cold["after_small"]  # a small draw does not load numba
    assert cold["misses"] == 1 and cold["hits"] == 0
    cached = list((tmp_path / "cache" / "numba").rglob("jit._fill_mask-*.nbi"))
    assert len(cached) == 1
    warm = _run(DRAW, env)
    assert warm["hits"] == 1 and warm["misses"] == 0
    forced = _run(DRAW, {**env, "MERGEC_NO_JIT": "1"})
    assert not forced["jit"] and not forced["numba"]
    assert cold["kept"] == warm["kept"] == forced["kept"]
    assert cold["small"] == forced["small"]


def test_numpy_fallback_without_numba(tmp_path):
    """numba not importable (the core install): the same masks, from NumPy."""
    blocker = tmp_path / "numba"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('no numba here')\n")
    code = DRAW.replace("import json, sys", f"import json, sys; sys.path.insert(0, {str(tmp_path)!r})")
    got = _run(code, {"MERGEC_NO_JIT": ""})
    assert not got["jit"]
    words = numpy_words(1, 0, 0, 1 << 16)
    assert got["kept"] == int(np.count_nonzero(words < np.uint64(limit_of(0.5))))


BUILD = """import hashlib, json, sys
from pathlib import Path
from mergec.ops import compiled
compiled.JIT_MIN_VALUES = 1  # every draw and rank counts as large
from mergec.cli import app
try:
    app(["build", "r.merge", "--out-dir", sys.argv[1], "--jobs", "2", "--quiet"])
except SystemExit as e:
    assert not e.code, e.code
files = sorted(Path(sys.argv[1]).rglob("*.safetensors"))
print(json.dumps({"numba": "numba" in sys.modules,
                  "sha": [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]}))
"""

RECIPE = """model base = "{base}"
model math = "{math}"
model code = "{code}"

set seed = 3

output dare = dare_ties(math, code, base=base, density=0.4)
output della = della(math, code, base=base, density=0.6, epsilon=0.2)
output crumbs = breadcrumbs(math, code, base=base, density=0.5, gamma=0.1)
"""


def test_builds_are_the_same_bytes_with_and_without_the_kernels(jit, family, tmp_path):
    (tmp_path / "r.merge").write_text(RECIPE.format(**{k: family[k] for k in
                                                       ("base", "math", "code")}))

    def build(name: str, env: dict) -> dict:
        r = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path / name)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(ROOT), **env})
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout.strip().splitlines()[-1])

    fast = build("fast", {"MERGEC_NO_JIT": ""})
    slow = build("slow", {"MERGEC_NO_JIT": "1"})
    assert fast["numba"] and not slow["numba"]  # the first build ran the compiled kernels
    assert len(fast["sha"]) == 3 and fast["sha"] == slow["sha"]
