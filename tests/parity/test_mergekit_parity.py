"""Parity with mergekit 0.1.5: the same merges, tensor by tensor.

Optional: every test here skips unless a Python with mergekit 0.1.5 is found, at
``$MERGEKIT_PYTHON`` or in ``benchmarks/work/mergekit-venv`` (made by
``scripts/parity-venv.sh``; mergekit's pins would clash with the project's venv).

    scripts/parity-venv.sh && .venv/bin/python -m pytest tests/parity -m parity

Each case pairs a mergekit config (``configs/NAME.yml``) with a mergec output of one of the
recipes (``recipes/*.merge``), both run on the same tiny float32 Llama checkpoints.

* ``EXACT`` cases must agree in every entry of every tensor, up to float32 rounding.
* The other tests pin each known difference down: which tensors differ, in how many
  entries, and what each tool computes there. docs/parity.md explains every one.
* The random methods (dare_*, della*) draw different random numbers in each tool, so they
  are compared by statistics: the fraction of entries kept, how that depends on the
  magnitude rank, and the rescale rule.

Set ``PARITY_REPORT=FILE`` to get the measured differences of every case as JSON lines, and
``PARITY_BACKEND=reference|torch|jax`` to build with that mergec backend (default: auto).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mergec.demo import load_tensors, make_family, make_llama

pytestmark = pytest.mark.parity

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CONFIGS = HERE / "configs"
RECIPES = HERE / "recipes"
DEFAULT_VENV = ROOT / "benchmarks" / "work" / "mergekit-venv"
MERGEKIT_VERSION = "0.1.5"

#: the checkpoints: 4 blocks; tensors of 64 (norms), 2048 (k, v), 4096 (q, o) and
#: 8192 (mlp, embeddings, head) entries
SIZES = dict(layers=4, hidden=64, intermediate=128, heads=4, kv_heads=2, vocab=128,
             dtype="float32")

#: float32 agreement: |mergec - mergekit| <= ATOL + RTOL * |mergekit|, entry by entry
RTOL = 1e-5
ATOL = 1e-7

#: (mergec output, mergekit config) pairs that must agree entry by entry
EXACT = [
    ("linear_norm", "linear_norm"),
    ("linear_raw", "linear_raw"),
    ("slerp_t03", "slerp_t03"),
    ("slerp_t0", "slerp_t0"),
    ("slerp_t1", "slerp_t1"),
    ("slerp_lerp", "slerp_lerp"),
    ("slerp_gradient", "slerp_gradient"),
    ("slerp_slices_last", "slerp_slices"),
    ("task_arithmetic", "task_arithmetic"),
    ("task_arithmetic_norm", "task_arithmetic_norm"),
    ("ties_d05", "ties_d05"),
    ("ties_d05_raw", "ties_d05_raw"),
    ("ties_d03_floor", "ties_d03"),
    ("breadcrumbs_exact", "breadcrumbs_exact"),
    ("breadcrumbs_gamma001_floor", "breadcrumbs_gamma001"),
    ("breadcrumbs_density1_gamma0", "breadcrumbs_density1"),
    ("breadcrumbs_overlap_gamma", "breadcrumbs_overlap"),
    ("breadcrumbs_ties", "breadcrumbs_ties"),
    ("breadcrumbs_ties_norm", "breadcrumbs_ties_norm"),
    ("model_stock", "model_stock"),
    ("model_stock_filter", "model_stock_filter"),
    ("nuslerp_base", "nuslerp_base"),
    ("nuslerp_rows", "nuslerp_rows"),
    ("nuslerp_cols", "nuslerp_cols"),
    ("multislerp_2", "multislerp_2"),
    ("karcher_1", "karcher_1"),
    ("sce", "sce"),
    ("sce_topk", "sce_topk"),
    ("sce_tiny_equal", "sce_tiny"),
    ("sce_partial_scaled", "sce_partial"),
    ("nearswap", "nearswap"),
    ("passthrough_scale", "passthrough_scale"),
    ("passthrough_slices", "passthrough_slices"),
]

MEASURED: dict[str, dict] = {}


# Setup --------------------------------------------------------------------------------------


def _mergekit_python() -> Path:
    env = os.environ.get("MERGEKIT_PYTHON")
    py = Path(env) if env else DEFAULT_VENV / "bin" / "python"
    if not py.exists():
        pytest.skip(f"no mergekit venv at {py} (run scripts/parity-venv.sh, or set "
                    f"MERGEKIT_PYTHON)")
    probe = subprocess.run(
        [str(py), "-c", "from importlib.metadata import version; print(version('mergekit'))"],
        capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:
        pytest.skip(f"{py} has no mergekit (run scripts/parity-venv.sh)")
    found = probe.stdout.strip()
    if found != MERGEKIT_VERSION:
        pytest.skip(f"{py} has mergekit {found}; this suite pins {MERGEKIT_VERSION}")
    return py


def _half_finetune(base: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """base + 0.02 N(0, 1) in the first half of every tensor's rows (entries for 1-D);
    the other half equals base exactly."""
    out = {}
    for name, x in base.items():
        rng = np.random.default_rng([seed, len(name), sum(name.encode())])
        y = np.array(x, dtype=np.float32, copy=True)
        half = y.shape[0] // 2
        y[:half] += np.float32(0.02) * rng.standard_normal(y[:half].shape, dtype=np.float32)
        out[name] = y
    return out


def _json_line(line: str) -> dict | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "config" in obj else None


@pytest.fixture(scope="module")
def mergekit_python() -> Path:
    return _mergekit_python()


@pytest.fixture(scope="module")
def work(tmp_path_factory, mergekit_python) -> Path:
    """A folder with ckpt/ (the checkpoints), mk/ (mergekit's merges), mc/ (mergec's)."""
    root = tmp_path_factory.mktemp("parity")
    ckpt = root / "ckpt"
    make_family(ckpt, names=("base", "a", "b", "c"), seed=0, noise=0.02, **SIZES)
    make_llama(ckpt / "tiny1", base=ckpt / "base", seed=11, noise=0.0002, **SIZES)
    make_llama(ckpt / "tiny2", base=ckpt / "base", seed=12, noise=0.0008, **SIZES)
    base = load_tensors(ckpt / "base")
    for i in (1, 2, 3):
        make_llama(ckpt / f"half{i}", base=_half_finetune(base, 20 + i), seed=0, noise=0.0,
                   **SIZES)

    # mergekit: every config in one process (its import alone takes seconds)
    configs = sorted(CONFIGS.glob("*.yml"))
    jobs = [{"config": str(p), "out": str(root / "mk" / p.stem), "seed": 7} for p in configs]
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run([str(mergekit_python), str(HERE / "mergekit_runner.py"),
                          str(root / "jobs.json")], cwd=root, env=env, capture_output=True,
                         text=True, timeout=900)
    failed = [job for job in map(_json_line, run.stdout.splitlines())
              if job is not None and not job.get("ok")]
    assert run.returncode == 0 and not failed, (
        "mergekit failed:\n" + "\n".join(f["config"] + "\n" + f["error"] for f in failed)
        + run.stderr[-4000:])

    # mergec: every recipe, with the checkpoints beside it
    import mergec.api

    backend = os.environ.get("PARITY_BACKEND") or None  # default: the recipe's (auto)
    for recipe in sorted(RECIPES.glob("*.merge")):
        target = root / recipe.name
        shutil.copyfile(recipe, target)
        mergec.api.build(target, out_dir=root / "mc", backend=backend)
    return root


@pytest.fixture(scope="module")
def tensors(work):
    cache: dict[str, dict[str, np.ndarray]] = {}

    def get(path: str) -> dict[str, np.ndarray]:
        if path not in cache:
            cache[path] = load_tensors(work / path)
        return cache[path]

    return get


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    path = os.environ.get("PARITY_REPORT")
    if path and MEASURED:
        with open(path, "w", encoding="utf-8") as f:
            for name, row in MEASURED.items():
                f.write(json.dumps({"case": name, **row}) + "\n")


# Helpers ------------------------------------------------------------------------------------


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _close(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Entry by entry: a agrees with b (b the reference) up to float32 rounding."""
    a, b = _f64(a), _f64(b)
    return np.abs(a - b) <= ATOL + RTOL * np.abs(b)


