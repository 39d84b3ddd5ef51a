"""`lowrank(delta, rank=|energy=)` outputs: PEFT adapters whose factors are the truncated
SVD of each module's delta, checked against NumPy's SVD; the plan's ranks and bounds; the
adapter read back as an input; diagnostics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from mergec.api import build, check, compile as compile_recipe
from mergec.demo import load_tensors
from mergec.diagnostics import MergecError

PREFIX = "base_model.model."


def recipe(tmp_path: Path, family_f32, text: str) -> Path:
    ckpt = tmp_path / "ckpt"
    if not ckpt.exists():
        ckpt.symlink_to(Path(family_f32["base"]).parent)
    r = tmp_path / "r.merge"
    r.write_text('model base = "./ckpt/base"\nmodel math = "./ckpt/math"\n'
                 'model code = "./ckpt/code"\n\n' + text)
    return r


def f32(folder) -> dict[str, np.ndarray]:
    return {k: v.astype(np.float32) for k, v in load_tensors(folder).items()}


def is_factored(name: str, shape) -> bool:
    return len(shape) == 2 and name.endswith(".weight") and "embed" not in name


def svd_truncation(d: np.ndarray, r: int):
    """The best rank-r approximation of d and its relative error, by NumPy in float64."""
    u, s, vt = np.linalg.svd(d.astype(np.float64), full_matrices=False)
    approx = (u[:, :r] * s[:r]) @ vt[:r]
    return approx, math.sqrt((s[r:] ** 2).sum() / (s ** 2).sum()), s


def test_rank_r_factors_are_the_svd_truncation(tmp_path, family_f32):
    r = recipe(tmp_path, family_f32, "output lo = lowrank(math - base, rank=5)\n")
    [res] = build(r, tmp_path / "out")
    base, math_ = f32(family_f32["base"]), f32(family_f32["math"])
    w = load_file(str(tmp_path / "out/lo/adapter_model.safetensors"))
    cfg = json.loads((tmp_path / "out/lo/adapter_config.json").read_text())
    errors = {m.module: m.error for m in res.modules}
    modules = sorted(n[:-len(".weight")] for n, v in base.items() if is_factored(n, v.shape))
    assert sorted(errors) == modules == cfg["target_modules"]
    assert (cfg["r"], cfg["lora_alpha"], cfg["rank_pattern"], cfg["peft_type"]) == \
        (5, 5, {}, "LORA")
    for m in modules:
        d = math_[m + ".weight"] - base[m + ".weight"]
        a, b = w[f"{PREFIX}{m}.lora_A.weight"], w[f"{PREFIX}{m}.lora_B.weight"]
        assert a.shape == (5, d.shape[1]) and b.shape == (d.shape[0], 5)
        approx, tail, s = svd_truncation(d, 5)
        ba = b.astype(np.float64) @ a.astype(np.float64)
        np.testing.assert_allclose(ba, approx, rtol=0, atol=1e-6 * s[0])
        # the achieved error is the SVD tail, and the build reports it
        achieved = np.linalg.norm(d - ba) / np.linalg.norm(d)
        assert achieved == pytest.approx(tail, rel=1e-4)
        assert errors[m] == pytest.approx(tail, rel=1e-9)
        # B = U S^(1/2), A = S^(1/2) V^T: the factors are balanced
        np.testing.assert_allclose(np.linalg.norm(b, axis=0), np.sqrt(s[:5]), rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), np.sqrt(s[:5]), rtol=1e-5)
    # the tensors that are not factored and changed are written whole, as math has them
    saved = {k[len(PREFIX):]: v for k, v in w.items() if ".lora_" not in k}
    changed = sorted(n for n, v in base.items() if not is_factored(n, v.shape)
                     and np.any(math_[n] != v))
    assert sorted(saved) == changed and changed
    for n, v in saved.items():
        np.testing.assert_allclose(v, math_[n], rtol=0, atol=1e-7)
    assert cfg["modules_to_save"] == sorted({n.rsplit(".", 1)[0] for n in changed})


def test_energy_picks_the_smallest_rank_and_writes_a_rank_pattern(tmp_path, family_f32):
    r = recipe(tmp_path, family_f32,
               'output lo = lowrank(code - base, energy=0.6) { others = "drop" }\n')
    [res] = build(r, tmp_path / "out")
    base, code = f32(family_f32["base"]), f32(family_f32["code"])
    w = load_file(str(tmp_path / "out/lo/adapter_model.safetensors"))
    cfg = json.loads((tmp_path / "out/lo/adapter_config.json").read_text())
    ranks = {}
    for m in cfg["target_modules"]:
        d = (code[m + ".weight"] - base[m + ".weight"]).astype(np.float64)
        s2 = np.linalg.svd(d, compute_uv=False) ** 2
        want = int(np.argmax(np.cumsum(s2) / s2.sum() >= 0.6)) + 1
        assert w[f"{PREFIX}{m}.lora_A.weight"].shape[0] == want
        ranks[m] = want
    assert len(set(ranks.values())) > 1  # the ranks differ, so there is a pattern
    r0 = cfg["r"]
    assert cfg["lora_alpha"] == r0
    assert cfg["rank_pattern"] == {m: k for m, k in ranks.items() if k != r0}
    assert cfg["alpha_pattern"] == cfg["rank_pattern"]
    assert {m.module: m.rank for m in res.modules} == ranks
    assert all(m.error <= math.sqrt(0.4) + 1e-12 for m in res.modules)
    assert cfg["modules_to_save"] is None and not [k for k in w if ".lora_" not in k]


def test_the_adapter_reads_back_as_the_truncated_delta(tmp_path, family_f32):
    """mergec's own reader (scale alpha/r per module from rank_pattern/alpha_pattern) gives
    base + B @ A for the adapter it wrote."""
    r = recipe(tmp_path, family_f32,
               'output lo = lowrank(code - base, energy=0.5) { others = "drop" }\n')
    build(r, tmp_path / "out")
    r2 = tmp_path / "back.merge"
    r2.write_text('model base = "./ckpt/base"\nadapter lo = "./out/lo"\n'
                  'output m = base + lo { dtype = "float32" }\n')
    build(r2, tmp_path / "out2")
    base = f32(family_f32["base"])
    w = load_file(str(tmp_path / "out/lo/adapter_model.safetensors"))
    got = f32(tmp_path / "out2/m")
    mods = {k[len(PREFIX):-len(".lora_A.weight")] for k in w if k.endswith("lora_A.weight")}
    for n, v in base.items():
        m = n[:-len(".weight")]
        if m in mods:
            ba = w[f"{PREFIX}{m}.lora_B.weight"] @ w[f"{PREFIX}{m}.lora_A.weight"]
            np.testing.assert_allclose(got[n], v + ba, rtol=0, atol=2e-7)
        else:
            np.testing.assert_array_equal(got[n], v)


def test_full_rank_reproduces_the_delta(tmp_path, family_f32, backend):
    """On every backend: the SVD runs where the build computes."""
    r = recipe(tmp_path, family_f32, "output lo = lowrank(code - base, rank=100000)\n")
    [res] = build(r, tmp_path / "out", backend=backend, device="cpu")
    base, code = f32(family_f32["base"]), f32(family_f32["code"])
    w = load_file(str(tmp_path / "out/lo/adapter_model.safetensors"))
    for m in res.modules:
        d = code[m.module + ".weight"] - base[m.module + ".weight"]
        assert m.rank == min(d.shape) and m.error < 1e-6
        ba = w[f"{PREFIX}{m.module}.lora_B.weight"] @ w[f"{PREFIX}{m.module}.lora_A.weight"]
        np.testing.assert_allclose(ba, d, rtol=0, atol=1e-6)


def test_plan_shows_ranks_and_error_bounds(tmp_path, family_f32, run_cli):
    r = recipe(tmp_path, family_f32, "output lo = lowrank(math - base, rank=16)\n"
               "output le = lowrank(math - base, energy=0.9)\n")
    plan = compile_recipe(r).plan
    lo, le = plan.outputs
    base = f32(family_f32["base"])
    want = sorted(n[:-len(".weight")] for n, v in base.items() if is_factored(n, v.shape))
    assert [m.module for m in lo.adapter] == want
    for m in lo.adapter:
        k = min(m.shape)
        assert m.rank == min(16, k) and m.max_error == pytest.approx(math.sqrt(1 - m.rank / k))
    assert all(m.rank is None and m.max_error == pytest.approx(math.sqrt(0.1))
               for m in le.adapter)
    q = next(m for m in lo.adapter if m.module == "model.layers.0.self_attn.q_proj")
    assert (q.shape, q.rank) == ([64, 64], 16)
    # at most: two factors per module in float32 + the tensors that may be written whole
    written = sum(16 * (m.shape[0] + m.shape[1]) * 4 for m in lo.adapter) + sum(
        v.size * 4 for n, v in base.items() if not is_factored(n, v.shape))
    assert lo.bytes_written == written
    code, out, _ = run_cli("plan", r)
    assert code == 0
    assert "  adapter        29 modules (LoRA, PEFT format); relative error at most:" in out
    assert ("    model.layers.0.self_attn.q_proj  [64, 64]     rank 16        <= 0.8660"
            in out.splitlines())
    assert "rank by energy" in out


def test_build_reports_the_achieved_error(tmp_path, family_f32, run_cli):
    r = recipe(tmp_path, family_f32,
               'output lo = lowrank(math - base, rank=4) { dtype = "bfloat16" }\n')
    code, out, err = run_cli("build", r, "-o", tmp_path / "out", "-q")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].startswith("  29 modules (rank 4 x29); relative error: largest 0.")
    base, math_ = f32(family_f32["base"]), f32(family_f32["math"])
    q = "model.layers.0.self_attn.q_proj.weight"
    d = math_[q] - base[q]
    tail = svd_truncation(d, 4)[1]
    row = next(x for x in lines if x.strip().startswith("model.layers.0.self_attn.q_proj "))
    assert row.split()[-1] == f"{tail:.4f}"
    w = load_file(str(tmp_path / "out/lo/adapter_model.safetensors"))
    assert {str(v.dtype) for v in w.values()} == {"bfloat16"}


def errors_of(tmp_path, family_f32, text):
    with pytest.raises(MergecError) as ei:
        check(recipe(tmp_path, family_f32, text))
    return [(d.code, d.message, d.span.line if d.span else None, d.help)
            for d in ei.value.diagnostics]


def test_diagnostics(tmp_path, family_f32):
    got = errors_of(tmp_path, family_f32, "output a = lowrank(math, rank=4)\n"
                    "output b = lowrank(math - base)\n"
                    "output c = base + lowrank(math - base, rank=4)\n"
                    'output d = lowrank(math - base, rank=4) { others = "keep" }\n'
                    "output e = lowrank(task_arithmetic(math - base, code - base), rank=4)\n"
                    "output f = lowrank(math - base, rank=0)\n"
                    "output g = lowrank(code - base, rank=2)\n"
                    "output h = base + g\n")
    assert got == [
        ("E260", "`lowrank` takes a Delta, found a Model", 5,
         "subtract the model the adapter will be applied to: `lowrank(tuned - base, rank=16)`"),
        ("E260", "`lowrank` takes exactly one of `rank` and `energy`", 6,
         "`rank=16` keeps 16 singular values per module; `energy=0.9` the fewest that hold "
         "90% of its squared norm"),
        ("E261", "`lowrank(...)` makes an output of its own and cannot be part of an "
         "expression", 7, "write it as the whole value of an output: `output NAME = "
         "lowrank(...)`"),
        ("E262", '`others` must be "save" or "drop"', 8,
         '"save" writes changed embeddings and norms whole (PEFT\'s modules_to_save); '
         '"drop" leaves them out'),
        ("E262", "10 tensors of this delta are not low-rank (first: `model.embed_tokens.weight`)"
         " and are written whole, which needs the model the adapter applies to", 9,
         'name it with `{ base = MODEL }`, or leave them out with `{ others = "drop" }`'),
        ("E260", "`rank` must be a whole number >= 1, found 0", 10, "for example `rank=16`"),
        ("E261", "`g` is written as an adapter or a mixture of experts; it is not a value "
         "other statements can use", 12, "use the expression it is made from instead: "
         "`let` a name for it and use that name in both places"),
    ]


def test_base_option_and_dropped_tensors_warning(tmp_path, family_f32):
    checked = check(recipe(tmp_path, family_f32,
                           "output e = lowrank(task_arithmetic(math - base, code - base), "
                           "rank=4) { base = base }\n"
                           'output d = lowrank(math - base, rank=4) { others = "drop" }\n'))
    e, d = checked.outputs
    assert e.form.base.name == "base" and len(e.form.saved) == 10 and not e.form.dropped
    assert d.form.saved == () and len(d.form.dropped) == 10
    [w] = checked.warnings
    assert (w.code, w.message, w.span.line) == (
        "W350", "10 tensors of the delta are not low-rank and are left out of the adapter "
        "(first: `model.embed_tokens.weight`)", 6)


def test_svds_over_the_memory_limit_are_warned_about(tmp_path, family_f32):
    r = recipe(tmp_path, family_f32, "output lo = lowrank(math - base, rank=4)\n")
    # whole, a [128, 64] module takes 8192 entries at 28 bytes (224 kB) while decomposed;
    # the Gram route needs 64 * 64 entries at 24 bytes (96 kB) plus a block of rows: under
    # 90 kB neither fits, for the 21 modules of 64 * 64 entries or more
    warned = [w for w in compile_recipe(r, max_memory=90_000).checked.warnings
              if w.code == "W353"]
    assert [w.message for w in warned] == [
        "output `lo`: 21 of 29 modules need more than the memory limit 87.9 KiB for their "
        "SVD (`lm_head` [128, 64]: about 224.0 KiB)"]
    assert not [w for w in compile_recipe(r, max_memory=150_000).checked.warnings
                if w.code == "W353"]


def _adapter(folder: Path):
    w = load_file(str(folder / "adapter_model.safetensors"))
    return {k[len(PREFIX):-len(".lora_A.weight")]:
            w[k.replace("lora_A", "lora_B")].astype(np.float64) @ w[k].astype(np.float64)
            for k in w if k.endswith("lora_A.weight")}


@pytest.mark.parametrize("out", [
    "lowrank(math - base, rank=5)",
    "lowrank(math - base, energy=0.9)",
    # a merge whose threshold is taken over the whole tensor: the blocks run its pass
    "lowrank(ties(math, code, base=base, density=0.5) - base, rank=4) { base = base }",
])
def test_under_a_memory_limit_the_gram_route_gives_the_same_adapter(tmp_path, family_f32,
                                                                     out, monkeypatch):
    import mergec.runtime.extract as extract

    routed = []
    gram = extract.gram_factors
    monkeypatch.setattr(extract, "gram_factors",
                        lambda x_rows, shape, *a: routed.append(shape) or
                        gram(x_rows, shape, *a))
    # 150 kB: the [128, 64] and [64, 128] modules (229 kB whole) take the Gram route, in
    # blocks of 25 rows (X^T X) or over pairs of blocks (X X^T); [64, 64] ones stay whole
    r = recipe(tmp_path, family_f32, f"output lo = {out}\n")
    [whole] = build(r, tmp_path / "whole")
    [blocked] = build(r, tmp_path / "blocked", max_memory=150_000)
    assert set(routed) == {(128, 64), (64, 128)}  # both sides of the Gram route ran
    assert [(m.module, m.shape, m.rank) for m in blocked.modules] == \
        [(m.module, m.shape, m.rank) for m in whole.modules]
    for a, b in zip(whole.modules, blocked.modules):
        assert b.error == pytest.approx(a.error, abs=1e-6), a.module
    got, want = _adapter(tmp_path / "blocked/lo"), _adapter(tmp_path / "whole/lo")
    assert sorted(got) == sorted(want)
    for m in want:
        scale = max(1e-12, float(np.linalg.norm(want[m])))
        assert float(np.linalg.norm(got[m] - want[m])) <= 1e-5 * scale, m
    assert json.loads((tmp_path / "blocked/lo/adapter_config.json").read_text()) == \
        json.loads((tmp_path / "whole/lo/adapter_config.json").read_text())
