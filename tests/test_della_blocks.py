"""DELLA computed a block of rows at a time: the same bytes as the whole-tensor build, for
every rescale, several densities and epsilons, rank ties, 3-D tensors, blocks on several
workers; and the values of a closed-form NumPy DELLA."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from mergec.api import build, compile
from mergec.demo import load_tensors
from mergec.ir.nodes import topo
from mergec.ops.random import uniform

from io_helpers import make_safetensors

LIMIT = 2 * 1024  # bytes: every 2-D and 3-D tensor here is split into many blocks

RECIPE = """model base = "./ckpt/base"
model a = "./ckpt/a"
model b = "./ckpt/b"
model c = "./ckpt/c"
set seed = 7
output d1 = della(a, b, c, base=base, weight=[1.0, 0.6, 0.3], density=0.5, epsilon=0.1, rescale="l1", normalize=true, weighted_elect=true)
output d2 = della(a, b, base=base, density=[0.3, 0.8], epsilon=[0.2, 0.05], rescale="inverse")
output d3 = della(a, b, base=base, density=0.6, epsilon=0.3, rescale="none", elect="count", lambda=0.7)
output d4 = della(a, b, c, base=base, density=[0.1, 1.0, 0.45], epsilon=[0.3, 0.0, 0.45], rescale="l1")
output l1 = della_linear(a, b, c, base=base, density=0.4, epsilon=0.15, rescale="l1", weight=[0.5, 0.3, 0.2])
output l2 = della_linear(a, b, base=base, density=[0.7, 1.0], epsilon=[0.25, 0.0], rescale="inverse")
output l3 = della_linear(a, b, base=base, density=0.2, epsilon=0.1, rescale="none", normalize=true, lambda=1.5)
"""

#: the outputs' calls, for the closed-form reference: (method, inputs, parameters)
CALLS = {
    "d1": ("della", "abc", dict(weight=[1.0, 0.6, 0.3], density=[0.5] * 3, epsilon=[0.1] * 3,
                                rescale="l1", normalize=True, weighted_elect=True)),
    "d2": ("della", "ab", dict(density=[0.3, 0.8], epsilon=[0.2, 0.05], rescale="inverse")),
    "d3": ("della", "ab", dict(density=[0.6] * 2, epsilon=[0.3] * 2, rescale="none",
                               elect="count", lambda_=0.7)),
    "d4": ("della", "abc", dict(density=[0.1, 1.0, 0.45], epsilon=[0.3, 0.0, 0.45],
                                rescale="l1")),
    "l1": ("della_linear", "abc", dict(density=[0.4] * 3, epsilon=[0.15] * 3, rescale="l1",
                                       weight=[0.5, 0.3, 0.2])),
    "l2": ("della_linear", "ab", dict(density=[0.7, 1.0], epsilon=[0.25, 0.0],
                                      rescale="inverse")),
    "l3": ("della_linear", "ab", dict(density=[0.2] * 2, epsilon=[0.1] * 2, rescale="none",
                                      normalize=True, lambda_=1.5)),
}


def _tensors(seed: int) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    return {
        "w2": r.standard_normal((96, 40)).astype(np.float32),
        "w3": r.standard_normal((12, 5, 16)).astype(np.float32),
        # quarters in [-0.75, 0.75]: many equal magnitudes in every row (rank ties)
        "tie": (r.integers(-3, 4, (64, 24)) * 0.25).astype(np.float32),
        "v": r.standard_normal((40,)).astype(np.float32),  # 1-D: always whole
    }


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("della-ckpt")
    for i, name in enumerate(["base", "a", "b", "c"]):
        make_safetensors(root / name, _tensors(100 + i))
    return root


def _recipe(tmp_path: Path, ckpts: Path) -> Path:
    (tmp_path / "ckpt").symlink_to(ckpts)
    r = tmp_path / "r.merge"
    r.write_text(RECIPE)
    return r


def _hashes(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256(a.tobytes()).hexdigest() + str(a.dtype) + str(a.shape)
            for n, a in load_tensors(folder).items()}


def test_the_plan_splits_della_and_passes_over_blocks_for_l1(tmp_path, ckpts):
    r = _recipe(tmp_path, ckpts)
    comp = compile(r, max_memory=LIMIT)
    assert not comp.checked.warnings  # no W302: della is split
    for out in comp.plan.outputs:
        steps = {s.name: s for s in out.steps}
        assert steps["v"].rows == []  # 1-D: whole
        for name, rows in (("w2", 96), ("w3", 12), ("tie", 64)):
            s = steps[name]
            assert len(s.rows) > 4, (out.output, name)  # many blocks
            assert s.rows[0][0] == 0 and s.rows[-1][1] == rows
            method = CALLS[out.output][0]
            want = [f"l1 {method}#0"] if CALLS[out.output][2]["rescale"] == "l1" else []
            assert s.passes == want, (out.output, name, s.passes)
    # unsplit, an l1 rescale needs no pass: the call computes its own norms
    whole = compile(r, max_memory=1 << 30)
    assert all(s.passes == [] and s.rows == [] for o in whole.plan.outputs for s in o.steps)


@pytest.mark.parametrize("backend", ["numpy", pytest.param("torch", marks=pytest.mark.torch),
                                     pytest.param("jax", marks=pytest.mark.jax)])
def test_blocks_give_the_bytes_of_the_whole_tensor_build(tmp_path, ckpts, backend):
    """On every backend (the whole tensor computed by the backend, the blocks' masks made
    on the host)."""
    r = _recipe(tmp_path, ckpts)
    build(r, tmp_path / "whole", jobs=1, backend=backend)
    build(r, tmp_path / "blocks", max_memory=LIMIT, jobs=1, backend=backend)
    for out in CALLS:
        a, b = _hashes(tmp_path / "whole" / out), _hashes(tmp_path / "blocks" / out)
        assert a.keys() == {"w2", "w3", "tie", "v"}
        assert a == b, out


def test_blocks_on_workers_and_other_block_sizes_give_the_same_bytes(tmp_path, ckpts):
    r = _recipe(tmp_path, ckpts)
    build(r, tmp_path / "whole", jobs=1)
    build(r, tmp_path / "small", max_memory=700, jobs=3)  # blocks of a row or two
    build(r, tmp_path / "mid", max_memory=6 * 1024, jobs=2)
    for out in CALLS:
        want = _hashes(tmp_path / "whole" / out)
        assert _hashes(tmp_path / "small" / out) == want, out
        assert _hashes(tmp_path / "mid" / out) == want, out


# ------------------------------------------------------------ closed-form reference


def _ranks(row: np.ndarray) -> np.ndarray:
    """Ascending rank of |row| (0 smallest); of equal magnitudes the lower index ranks
    higher."""
    n = row.size
    order = sorted(range(n), key=lambda j: (abs(float(row[j])), -j))
    r = np.empty(n, dtype=np.int64)
    r[order] = np.arange(n)
    return r


def _drop(tau: np.ndarray, seed: int, i: int, d: float, e: float, rescale: str):
    """DELLA's drop of one float32 task vector, in float64 except the keep probability,
    which the method defines in float32 (one rounding per operation)."""
    shape = tau.shape
    n = shape[-1] if tau.ndim >= 2 else tau.size
    rows = tau.reshape(-1, n)
    if n > 1:
        offset, step = np.float32(d - e), np.float32(2.0 * e / (n - 1))
    else:
        offset, step = np.float32(d), np.float32(0.0)
    if offset >= 1.0 and step == 0.0:
        return tau.astype(np.float64)
    u = uniform(seed, i, shape).reshape(rows.shape)
    out = np.zeros(rows.shape)
    for k in range(rows.shape[0]):
        r = _ranks(rows[k]).astype(np.float32)
        p = np.minimum(r * step + offset, np.float32(1.0))
        keep = u[k] < p
        out[k] = np.where(keep, rows[k].astype(np.float64) / (p if rescale == "inverse"
                                                              else 1.0), 0.0)
    if rescale == "l1":
        s = np.abs(out).sum()
        out = out * (np.abs(tau.astype(np.float64)).sum() / s) if s else out * 0.0
    return out.reshape(shape)


def _reference(method: str, taus: list, seeds: int, kw: dict) -> np.ndarray:
    n = len(taus)
    w = kw.get("weight", [1.0] * n)
    dropped = [_drop(t, seeds, i, kw["density"][i], kw["epsilon"][i], kw["rescale"])
               for i, t in enumerate(taus)]
    lam = kw.get("lambda_", 1.0)
    if method == "della_linear":
        total = sum(w) if kw.get("normalize", False) else 1.0
        return lam * sum(wi * t for wi, t in zip(w, dropped)) / total
    if kw.get("elect", "mass") == "count":
        vote = sum(np.sign(t) for t in dropped)
    else:
        vote = sum((wi if kw.get("weighted_elect") else 1.0) * t for wi, t in zip(w, dropped))
    gamma = np.sign(vote)
    num = np.zeros_like(vote)
    den = np.zeros_like(vote)
    for wi, t in zip(w, dropped):
        agree = (np.sign(t) == gamma) & (t != 0)
        num += np.where(agree, wi * t, 0.0)
        den += np.where(agree, wi, 0.0)
    if kw.get("normalize", True):
        num = np.where(den != 0, num / np.where(den != 0, den, 1.0), 0.0)
    return lam * num


def test_blocks_equal_a_closed_form_della(tmp_path, ckpts):
    r = _recipe(tmp_path, ckpts)
    build(r, tmp_path / "blocks", max_memory=LIMIT, jobs=1)
    comp = compile(r)
    models = {m: load_tensors(ckpts / m) for m in ("base", "a", "b", "c")}
    checked = 0
    for lo in comp.lowered:
        method, names, kw = CALLS[lo.output.name]
        got = load_tensors(tmp_path / "blocks" / lo.output.name)
        for t in lo.tensors:
            (call,) = [n for n in topo(t.node) if n.op == "merge"]
            assert call.attr("method") == method
            base = models["base"][t.name]
            taus = [models[m][t.name] - base for m in names]  # float32, as the build forms them
            want = base.astype(np.float64) + _reference(method, taus, call.attr("seed"), kw)
            np.testing.assert_allclose(got[t.name], want, rtol=2e-6, atol=2e-6,
                                       err_msg=f"{lo.output.name} {t.name}")
            # the drop of the first input keeps some entries and drops others
            first = _drop(taus[0], call.attr("seed"), 0, kw["density"][0], kw["epsilon"][0],
                          "none")
            assert 0 < np.count_nonzero(first) < np.count_nonzero(taus[0])
            checked += 1
    assert checked == len(CALLS) * 4


# ------------------------------------------------------------ the runtime's pieces


def _call(shape, density, epsilon, rescale="l1"):
    from mergec.ir.nodes import Node

    args = tuple(Node("load", (), (("source", s), ("tensor", "t")), shape, "float32")
                 for s in ("a", "b"))
    params = (("density", tuple(density)), ("epsilon", tuple(epsilon)), ("rescale", rescale))
    return Node("merge", args, (("method", "della"), ("params", params), ("seed", 99)), shape,
                "float32")


def test_block_masks_and_l1_scales_are_the_whole_tensors():
    """The masks and keep probabilities of a block are the rows of the whole tensor's; the
    L1 ratios summed over blocks equal the method's whole-tensor ones to the last bit (on
    values whose float64 sums depend on the order they are added in)."""
    from mergec.backends import base as B
    from mergec.backends.reference import ReferenceBackend
    from mergec.methods.della import ranked_keep
    from mergec.runtime.prepass import Blocks, ranked_block, ranked_l1

    rng = np.random.default_rng(4)
    shape = (20, 7, 33)
    xs = [(rng.standard_normal(shape) * 2.0 ** rng.integers(-40, 40, shape)).astype(np.float32)
          for _ in range(2)]
    xs[1][3] = 0.5  # a row of equal magnitudes
    n = _call(shape, (0.35, 0.9), (0.3, 0.1))
    params = dict(n.attr("params"))
    rows = [(0, 3), (3, 8), (8, 19), (19, 20)]
    ops = ReferenceBackend()
    whole = []
    for i, (x, d, e) in enumerate(zip(xs, (0.35, 0.9), (0.3, 0.1))):
        xr = x.reshape(-1, 33)
        keep, prob = ranked_keep(ops, xr, uniform(99, i, shape).reshape(-1, 33), d, e)
        whole.append((keep.reshape(shape), prob.reshape(shape)))
        assert 0 < np.count_nonzero(keep) < keep.size
    for r0, r1 in rows:
        got = ranked_block(n, params, [x[r0:r1] for x in xs], (r0, r1))
        for (k, p), (wk, wp) in zip(got, whole):
            np.testing.assert_array_equal(k, wk[r0:r1])
            np.testing.assert_array_equal(p.view(np.uint32), wp[r0:r1].view(np.uint32))
    masks, scales = ranked_l1(n, params, Blocks(rows, None),
                              lambda b, r: [x[r[0]:r[1]] for x in xs], ops)
    for i, (x, (wk, _)) in enumerate(zip(xs, whole)):
        xr = x.reshape(-1, 33)
        want = B.abs_sum64(xr) / B.abs_sum64(B.keep(xr, wk.reshape(xr.shape)))
        assert scales[i] == want  # exactly
        got = np.concatenate([np.unpackbits(masks[(b, i)], count=(r1 - r0) * 7 * 33)
                              .reshape((r1 - r0, 7, 33)) for b, (r0, r1) in enumerate(rows)])
        np.testing.assert_array_equal(got.astype(bool), wk)


def test_an_input_kept_whole_gets_no_mask():
    from mergec.runtime.prepass import ranked_block

    n = _call((4, 6), (1.0, 0.5), (0.0, 0.2), "inverse")
    xs = [np.ones((2, 6), np.float32), np.arange(12, dtype=np.float32).reshape(2, 6)]
    got = ranked_block(n, dict(n.attr("params")), xs, (1, 3))
    assert got[0] is None and got[1] is not None


def test_given_masks_are_what_the_method_keeps():
    """The method keeps exactly the entries of masks it is given (no draw), and refuses an
    inverse or l1 rescale without the probabilities or ratios that go with them."""
    from mergec.backends.reference import ReferenceBackend
    from mergec.methods import run_method

    x = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    mask = (x % 3 == 0)
    params = {"density": 0.5, "epsilon": 0.1, "masks": (mask,)}
    got = run_method(ReferenceBackend(), "della_linear", [x], {**params, "rescale": "none"}, 5)
    np.testing.assert_array_equal(got, np.where(mask, x, 0))
    probs = np.full((3, 4), 0.5, np.float32)
    got = run_method(ReferenceBackend(), "della_linear", [x],
                     {**params, "rescale": "inverse", "keep_probs": (probs,)}, 5)
    np.testing.assert_array_equal(got, np.where(mask, 2 * x, 0))
    got = run_method(ReferenceBackend(), "della_linear", [x],
                     {**params, "rescale": "l1", "l1_scales": (0.25,)}, 5)
    np.testing.assert_array_equal(got, np.where(mask, x / 4, 0))
    for rescale, what in (("inverse", "keep probabilities"), ("l1", "L1 ratios")):
        with pytest.raises(ValueError) as e:
            run_method(ReferenceBackend(), "della_linear", [x], {**params, "rescale": rescale}, 5)
        assert str(e.value) == (f"method della_linear: with given masks, rescale="
                                f"'{rescale}' needs the whole tensor's {what}")