def _diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max abs difference, max difference relative to |b|, entries with |b| >= 1e-3)."""
    a, b = _f64(a), _f64(b)
    d = np.abs(a - b)
    big = np.abs(b) >= 1e-3
    rel = float((d[big] / np.abs(b[big])).max()) if big.any() else 0.0
    return float(d.max()), rel


def _measure(case: str, mc: dict, mk: dict, **extra) -> None:
    worst_abs = worst_rel = 0.0
    for k in mk:
        da, dr = _diff(mc[k], mk[k])
        worst_abs, worst_rel = max(worst_abs, da), max(worst_rel, dr)
    MEASURED[case] = {"max_abs": worst_abs, "max_rel": worst_rel, **extra}


def _pair(tensors, mc_name: str, mk_name: str):
    mc, mk = tensors(f"mc/{mc_name}"), tensors(f"mk/{mk_name}")
    assert sorted(mc) == sorted(mk), "the two tools wrote different tensor names"
    for k in mk:
        assert mc[k].shape == mk[k].shape, k
        assert mc[k].dtype == mk[k].dtype == np.float32, k
    return mc, mk


def _floor_count(frac: float, n: int) -> int:
    """mergekit's count of a fraction: int(frac * n)."""
    return int(frac * n)


def _round_count(frac: float, n: int) -> int:
    """mergec's count of a fraction: round half up (mergec.backends.base.count_of)."""
    return min(max(int(math.floor(frac * n + 0.5 + 1e-9)), 0), n)


