"""The method library end to end: model-wide TIES trimming, seeded randomness that does not
depend on threads, tensor order or sharding, and the default seed in the model card."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from mergec.api import build, compile
from mergec.demo import load_tensors


def write(tmp_path: Path, family: dict, text: str) -> Path:
    ckpt = tmp_path / "ckpt"
    if not ckpt.exists():
        ckpt.symlink_to(Path(family["base"]).parent)
    p = tmp_path / "r.merge"
    p.write_text(text)
    return p


HEAD = ('model base = "./ckpt/base"\nmodel math = "./ckpt/math"\n'
        'model code = "./ckpt/code"\n')


def f32(d):
    return {k: np.asarray(v, dtype=np.float32) for k, v in d.items()}


def ties_model_reference(base, fts, density):
    """TIES with the trim threshold over the whole model, straight from the paper."""
    names = list(base)
    taus = [{k: ft[k] - base[k] for k in names} for ft in fts]
    trimmed = []
    for tau in taus:
        allmag = np.sort(np.concatenate([np.abs(tau[k]).ravel() for k in names]))[::-1]
        k = int(np.floor(density * allmag.size + 0.5))
        thr = allmag[k - 1]
        trimmed.append({n: np.where(np.abs(tau[n]) >= thr, tau[n], 0) for n in names})
    out = {}
    for n in names:
        stack = np.stack([t[n] for t in trimmed]).astype(np.float64)
        sign = np.sign(stack.sum(0))
        agree = (np.sign(stack) == sign) & (stack != 0)
        cnt = agree.sum(0)
        merged = np.where(cnt > 0, (stack * agree).sum(0) / np.maximum(cnt, 1), 0)
        out[n] = base[n] + merged
    return out


def test_ties_trim_over_the_whole_model(tmp_path, family_f32):
    r = write(tmp_path, family_f32, HEAD + 'output m = ties(math, code, base=base, density=0.3, '
              'trim="model") { dtype = "float32" }\n')
    build(r, tmp_path / "out")
    got = load_tensors(tmp_path / "out" / "m")
    fam = {k: f32(load_tensors(family_f32[k])) for k in ("base", "math", "code")}
    ref = ties_model_reference(fam["base"], [fam["math"], fam["code"]], 0.3)
    for n in ref:
        np.testing.assert_allclose(got[n], ref[n], rtol=1e-6, atol=1e-7, err_msg=n)
    # and it is not the per-tensor trim
    per_tensor = tmp_path / "pt.merge"
    per_tensor.write_text(HEAD + 'output m = ties(math, code, base=base, density=0.3) '
                          '{ dtype = "float32" }\n')
    build(per_tensor, tmp_path / "out2")
    other = load_tensors(tmp_path / "out2" / "m")
    assert any(not np.array_equal(other[n], got[n]) for n in got)


def digest(folder: Path) -> dict[str, str]:
    return {k: hashlib.sha256(np.ascontiguousarray(v).view(np.uint8)).hexdigest()
            for k, v in load_tensors(folder).items()}


RANDOM = HEAD + ("set seed = 7\n"
                 "output d = dare_ties(math, code, base=base, density=0.4)\n"
                 "output e = della(math, code, base=base, density=0.5, epsilon=0.1)\n"
                 "output f = dare_linear(math, code, base=base, density=0.3, rescale=\"l1\")\n")


def test_random_methods_do_not_depend_on_threads_order_or_shards(tmp_path, family, monkeypatch,
                                                                backend):
    """One worker and two (worker processes or threads; with torch, also one and two
    intra-op threads), tensors in the reverse order, and shards: the same bytes."""
    r = write(tmp_path, family, RANDOM)
    if backend == "torch":
        import torch

        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
    else:
        threads, set_threads = None, lambda n: None
    try:
        set_threads(1)
        build(r, tmp_path / "a", backend=backend, jobs=1)
        set_threads(2)
        build(r, tmp_path / "b", backend=backend, jobs=2, shard_size=40_000)
    finally:
        if threads is not None:
            set_threads(threads)
    # tensors computed in the reverse order
    comp = compile(r, backend=backend)
    for lo in comp.lowered:
        lo.tensors.reverse()
    build(r, tmp_path / "c", compiled=comp, backend=backend)
    for out in ("d", "e", "f"):
        a = digest(tmp_path / "a" / out)
        assert a == digest(tmp_path / "b" / out) == digest(tmp_path / "c" / out)
    assert len(list((tmp_path / "b" / "d").glob("model-*.safetensors"))) > 1


def test_a_different_seed_changes_dare(tmp_path, family):
    r = write(tmp_path, family, RANDOM)
    build(r, tmp_path / "a")
    build(r, tmp_path / "b", overrides=None, text=RANDOM.replace("seed = 7", "seed = 8"))
    a, b = load_tensors(tmp_path / "a" / "d"), load_tensors(tmp_path / "b" / "d")
    differ = [n for n in a if not np.array_equal(a[n], b[n])]
    assert len(differ) == len(a)  # every tensor draws its own mask


def test_default_seed_is_used_and_recorded(tmp_path, family):
    from mergec.check.program import DEFAULT_SEED

    text = RANDOM.replace("set seed = 7\n", "")
    r = write(tmp_path, family, text)
    build(r, tmp_path / "a")
    card = (tmp_path / "a" / "d" / "README.md").read_text()
    assert str(DEFAULT_SEED) in card
    r.write_text(text.replace(HEAD, HEAD + f"set seed = {DEFAULT_SEED}\n"))
    build(r, tmp_path / "b")
    assert digest(tmp_path / "a" / "d") == digest(tmp_path / "b" / "d")


def test_where_and_ramp_reach_every_parameter(tmp_path, family_f32):
    """A per-input weight list with ramps, and a density override per block."""
    r = write(tmp_path, family_f32, HEAD + (
        "output m = ties(math, code, base=base, weight=[ramp(1, 0), ramp(0, 1)], density=1, "
        "weighted_elect=true)\n"
        '    where layers[3:4] { density = 0.5 }\n'
        '    { dtype = "float32" }\n'))
    build(r, tmp_path / "o")
    got = load_tensors(tmp_path / "o" / "m")
    fam = {k: f32(load_tensors(family_f32[k])) for k in ("base", "math", "code")}
    n = "model.layers.0.mlp.up_proj.weight"  # block 0 of 4: weights [1, 0] -> math's delta
    np.testing.assert_allclose(got[n], fam["math"][n], rtol=1e-6, atol=1e-7)
    n = "model.layers.3.mlp.up_proj.weight"  # weights [0, 1], half trimmed
    tau = fam["code"][n] - fam["base"][n]
    k = int(np.floor(0.5 * tau.size + 0.5))
    order = np.argsort(-np.abs(tau).ravel(), kind="stable")
    keep = np.zeros(tau.size, bool)
    keep[order[:k]] = True
    # the vote is weighted: math (weight 0) has no say, so code's trimmed delta is taken
    expected = fam["base"][n] + np.where(keep.reshape(tau.shape), tau, 0)
    np.testing.assert_allclose(got[n], expected, rtol=1e-6, atol=1e-7)
