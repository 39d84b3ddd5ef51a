"""Breadcrumbs computed in blocks of rows: the band of top-k positions [top, top + kept)
comes from two exact thresholds with allowances (one pass over the blocks), and a build
under a tiny memory limit writes the same bytes as the whole-tensor build, which matches
a closed-form NumPy reference."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mergec.api import build, compile
from mergec.demo import load_tensors
from mergec.backends import get_backend
from mergec.methods import run_method
from mergec.runtime.prepass import SAMPLE_BLOCKS, Blocks, band_trims, block_masks
from mergec.runtime.schedule import row_blocks

# ------------------------------------------------------------------ closed-form reference


def ref_counts(density: float, gamma: float, n: int, count: str) -> tuple[int, int]:
    """(top, kept) as docs/methods.md states them for breadcrumbs."""
    if count == "floor":
        top = min(int(gamma * n), n - 1)
        kept = n if density >= 1.0 else int(density * n)
    else:
        top = min(int(math.floor(gamma * n + 0.5 + 1e-9)), n - 1)
        kept = n if density >= 1.0 else max(1, int(math.floor(density * n + 0.5 + 1e-9)))
    return top, min(kept, n - top)


def ref_band(x: np.ndarray, density: float, gamma: float, count: str) -> np.ndarray:
    """The keep mask: rank entries by magnitude, largest first, ties by lower flat index
    (a stable sort), and keep ranks [top, top + kept)."""
    flat = np.abs(x.astype(np.float32)).ravel()
    top, kept = ref_counts(density, gamma, flat.size, count)
    order = np.argsort(-flat.astype(np.float64), kind="stable")
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[top:top + kept]] = True
    return mask.reshape(x.shape)


def arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    plain = rng.standard_normal((96, 40)).astype(np.float32)
    # a few distinct magnitudes: long runs of equal ones across every block border
    steps = (rng.integers(-3, 4, (96, 40)) / 4).astype(np.float32)
    # the blocks the sample reads hold the largest magnitudes: the bracket misleads
    misleading = rng.standard_normal((96, 40)).astype(np.float32)
    picked = {round(j * (31) / (SAMPLE_BLOCKS - 1)) for j in range(SAMPLE_BLOCKS)}
    for b in picked:
        misleading[b * 3:(b + 1) * 3] *= 1000
    return {"plain": plain, "steps": steps, "misleading": misleading}


CASES = [  # density, gamma, count
    (0.9, 0.01, "round"),
    (0.5, 0.1, "round"),
    (0.3, 0.2, "floor"),
    (0.05, 0.0001, "round"),  # top rounds to 0
    (0.0001, 0.0001, "floor"),  # floor: nothing at the top, nothing kept
    (0.0001, 0.3, "round"),  # kept at least 1
    (1.0, 0.0, "round"),  # keeps everything
    (0.8, 0.5, "floor"),  # density + gamma > 1: kept = n - top
]


def band_masks(x: np.ndarray, density: float, gamma: float, count: str, rows_per_block: int,
               method: str = "breadcrumbs") -> np.ndarray:
    """The masks the runtime builds for every block of `x`, put back together."""
    rows_list = row_blocks(x.shape[0], rows_per_block)
    node = SimpleNamespace(numel=x.size, shape=x.shape, args=[None],
                           attr={"method": method}.get)
    params = {"density": (density,), "gamma": (gamma,), "count": count}
    args_of = (lambda b, rows: [x[rows[0]:rows[1]]])
    found = {"trims": band_trims(node, params, Blocks(rows_list, None), args_of)}
    return np.concatenate([block_masks(node, params, [x[r0:r1]], (r0, r1), None, found, b)[0]
                           for b, (r0, r1) in enumerate(rows_list)])


@pytest.mark.parametrize("name", list(arrays()))
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("rows_per_block", [3, 7, 96])
def test_block_masks_are_the_closed_form_band(name, case, rows_per_block):
    x = arrays()[name]
    got = band_masks(x, *case, rows_per_block)
    want = ref_band(x, *case)
    assert np.array_equal(got, want)
    assert int(got.sum()) == ref_counts(case[0], case[1], x.size, case[2])[1]


def test_the_reference_counts_are_breadcrumbs_counts():
    from mergec.methods.breadcrumbs import breadcrumbs_counts

    for d, g, c in CASES:
        for n in (1, 2, 7, 3840):
            assert breadcrumbs_counts(d, g, n, c) == ref_counts(d, g, n, c), (d, g, c, n)


def test_the_band_of_equal_magnitudes_starts_and_ends_inside_runs():
    """All magnitudes equal: the band is a run of flat indices, [top, top + kept)."""
    x = np.full((40, 10), -0.5, dtype=np.float32)
    x[::2] *= -1
    got = band_masks(x, 0.35, 0.125, "round", 3)
    want = np.zeros(400, dtype=bool)
    want[50:190] = True
    assert np.array_equal(got.ravel(), want)


def test_whole_tensor_compute_is_the_closed_form_band():
    """The one implementation on a whole tensor (what the unsplit build runs)."""
    x = arrays()["steps"]
    base = np.zeros_like(x)
    ops = get_backend("numpy")
    for d, g, c in CASES:
        out = run_method(ops, "breadcrumbs", [x], {"density": (d,), "gamma": (g,), "count": c,
                                                   "weight": (1.0,)})
        want = np.where(ref_band(x, d, g, c), x, base)
        assert np.array_equal(np.asarray(out), want), (d, g, c)


# ------------------------------------------------------------------ builds


def save_model(root: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    root.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
              str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({"architectures": ["Toy"],
                                                  "model_type": "toy"}))


def models(tmp_path: Path) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    base = {"w.weight": rng.standard_normal((96, 40)),
            "q.weight": np.zeros((120, 32)),
            "b.bias": rng.standard_normal(40)}
    out = {"base": base}
    for name in ("a", "b"):
        out[name] = {
            "w.weight": base["w.weight"] + 0.1 * rng.standard_normal((96, 40)),
            # task vectors of a few magnitudes: equal ones run across every block border
            "q.weight": rng.integers(-2, 3, (120, 32)) / 8,
            "b.bias": base["b.bias"] + 0.1 * rng.standard_normal(40),
        }
    for name, ts in out.items():
        save_model(tmp_path / name, ts)
    return {k: {n: np.asarray(v, dtype=np.float32) for n, v in ts.items()}
            for k, ts in out.items()}


OUTPUTS = {  # name: (method, density per input, gamma per input, count, other parameters)
    "b1": ("breadcrumbs", (0.9, 0.9), (0.01, 0.01), "round", {}),
    "b2": ("breadcrumbs", (0.3, 0.6), (0.05, 0.2), "floor", {"weight": [0.7, 0.4]}),
    "b3": ("breadcrumbs", (0.5, 0.5), (0.0001, 0.0001), "round", {}),  # top is 0
    "b4": ("breadcrumbs", (0.0001, 0.5), (0.0001, 0.0), "floor", {}),  # a keeps nothing
    "t1": ("breadcrumbs_ties", (0.7, 0.7), (0.02, 0.02), "round", {}),
    "t2": ("breadcrumbs_ties", (0.4, 0.8), (0.1, 0.0), "floor",
           {"elect": "count", "weight": [1, 2]}),
    "t3": ("breadcrumbs_ties", (0.6, 0.3), (0.0001, 0.25), "round",
           {"weighted_elect": True, "weight": [0.3, 0.9], "lambda": 0.5}),
}


def recipe() -> str:
    lines = ['model base = "./base"', 'model a = "./a"', 'model b = "./b"']
    for out, (m, d, g, c, extra) in OUTPUTS.items():
        more = "".join(f", {k}={json.dumps(v)}" for k, v in extra.items())
        lines.append(f"output {out} = {m}(a, b, base=base, density={list(d)}, "
                     f"gamma={list(g)}, count=\"{c}\"{more})")
    return "\n".join(lines) + "\n"


def reference(ms, out: str, name: str) -> np.ndarray:
    """The closed-form result of one output tensor (float64 sums of float32 values)."""
    m, dens, gams, count, extra = OUTPUTS[out]
    p = {"weight": [1.0, 1.0], "lambda": 1.0, "elect": "mass", "weighted_elect": False,
         **extra}
    base = ms["base"][name].astype(np.float64)
    taus = []
    for i, who in enumerate(("a", "b")):
        tau = ms[who][name] - ms["base"][name]  # float32, as the build computes it
        taus.append(np.where(ref_band(tau, dens[i], gams[i], count), tau, 0).astype(np.float64))
    w = np.asarray(p["weight"], dtype=np.float64)
    if m == "breadcrumbs":
        return base + p["lambda"] * sum(wi * t for wi, t in zip(w, taus))
    scaled = [wi * t for wi, t in zip(w, taus)] if p["weighted_elect"] else taus
    if p["elect"] == "mass":
        sign = np.sign(sum(scaled))
    else:
        sign = np.sign(sum(np.sign(t) for t in scaled))
    agree = [(np.sign(t) == sign) & (t != 0) for t in taus]
    num = sum(np.where(a, wi * t, 0) for a, wi, t in zip(agree, w, taus))
    den = sum(np.where(a, wi, 0) for a, wi in zip(agree, w))
    merged = np.where(den > 0, num / np.where(den > 0, den, 1), 0)
    return base + p["lambda"] * merged


def test_builds_in_blocks_write_the_bytes_of_whole_tensor_builds(tmp_path, backend):
    ms = models(tmp_path)
    r = tmp_path / "r.merge"
    r.write_text(recipe())
    limit = 4 * 1024
    comp = compile(r, max_memory=limit, backend=backend)
    assert not comp.checked.warnings  # breadcrumbs splits
    for o in comp.plan.outputs:
        steps = {s.name: s for s in o.steps}
        method = OUTPUTS[o.output][0]
        for name in ("w.weight", "q.weight"):
            assert len(steps[name].rows) > 8, (o.output, name)  # many blocks
            assert steps[name].passes == [f"topk {method}#0"]
        assert steps["b.bias"].rows == []  # one dimension: whole
    build(r, tmp_path / "whole", jobs=1, backend=backend)
    build(r, tmp_path / "blocks", max_memory=limit, jobs=1, backend=backend)
    build(r, tmp_path / "workers", max_memory=2 * limit, jobs=3, backend=backend)
    for out in OUTPUTS:
        a = load_tensors(tmp_path / "whole" / out)
        for other in ("blocks", "workers"):
            b = load_tensors(tmp_path / other / out)
            assert set(a) == set(b)
            for n in a:
                assert np.array_equal(a[n].view(np.uint8), b[n].view(np.uint8)), (out, n, other)
        for n in a:
            want = reference(ms, out, n)
            np.testing.assert_allclose(a[n].astype(np.float64), want, rtol=2e-6, atol=1e-6,
                                       err_msg=f"{out} {n}")