def _top(mag: np.ndarray, k: int) -> np.ndarray:
    """bool mask of the k largest entries of mag (flat order kept)."""
    flat = mag.reshape(-1)
    mask = np.zeros(flat.size, dtype=bool)
    if k > 0:
        mask[np.argsort(-flat, kind="stable")[:k]] = True
    return mask.reshape(mag.shape)


def _taus(tensors, names, key):
    base = tensors("ckpt/base")[key]
    return [tensors(f"ckpt/{n}")[key] - base for n in names]


# Exact cases --------------------------------------------------------------------------------


@pytest.mark.parametrize("mc_name,mk_name", EXACT, ids=[f"{a}~{b}" for a, b in EXACT])
def test_exact(tensors, mc_name, mk_name):
    mc, mk = _pair(tensors, mc_name, mk_name)
    _measure(mc_name, mc, mk, mergekit=mk_name)
    bad = {k: int((~_close(mc[k], mk[k])).sum()) for k in mk}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"entries that differ, per tensor: {bad}"


#: the configs whose `mergec import` reproduces mergekit: the EXACT ones, less the two
#: whose recipe needs sce rules the import warns about (W330), and three documented
#: differences that the import's `count="floor"` and `lerp_threshold=1.0` remove
IMPORTED = [mk for _, mk in EXACT if mk not in ("sce_tiny", "sce_partial")] + \
    ["breadcrumbs_small", "nuslerp", "ties_d03"]
IMPORTED = list(dict.fromkeys(IMPORTED))


@pytest.mark.parametrize("config", IMPORTED)
def test_imported_config_matches_mergekit(work, tensors, config):
    """`mergec import CONFIG` builds what mergekit builds from CONFIG."""
    import mergec.api
    from mergec.tools.mergekit_import import import_text

    out = f"imported_{config}"
    got = import_text((CONFIGS / f"{config}.yml").read_text(), f"{config}.yml",
                      out_dir=work, base_dir=work, name=out)
    recipe = work / f"{out}.merge"
    recipe.write_text(got.text)
    mergec.api.build(recipe, out_dir=work / "mc",
                     backend=os.environ.get("PARITY_BACKEND") or None)
    mc, mk = _pair(tensors, out, config)
    _measure(out, mc, mk, mergekit=config)
    bad = {k: int((~_close(mc[k], mk[k])).sum()) for k in mk}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"entries that differ, per tensor: {bad}"


def test_mergekit_yaml_cli_matches_the_runner(work, mergekit_python, tensors):
    """The batch runner does what the mergekit-yaml command does."""
    cli = mergekit_python.parent / "mergekit-yaml"
    out = work / "cli_linear_norm"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    run = subprocess.run([str(cli), str(CONFIGS / "linear_norm.yml"), str(out),
                          "--no-copy-tokenizer", "--no-write-model-card", "--quiet"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    got, want = load_tensors(out), tensors("mk/linear_norm")
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


# Documented differences ---------------------------------------------------------------------


def test_ties_density_rounding(tensors):
    """density * n fractional: mergekit keeps int(density n) entries, mergec rounds half up.
    Only the tensors whose counts differ differ, in at most one entry per input."""
    mc, mk = _pair(tensors, "ties_d03", "ties_d03")
    _measure("ties_d03", mc, mk, mergekit="ties_d03")
    differing = set()
    for k in mk:
        n = mk[k].size
        bad = int((~_close(mc[k], mk[k])).sum())
        extra = max(1, _round_count(0.3, n)) - max(1, _floor_count(0.3, n))
        if extra == 0:
            assert bad == 0, k
        else:
            assert 0 <= bad <= 3 * extra, (k, bad)
            differing.add(n)
    assert differing == {4096, 8192}  # 1228.8 and 2457.6 entries; 19.2 and 614.4 agree


def test_ties_unweighted_vote_differs(tensors):
    """mergekit elects the sign of sum w_i tau_i; mergec's default (weighted_elect=false) the
    sign of sum tau_i. They differ exactly where those two signs differ."""
    mc, mk = _pair(tensors, "ties_d05_unweighted", "ties_d05")
    _measure("ties_d05_unweighted", mc, mk, mergekit="ties_d05")
    w = [1.0, 0.6, 0.3]
    total = 0
    for k in mk:
        taus = _taus(tensors, "abc", k)
        trimmed = [np.where(_top(np.abs(t), t.size // 2), t, 0).astype(np.float64)
                   for t in taus]
        weighted = np.sign(sum(wi * t for wi, t in zip(w, trimmed)))
        plain = np.sign(sum(trimmed))
        bad = ~_close(mc[k], mk[k])
        assert not (bad & (weighted == plain)).any(), k
        total += int(bad.sum())
    assert total > 0


def test_breadcrumbs_gamma_rounding(tensors):
    """gamma * n fractional: mergekit drops int(gamma n) top entries, mergec round(gamma n).
    Each tensor whose count differs shifts its kept window by one: two entries per input."""
    mc, mk = _pair(tensors, "breadcrumbs_gamma001", "breadcrumbs_gamma001")
    _measure("breadcrumbs_gamma001", mc, mk, mergekit="breadcrumbs_gamma001")
    base = tensors("ckpt/base")
    differing = set()
    for k in mk:
        n = mk[k].size
        bad = int((~_close(mc[k], mk[k])).sum())
        shift = abs(_round_count(0.01, n) - _floor_count(0.01, n))
        assert bad <= 2 * 2 * shift, (k, bad)
        if shift:
            differing.add(n)
        # 0.1.5 keeps the window when its top count rounds to 0 (no zeroed tensor)
        assert not np.array_equal(mk[k], base[k]), k
    assert differing == {64, 4096, 8192}  # 0.64, 40.96, 81.92 entries; 20.48 agrees


def test_breadcrumbs_density_one(tensors):
    """At density 1 mergekit returns the task vector whole (gamma ignored); mergec still
    drops the top gamma fraction. They differ only at those dropped entries."""
    mc, mk = _pair(tensors, "breadcrumbs_density1", "breadcrumbs_density1")
    _measure("breadcrumbs_density1", mc, mk, mergekit="breadcrumbs_density1")
    for k in mk:
        taus = _taus(tensors, "ab", k)
        dropped = np.zeros(mk[k].shape, dtype=bool)
        for t in taus:
            dropped |= _top(np.abs(t), _round_count(0.01, t.size))
        bad = ~_close(mc[k], mk[k])
        assert bad.any(), k
        assert not (bad & ~dropped).any(), k


def test_breadcrumbs_density_plus_gamma_above_one(tensors):
    """density + gamma > 1: mergec drops the top gamma and keeps the rest (less than the
    density); mergekit keeps the smallest `density` fraction (drops only 1 - density at the
    top). They differ exactly at the entries ranked between those two cuts."""
    mc, mk = _pair(tensors, "breadcrumbs_overlap", "breadcrumbs_overlap")
    _measure("breadcrumbs_overlap", mc, mk, mergekit="breadcrumbs_overlap")
    for k in mk:
        n = mk[k].size
        between = np.zeros(mk[k].shape, dtype=bool)
        for t in _taus(tensors, "ab", k):
            mag = np.abs(t)
            between |= _top(mag, n // 8) & ~_top(mag, n // 16)
        bad = ~_close(mc[k], mk[k])
        assert bad.any(), k
        assert not (bad & ~between).any(), k


def test_breadcrumbs_small_density(tensors):
    """density * n < 1: mergekit keeps int(0.5) = 0 entries of a 64-entry tensor (the task
    vector is zeroed), mergec keeps one (the largest) per input."""
    mc, mk = _pair(tensors, "breadcrumbs_small", "breadcrumbs_small")
    _measure("breadcrumbs_small", mc, mk, mergekit="breadcrumbs_small")
    base = tensors("ckpt/base")
    for k in mk:
        if mk[k].size == 64:
            np.testing.assert_array_equal(mk[k], base[k], err_msg=k)
            changed = mc[k] != base[k]
            expect = np.zeros(64, dtype=bool)
            for t in _taus(tensors, "ab", k):
                expect[np.argmax(np.abs(t))] = True
            np.testing.assert_array_equal(changed, expect, err_msg=k)
        else:
            assert _close(mc[k], mk[k]).all(), k


def test_nuslerp_near_parallel(tensors):
    """mergekit's nuslerp lerps only when the inputs are exactly parallel; mergec (like
    both tools' slerp) lerps when |cos| > 0.9995. The models' norm tensors (cos ~ 0.9996)
    are the only ones that differ: mergec has the lerp there, mergekit the slerp."""
    mc, mk = _pair(tensors, "nuslerp", "nuslerp")
    _measure("nuslerp", mc, mk, mergekit="nuslerp")
    t = 3.0 / 4.0
    near = []
    for k in mk:
        a, b = _f64(tensors("ckpt/a")[k]), _f64(tensors("ckpt/b")[k])
        cos = float(a.ravel() @ b.ravel() / (np.linalg.norm(a) * np.linalg.norm(b)))
        if cos <= 0.9995:
            assert _close(mc[k], mk[k]).all(), k
            continue
        near.append(k)
        theta = math.acos(cos)
        slerp = (math.sin((1 - t) * theta) * a + math.sin(t * theta) * b) / math.sin(theta)
        assert _close(mk[k], slerp).all(), k
        assert _close(mc[k], (1 - t) * a + t * b).all(), k
        assert not _close(mc[k], mk[k]).all(), k
    assert near and all(k.endswith("norm.weight") for k in near)


def _sphere(xs, w):
    n = np.array([np.linalg.norm(x) for x in xs])
    u = [x / m for x, m in zip(xs, n)]
    w = np.asarray(w, dtype=np.float64) / sum(w)
    m = sum(wi * ui for wi, ui in zip(w, u))
    return n, u, w, m / np.linalg.norm(m)


def test_multislerp_projection_vs_log_map(tensors):
    """mergekit's multislerp sums the tangent *projections* u_i - <u_i, m> m at the weighted
    mean direction m, which add up to zero there: its result is m * sum w_i |x_i|. mergec
    takes one step with the log map (theta_i / sin theta_i factors). Equal for two inputs
    of equal weight; otherwise each tool matches its own formula."""
    mc, mk = _pair(tensors, "multislerp_3", "multislerp_3")
    _measure("multislerp_3", mc, mk, mergekit="multislerp_3")
    base = tensors("ckpt/base")
    worst = 0.0
    for k in mk:
        xs = [_f64(t).ravel() for t in _taus(tensors, "abc", k)]
        n, u, w, m = _sphere(xs, [1.0, 2.0, 3.0])
        scale = float(w @ n)
        chordal = m * scale
        v = np.zeros_like(m)
        for wi, ui in zip(w, u):
            c = float(np.clip(m @ ui, -1, 1))
            th = math.acos(c)
            v += wi * (th / math.sin(th)) * (ui - c * m)
        vn = float(np.linalg.norm(v))
        logmap = (math.cos(vn) * m + math.sin(vn) * v / vn) * scale
        got_mk = _f64(mk[k]).ravel() - _f64(base[k]).ravel()
        got_mc = _f64(mc[k]).ravel() - _f64(base[k]).ravel()
        ref = np.linalg.norm(chordal)
        assert np.linalg.norm(got_mk - chordal) / ref < 1e-5, k
        assert np.linalg.norm(got_mc - logmap) / ref < 1e-5, k
        worst = max(worst, float(np.linalg.norm(got_mc - got_mk) / ref))
    MEASURED["multislerp_3"]["max_norm_rel"] = worst
    assert worst > 1e-3


def test_karcher_stopping_rule(tensors):
    """Both iterate the same Karcher steps. mergekit stops when the step is below tol
    without taking it, mergec takes that last step and stops: they differ by less than
    tol, relative to the tensor's norm (mergec is the nearer to the converged mean)."""
    mc, mk = _pair(tensors, "karcher", "karcher")
    worst = 0.0
    for k in mk:
        xs = [_f64(tensors(f"ckpt/{n}")[k]).ravel() for n in "abc"]
        n, u, w, m = _sphere(xs, [1.0, 1.0, 1.0])
        for _ in range(100):  # the converged mean, in float64
            v = np.zeros_like(m)
            for wi, ui in zip(w, u):
                c = float(np.clip(m @ ui, -1, 1))
                th = math.acos(c)
                v += wi * (th / math.sin(th)) * (ui - c * m)
            vn = float(np.linalg.norm(v))
            if vn < 1e-14:
                break
            m = math.cos(vn) * m + math.sin(vn) * v / vn
            m /= np.linalg.norm(m)
        ref = m * float(w @ n)
        a, b = _f64(mc[k]).ravel(), _f64(mk[k]).ravel()
        scale = np.linalg.norm(ref)
        rel = float(np.linalg.norm(a - b) / scale)
        worst = max(worst, rel)
        assert rel < 1.5e-5, k
        assert np.linalg.norm(a - ref) <= np.linalg.norm(b - ref) + 1e-7 * scale, k
    _measure("karcher", mc, mk, mergekit="karcher", max_norm_rel=worst)


def test_sce_weights_of_small_task_vectors(tensors):
    """mergekit's sce falls back to equal weights when sum_i mean(tau_i^2) < 1e-6 (an
    absolute threshold: here noise 2e-4 and 8e-4); mergec keeps omega_i = mean(tau_i^2) /
    sum. With equal weights sce is ties(density=1): the case sce_tiny_equal matches."""
    mc, mk = _pair(tensors, "sce_tiny", "sce_tiny")
    _measure("sce_tiny", mc, mk, mergekit="sce_tiny")
    for k in mk:
        taus = _taus(tensors, ("tiny1", "tiny2"), k)
        assert sum(float(np.mean(_f64(t) ** 2)) for t in taus) < 1e-6, k
        assert not _close(mc[k], mk[k]).all(), k


def test_sce_select_topk_counts_nonzero_variance(tensors):
    """mergekit's select_topk is a fraction of the entries whose variance is not zero;
    mergec's of all entries. half1..half3 changed half of each tensor, so mergekit's 0.5
    is mergec's 0.25 (sce_partial_scaled matches); mergec's 0.5 keeps every changed entry."""
    mc, mk = _pair(tensors, "sce_partial", "sce_partial")
    _measure("sce_partial", mc, mk, mergekit="sce_partial")
    for k in mk:
        assert not _close(mc[k], mk[k]).all(), k


def test_slerp_one_block_slice(tensors):
    """A mergekit gradient over a slice of one block takes its last value (t = 1 there);
    a mergec ramp over one block its first. Only that block differs (slerp_slices_last
    sets t=1.0 for it and matches)."""
    mc, mk = _pair(tensors, "slerp_slices", "slerp_slices")
    _measure("slerp_slices", mc, mk, mergekit="slerp_slices")
    for k in mk:
        same = _close(mc[k], mk[k]).all()
        assert same == (not k.startswith("model.layers.0.")), k


# Random methods: statistics -----------------------------------------------------------------

#: tolerance on a fraction of ~165k entries (the binomial standard deviation is ~0.0012)
FRACTION_TOL = 0.01


def _delta(tensors, out: str, k: str) -> np.ndarray:
    return tensors(out)[k] - tensors("ckpt/base")[k]


def _rank(mag: np.ndarray) -> np.ndarray:
    """per-row ascending rank (0 smallest) over the last axis; 1-D: one row"""
    rows = mag.reshape(-1, mag.shape[-1])
    return np.argsort(np.argsort(rows, axis=1, kind="stable"), axis=1).reshape(mag.shape)


def _keep_p(tau: np.ndarray, density: float, eps: float) -> np.ndarray:
    """keep probability of each entry: density - eps + 2 eps r / (n - 1), r its rank in its
    row (the DELLA rule in both tools; eps = 0 is DARE's constant density)"""
    n = tau.shape[-1]
    return density - eps + 2 * eps * _rank(np.abs(tau)) / (n - 1)


@pytest.mark.parametrize("method", ["dare_linear", "della_linear"])
def test_single_input_keep_and_rescale(tensors, method):
    """One input: the fraction of entries kept is the density in both tools (for della, the
    larger half of each row keeps density + eps/2 on average, the smaller density - eps/2),
    and the kept entries are tau * |tau|_1 / |kept|_1 (mergec rescale="l1")."""
    density, eps = 0.5, (0.2 if method.startswith("della") else 0.0)
    stats = {}
    for tool in ("mc", "mk"):
        kept = total = hi = hi_n = lo = lo_n = 0
        hi_p = lo_p = 0.0
        for k in tensors(f"mk/{method}"):
            base = tensors("ckpt/base")[k]
            tau = tensors("ckpt/a")[k] - base
            out = tensors(f"{tool}/{method}")[k]
            keep = out != base
            kept += int(keep.sum())
            total += keep.size
            c = np.abs(_f64(tau)).sum() / np.abs(_f64(tau[keep])).sum()
            want = base + (c * tau).astype(np.float32)
            assert _close(out[keep], want[keep]).all(), (tool, k)
            upper = _rank(np.abs(tau)) >= tau.shape[-1] // 2
            p = _keep_p(tau, density, eps)
            hi += int(keep[upper].sum())
            hi_n += int(upper.sum())
            hi_p += float(p[upper].sum())
            lo += int(keep[~upper].sum())
            lo_n += int((~upper).sum())
            lo_p += float(p[~upper].sum())
        stats[tool] = (kept / total, hi / hi_n, lo / lo_n)
        assert abs(kept / total - density) < FRACTION_TOL, (tool, stats[tool])
        assert abs(hi / hi_n - hi_p / hi_n) < 2 * FRACTION_TOL, (tool, stats[tool])
        assert abs(lo / lo_n - lo_p / lo_n) < 2 * FRACTION_TOL, (tool, stats[tool])
    MEASURED[method] = {"kept_mc": stats["mc"][0], "kept_mk": stats["mk"][0],
                        "upper_half_mc": stats["mc"][1], "upper_half_mk": stats["mk"][1],
                        "upper_half_expected": hi_p / hi_n,
                        "lower_half_mc": stats["mc"][2], "lower_half_mk": stats["mk"][2],
                        "lower_half_expected": lo_p / lo_n}


@pytest.mark.parametrize("method", ["dare_ties", "della"])
def test_two_input_consensus_statistics(tensors, method):
    """Two inputs, sign election and disjoint merge: an entry is changed when either input
    keeps it, so the fraction changed is mean(1 - (1 - p_a)(1 - p_b)) in both tools; the
    mean |merged task vector| agrees within 2% (mergec: rescale="l1", and for dare_ties
    normalize=false, mergekit's default there)."""
    density, eps = 0.5, (0.2 if method == "della" else 0.0)
    stats = {}
    for tool in ("mc", "mk"):
        changed = total = 0
        expect = mass = 0.0
        for k in tensors(f"mk/{method}"):
            d = _delta(tensors, f"{tool}/{method}", k)
            changed += int((d != 0).sum())
            total += d.size
            mass += float(np.abs(_f64(d)).sum())
            pa, pb = (_keep_p(t, density, eps) for t in _taus(tensors, "ab", k))
            expect += float((1 - (1 - pa) * (1 - pb)).sum())
        stats[tool] = (changed / total, expect / total, mass / total)
        assert abs(changed / total - expect / total) < FRACTION_TOL, (tool, stats[tool])
    ratio = stats["mc"][2] / stats["mk"][2]
    MEASURED[method] = {"changed_mc": stats["mc"][0], "changed_mk": stats["mk"][0],
                        "changed_expected": stats["mc"][1], "mean_abs_ratio": ratio}
    assert abs(ratio - 1) < 0.02, stats
