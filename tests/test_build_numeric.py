"""End-to-end numbers: recipes built with the NumPy backend (the default on a CPU) and with
the torch backend equal an independent numpy computation of the same formulas.

Every test writes a recipe into its own folder next to a symbolic link `ckpt` that points
at the synthetic family, builds it with `mergec.api.build`, loads the written safetensors
and compares them with float64 numpy computed straight from the input tensors:

* bfloat16 / float16 outputs: the reference is rounded to the output dtype and must agree
  within one unit in the last place of that dtype;
* float32 outputs: rtol 1e-6;
* both with an absolute floor of 4 float32 ulps of the tensor's largest value, for the
  entries where terms cancel (mergec computes in float32);
* tensors that are copies of one input tensor (stack, t=0/1) must be bit-identical.

Each test runs on the bf16 family and on the float32 family, with each backend (the
`backend` fixture of conftest: numpy, and torch where it is installed).
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from functools import lru_cache
from pathlib import Path

import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy before safetensors loads
import numpy as np
import pytest
from safetensors.numpy import load_file

import mergec.api
from mergec.demo import llama_shapes, load_tensors

BF16 = np.dtype(ml_dtypes.bfloat16)
NP_DTYPES = {"bfloat16": BF16, "float16": np.dtype(np.float16),
             "float32": np.dtype(np.float32)}
N_LAYERS = 4  # FAMILY_KW in conftest
SUFFIXES = tuple(n.split(".", 3)[3] for n in llama_shapes(layers=1) if ".layers.0." in n)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(params=["bf16", "f32"])
def fam(request, backend) -> dict:
    """The family under test: {"root": folder, "dtype": stored dtype, "paths": name->dir,
    "backend": what builds it}."""
    paths = request.getfixturevalue("family" if request.param == "bf16" else "family_f32")
    return {"root": paths["base"].parent, "paths": paths, "backend": backend,
            "dtype": "bfloat16" if request.param == "bf16" else "float32"}


@lru_cache(maxsize=None)
def _inputs(folder: str) -> dict[str, np.ndarray]:
    """Input tensors as float64 (the stored values upcast exactly)."""
    return {k: np.asarray(v, dtype=np.float32).astype(np.float64)
            for k, v in load_tensors(folder).items()}


def inp(fam, name: str) -> dict[str, np.ndarray]:
    return _inputs(str(fam["paths"][name]))


def raw(fam, name: str) -> dict[str, np.ndarray]:
    """Input tensors exactly as stored."""
    return load_tensors(fam["paths"][name])


def build(tmp_path: Path, fam, text: str, overrides=None) -> dict[str, dict[str, np.ndarray]]:
    """Write `text` as r.merge beside `ckpt` -> the family, build it, load every output."""
    (tmp_path / "ckpt").symlink_to(fam["root"], target_is_directory=True)
    recipe = tmp_path / "r.merge"
    recipe.write_text(text)
    results = mergec.api.build(recipe, tmp_path / "out", overrides=overrides,
                               backend=fam["backend"], device="cpu")
    out = {}
    for r in results:
        out[r.output] = load_file(str(Path(r.path) / "model.safetensors"))
    return out


def out_config(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "out" / name / "config.json").read_text())


def assert_close(out: np.ndarray, ref: np.ndarray, dtype: str, what: str = "") -> None:
    """`out` (as written) equals the float64 reference `ref` in storage dtype `dtype`."""
    want = NP_DTYPES[dtype]
    assert out.dtype == want, f"{what}: written as {out.dtype}, expected {want}"
    assert out.shape == ref.shape, f"{what}: shape {out.shape}, expected {ref.shape}"
    # mergec computes in float32: where terms cancel, the result carries an absolute error
    # of a few float32 ulps of the operands' scale, far below the values themselves
    floor = 4 * np.finfo(np.float32).eps * float(np.max(np.abs(ref), initial=0.0))
    if dtype == "float32":
        np.testing.assert_allclose(out.astype(np.float64), ref, rtol=1e-6, atol=floor,
                                   err_msg=what)
        return
    q = ref.astype(want)  # the reference rounded once to the storage dtype
    o32 = out.astype(np.float32)
    q32 = q.astype(np.float32)
    ulp = np.maximum(np.abs(np.spacing(q)).astype(np.float32),
                     np.abs(np.spacing(out)).astype(np.float32))
    bad = np.abs(o32 - q32) > ulp + floor
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} values differ by more than "
                           f"one {dtype} ulp; first at {np.argwhere(bad)[0].tolist()}: "
                           f"{o32[bad][0]} vs reference {q32[bad][0]}")


def assert_all_close(out: dict, ref: dict, dtype: str) -> None:
    assert sorted(out) == sorted(ref)
    for name in ref:
        assert_close(out[name], ref[name], dtype, name)


def assert_identical(a: np.ndarray, b: np.ndarray, what: str = "") -> None:
    assert a.dtype == b.dtype, f"{what}: {a.dtype} vs {b.dtype}"
    assert a.shape == b.shape, what
    assert a.tobytes() == b.tobytes(), f"{what}: values differ"


def block(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if parts[:2] == ["model", "layers"] else None


def ramp(anchors, i, n):
    """Independent ramp: anchors evenly on [0, 1], x = i/(n-1); v0 outside the blocks."""
    if i is None:
        return float(anchors[0])
    x = i / (n - 1)
    return float(np.interp(x, np.linspace(0.0, 1.0, len(anchors)), anchors))


# references, straight from the formulas (docs/design: methods)

def ref_linear(xs, w, normalize=True):
    acc = sum(wi * x for wi, x in zip(w, xs))
    return acc / sum(w) if normalize else acc


def ref_task_arithmetic(base, xs, w, lam=1.0, normalize=False):
    tau = sum(wi * (x - base) for wi, x in zip(w, xs))
    if normalize:
        tau = tau / sum(w)
    return base + lam * tau


def ref_slerp(a, b, t):
    v0, v1 = a.reshape(-1), b.reshape(-1)
    d = float(np.dot(v0 / np.linalg.norm(v0), v1 / np.linalg.norm(v1)))
    if abs(d) > 0.9995:
        return (1 - t) * a + t * b
    om = np.arccos(d)
    return (np.sin((1 - t) * om) * a + np.sin(t * om) * b) / np.sin(om)


def per_tensor(fn, *models):
    return {n: fn(n, *(m[n] for m in models)) for n in models[0]}


HEAD = 'model base = "./ckpt/base"\nmodel math = "./ckpt/math"\nmodel code = "./ckpt/code"\n'


# --------------------------------------------------------------------------- linear


def test_linear_default_weights_is_the_mean(tmp_path, fam):
    out = build(tmp_path, fam, HEAD + "output o = linear(math, code)\n")["o"]
    m, c = inp(fam, "math"), inp(fam, "code")
    assert_all_close(out, per_tensor(lambda n, a, b: (a + b) / 2, m, c), fam["dtype"])


def test_linear_weights_list_normalized(tmp_path, fam):
    out = build(tmp_path, fam, HEAD +
                "output o = linear(math, code, base, weight=[0.5, 0.3, 0.4])\n")["o"]
    m, c, b = inp(fam, "math"), inp(fam, "code"), inp(fam, "base")
    ref = per_tensor(lambda n, *xs: ref_linear(xs, [0.5, 0.3, 0.4]), m, c, b)
    assert_all_close(out, ref, fam["dtype"])


def test_linear_weights_list_not_normalized(tmp_path, fam):
    out = build(tmp_path, fam, HEAD +
                "output o = linear(math, code, weight=[0.7, 0.5], normalize=false)\n")["o"]
    m, c = inp(fam, "math"), inp(fam, "code")
    ref = per_tensor(lambda n, *xs: ref_linear(xs, [0.7, 0.5], normalize=False), m, c)
    assert_all_close(out, ref, fam["dtype"])


def test_linear_scalar_weight(tmp_path, fam):
    # one scalar for all inputs: normalized it is the mean, unnormalized the scaled sum
    outs = build(tmp_path, fam, HEAD +
                 "output n = linear(math, code, weight=3)\n"
                 "output u = linear(math, code, weight=0.75, normalize=false)\n")
    m, c = inp(fam, "math"), inp(fam, "code")
    assert_all_close(outs["n"], per_tensor(lambda n, *xs: ref_linear(xs, [3, 3]), m, c),
                     fam["dtype"])
    assert_all_close(outs["u"], per_tensor(lambda n, *xs: 0.75 * xs[0] + 0.75 * xs[1], m, c),
                     fam["dtype"])


# --------------------------------------------------------------------------- task arithmetic


def test_task_arithmetic_lambda_and_weights(tmp_path, fam):
    outs = build(tmp_path, fam, HEAD +
                 "output a = task_arithmetic(math, code, base=base)\n"
                 "output b = task_arithmetic(math, code, base=base, weight=[1.0, 0.5], "
                 "lambda=0.8)\n"
                 "output c = task_arithmetic(math, code, base=base, weight=[0.6, 0.2], "
                 "normalize=true, lambda=1.5)\n")
    b, m, c = inp(fam, "base"), inp(fam, "math"), inp(fam, "code")
    d = fam["dtype"]
    assert_all_close(outs["a"], per_tensor(
        lambda n, bb, x, y: ref_task_arithmetic(bb, [x, y], [1, 1]), b, m, c), d)
    assert_all_close(outs["b"], per_tensor(
        lambda n, bb, x, y: ref_task_arithmetic(bb, [x, y], [1.0, 0.5], 0.8), b, m, c), d)
    assert_all_close(outs["c"], per_tensor(
        lambda n, bb, x, y: ref_task_arithmetic(bb, [x, y], [0.6, 0.2], 1.5, True), b, m, c), d)


def test_task_arithmetic_over_deltas_equals_the_base_form(tmp_path, fam):
    outs = build(tmp_path, fam, HEAD +
                 "output a = base + task_arithmetic(math - base, code - base, lambda=0.5)\n"
                 "output b = task_arithmetic(math, code, base=base, lambda=0.5)\n")
    b, m, c = inp(fam, "base"), inp(fam, "math"), inp(fam, "code")
    ref = per_tensor(lambda n, bb, x, y: ref_task_arithmetic(bb, [x, y], [1, 1], 0.5), b, m, c)
    assert_all_close(outs["a"], ref, fam["dtype"])
    assert_all_close(outs["b"], ref, fam["dtype"])


# --------------------------------------------------------------------------- slerp


def test_slerp_t_03(tmp_path, fam):
    out = build(tmp_path, fam, HEAD + "output o = slerp(math, code, t=0.3)\n")["o"]
    m, c = inp(fam, "math"), inp(fam, "code")
    ref = per_tensor(lambda n, a, b: ref_slerp(a, b, 0.3), m, c)
    assert_all_close(out, ref, fam["dtype"])
    # both branches of the formula are exercised: norms are nearly parallel (lerp),
    # weight matrices are not (sin-weighted)
    cos = {n: np.dot(m[n].ravel(), c[n].ravel()) /
           (np.linalg.norm(m[n]) * np.linalg.norm(c[n])) for n in m}
    assert cos["model.norm.weight"] > 0.9995
    assert abs(cos["model.layers.0.self_attn.q_proj.weight"]) < 0.9995


def test_slerp_t_0_and_1_return_the_inputs(tmp_path, fam):
    outs = build(tmp_path, fam, HEAD + "output z = slerp(math, code, t=0)\n"
                                       "output o = slerp(math, code, t=1)\n")
    m, c = raw(fam, "math"), raw(fam, "code")
    for n in m:
        assert_identical(outs["z"][n], m[n], n)
        assert_identical(outs["o"][n], c[n], n)


# --------------------------------------------------------------------------- passthrough


def test_passthrough_scale(tmp_path, fam):
    outs = build(tmp_path, fam, HEAD + "output s = passthrough(math, scale=0.5)\n"
                                       "output k = passthrough(code, scale=1.7)\n"
                                       "output one = passthrough(math)\n")
    m, c = inp(fam, "math"), inp(fam, "code")
    assert_all_close(outs["s"], {n: 0.5 * x for n, x in m.items()}, fam["dtype"])
    assert_all_close(outs["k"], {n: 1.7 * x for n, x in c.items()}, fam["dtype"])
    rm = raw(fam, "math")
    for n in rm:
        assert_identical(outs["one"][n], rm[n], n)


# --------------------------------------------------------------------------- arithmetic


def test_arithmetic_forms(tmp_path, fam):
    outs = build(tmp_path, fam, HEAD +
                 "output a = base + 0.5 * (math - base) + 0.25 * (code - base)\n"
                 "output c = (math - base) / 2 + base\n"
                 "output d = base - 0.3 * (code - math)\n"
                 "output e = math + (code - math) * 0.5\n")
    b, m, c = inp(fam, "base"), inp(fam, "math"), inp(fam, "code")
    d = fam["dtype"]
    assert_all_close(outs["a"], per_tensor(
        lambda n, bb, x, y: bb + 0.5 * (x - bb) + 0.25 * (y - bb), b, m, c), d)
    assert_all_close(outs["c"], per_tensor(lambda n, bb, x: (x - bb) / 2 + bb, b, m), d)
    assert_all_close(outs["d"], per_tensor(
        lambda n, bb, x, y: bb - 0.3 * (y - x), b, m, c), d)
    assert_all_close(outs["e"], per_tensor(lambda n, x, y: x + (y - x) * 0.5, m, c), d)


def test_weighted_average_of_models(tmp_path, fam):
    outs = build(tmp_path, fam, HEAD + "output b = 0.5 * math + 0.5 * code\n"
                                       "output f = (math + code + base) / 3\n")
    b, m, c = inp(fam, "base"), inp(fam, "math"), inp(fam, "code")
    assert_all_close(outs["b"], per_tensor(lambda n, x, y: 0.5 * x + 0.5 * y, m, c),
                     fam["dtype"])
    assert_all_close(outs["f"], per_tensor(lambda n, x, y, z: (x + y + z) / 3, m, c, b),
                     fam["dtype"])


def test_plain_model_output_is_a_copy(tmp_path, fam):
    out = build(tmp_path, fam, HEAD + "output o = code\n")["o"]
    rc = raw(fam, "code")
    assert sorted(out) == sorted(rc)
    for n in rc:
        assert_identical(out[n], rc[n], n)


# --------------------------------------------------------------------------- where / ramp


def test_where_globs_layers_and_last_match_wins(tmp_path, fam):
    r1, r2 = (0, 0.5, 0.3, 0.7, 1), (1, 0.5, 0.7, 0.3, 0)
    out = build(tmp_path, fam, HEAD +
                "output blend = slerp(math, code, t=0.5)\n"
                '    where "*.self_attn.*" { t = ramp(0, 0.5, 0.3, 0.7, 1) }\n'
                '    where "*.mlp.*" { t = ramp(1, 0.5, 0.7, 0.3, 0) }\n'
                '    where layers[0:2] and "*.mlp.*" { t = 0.0 }\n'
                "    where layers[3:4] and \"*.q_proj.*\" { t = 0.9 }\n"
                '    where "model.norm.weight" { t = 0.8 }\n')["blend"]

    def expected_t(name):
        b = block(name)
        t = 0.5
        if fnmatchcase(name, "*.self_attn.*"):
            t = ramp(r1, b, N_LAYERS)
        if fnmatchcase(name, "*.mlp.*"):
            t = ramp(r2, b, N_LAYERS)
        if b is not None and 0 <= b < 2 and fnmatchcase(name, "*.mlp.*"):
            t = 0.0
        if b is not None and 3 <= b < 4 and fnmatchcase(name, "*.q_proj.*"):
            t = 0.9
        if name == "model.norm.weight":
            t = 0.8
        return t

    # a few by hand: block 1 of 4 -> x = 1/3 -> between anchors 1 and 2 of five
    assert expected_t("model.layers.1.self_attn.k_proj.weight") == pytest.approx(
        0.5 + (0.3 - 0.5) / 3)
    assert expected_t("model.layers.2.mlp.up_proj.weight") == pytest.approx(0.7 + (0.3 - 0.7) * 2 / 3)
    assert expected_t("model.layers.1.mlp.down_proj.weight") == 0.0
    assert expected_t("model.layers.3.self_attn.q_proj.weight") == 0.9
    assert expected_t("model.layers.3.self_attn.k_proj.weight") == 1.0
    assert expected_t("model.layers.0.input_layernorm.weight") == 0.5
    assert expected_t("model.embed_tokens.weight") == 0.5

    m, c = inp(fam, "math"), inp(fam, "code")
    ref = {n: ref_slerp(m[n], c[n], expected_t(n)) for n in m}
    assert_all_close(out, ref, fam["dtype"])
    # t = 0 (early mlp) is exactly math's tensor; ramp end points: the first block of
    # self_attn -> 0 (math), the last -> 1 (code)
    rm, rc = raw(fam, "math"), raw(fam, "code")
    for n, src in (("model.layers.0.mlp.gate_proj.weight", rm),
                   ("model.layers.0.self_attn.v_proj.weight", rm),
                   ("model.layers.3.self_attn.o_proj.weight", rc)):
        assert_identical(out[n], src[n], n)


def test_ramp_per_block_and_v0_outside_blocks(tmp_path, fam):
    out = build(tmp_path, fam, HEAD + "output o = slerp(math, code, t=ramp(0.2, 0.8))\n")["o"]
    m, c = inp(fam, "math"), inp(fam, "code")
    ts = {n: ramp((0.2, 0.8), block(n), N_LAYERS) for n in m}
    assert ts["model.layers.0.mlp.up_proj.weight"] == pytest.approx(0.2)
    assert ts["model.layers.1.mlp.up_proj.weight"] == pytest.approx(0.4)
    assert ts["model.layers.2.mlp.up_proj.weight"] == pytest.approx(0.6)
    assert ts["model.layers.3.mlp.up_proj.weight"] == pytest.approx(0.8)
    for outside in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert ts[outside] == 0.2
    assert_all_close(out, {n: ref_slerp(m[n], c[n], ts[n]) for n in m}, fam["dtype"])


def test_open_ended_layer_ranges_and_a_param_inside_a_ramp(tmp_path, fam):
    out = build(tmp_path, fam, HEAD +
                "param hi = 0.9\n"
                "output a = slerp(math, code, t=ramp(0, hi))\n"
                '    where layers[2:] and "*.mlp.*" { t = 1 }\n'
                "    where layers[:1] { t = 0.1 }\n", overrides={"hi": "0.6"})["a"]

    def expected_t(name):
        b = block(name)
        t = ramp((0, 0.6), b, N_LAYERS)
        if b is not None and b >= 2 and fnmatchcase(name, "*.mlp.*"):
            t = 1.0
        if b is not None and b < 1:
            t = 0.1
        return t

    assert expected_t("model.layers.2.self_attn.q_proj.weight") == pytest.approx(0.4)
    assert expected_t("model.embed_tokens.weight") == 0.0
    m, c = inp(fam, "math"), inp(fam, "code")
    assert_all_close(out, {n: ref_slerp(m[n], c[n], expected_t(n)) for n in m}, fam["dtype"])


def test_ramp_of_a_per_input_weight(tmp_path, fam):
    out = build(tmp_path, fam, HEAD +
                "output o = task_arithmetic(math, code, base=base, "
                "weight=[ramp(0, 1), ramp(1, 0.5, 0)])\n")["o"]
    b, m, c = inp(fam, "base"), inp(fam, "math"), inp(fam, "code")
    ref = {}
    for n in m:
        w = [ramp((0, 1), block(n), N_LAYERS), ramp((1, 0.5, 0), block(n), N_LAYERS)]
        ref[n] = ref_task_arithmetic(b[n], [m[n], c[n]], w)
    assert_all_close(out, ref, fam["dtype"])


def test_where_scalar_on_a_per_input_parameter(tmp_path, fam):
    out = build(tmp_path, fam, HEAD +
                "output o = linear(math, code, weight=[1, 3])\n"
                '    where "*.mlp.*" { weight = 2 }\n')["o"]
    m, c = inp(fam, "math"), inp(fam, "code")
    ref = {n: (ref_linear([m[n], c[n]], [1, 1]) if fnmatchcase(n, "*.mlp.*")
               else ref_linear([m[n], c[n]], [1, 3])) for n in m}
    assert_all_close(out, ref, fam["dtype"])


def test_where_on_a_let_applies_to_every_use(tmp_path, fam):
    outs = build(tmp_path, fam, HEAD +
                 "let s = slerp(math, code, t=0.5)\n"
                 '    where "*.mlp.*" { t = 0.25 }\n'
                 "output o1 = s\n"
                 "output o2 = linear(s, base)\n")
    b, m, c = inp(fam, "base"), inp(fam, "math"), inp(fam, "code")
    s = {n: ref_slerp(m[n], c[n], 0.25 if fnmatchcase(n, "*.mlp.*") else 0.5) for n in m}
    assert_all_close(outs["o1"], s, fam["dtype"])
    assert_all_close(outs["o2"], {n: (s[n] + b[n]) / 2 for n in m}, fam["dtype"])


def test_where_on_one_output_does_not_leak_into_another_use_of_the_let(tmp_path, fam):
    outs = build(tmp_path, fam, HEAD +
                 "let s = slerp(math, code, t=0.5)\n"
                 "output o1 = s\n"
                 '    where "*.mlp.*" { t = 0.0 }\n'
                 "output o2 = s\n")
    m, c = inp(fam, "math"), inp(fam, "code")
    o1 = {n: ref_slerp(m[n], c[n], 0.0 if fnmatchcase(n, "*.mlp.*") else 0.5) for n in m}
    o2 = {n: ref_slerp(m[n], c[n], 0.5) for n in m}
    assert_all_close(outs["o1"], o1, fam["dtype"])
    assert_all_close(outs["o2"], o2, fam["dtype"])


# --------------------------------------------------------------------------- stack


STACK_HEAD = HEAD + 'model deep = "./ckpt/deep"\nmodel chat = "./ckpt/chat"\n'


def _stack_names(n_layers: int) -> list[str]:
    names = ["model.embed_tokens.weight"]
    for i in range(n_layers):
        names += [f"model.layers.{i}.{s}" for s in SUFFIXES]
    return names + ["model.norm.weight", "lm_head.weight"]


def test_stack_renumbers_blocks_and_takes_ends_from_first_and_last(tmp_path, fam):
    out = build(tmp_path, fam, STACK_HEAD +
                "output frank = stack(math.layers[0:2], deep.layers[4:8])\n")["frank"]
    assert sorted(out) == sorted(_stack_names(6))
    rm, rd = raw(fam, "math"), raw(fam, "deep")
    for s in SUFFIXES:
        for i in range(2):
            assert_identical(out[f"model.layers.{i}.{s}"], rm[f"model.layers.{i}.{s}"], s)
        for i in range(4):
            assert_identical(out[f"model.layers.{2 + i}.{s}"], rd[f"model.layers.{4 + i}.{s}"], s)
    assert_identical(out["model.embed_tokens.weight"], rm["model.embed_tokens.weight"])
    # deep's final norm and head equal base's by construction; they must not be math's
    assert_identical(out["model.norm.weight"], rd["model.norm.weight"])
    assert_identical(out["lm_head.weight"], rd["lm_head.weight"])
    assert out["lm_head.weight"].tobytes() != rm["lm_head.weight"].tobytes()
    cfg = out_config(tmp_path, "frank")
    assert cfg["num_hidden_layers"] == 6
    assert cfg["hidden_size"] == 64 and cfg["vocab_size"] == 128


def test_stack_embed_and_head_overrides(tmp_path, fam):
    out = build(tmp_path, fam, STACK_HEAD +
                "output o = stack(math.layers[0:2], deep.layers[4:8], embed=code, "
                "head=chat)\n")["o"]
    rm, rd, rc, rch = raw(fam, "math"), raw(fam, "deep"), raw(fam, "code"), raw(fam, "chat")
    assert sorted(out) == sorted(_stack_names(6))
    assert_identical(out["model.embed_tokens.weight"], rc["model.embed_tokens.weight"])
    assert_identical(out["model.norm.weight"], rch["model.norm.weight"])
    assert_identical(out["lm_head.weight"], rch["lm_head.weight"])
    assert_identical(out["model.layers.1.mlp.up_proj.weight"], rm["model.layers.1.mlp.up_proj.weight"])
    assert_identical(out["model.layers.5.mlp.up_proj.weight"], rd["model.layers.7.mlp.up_proj.weight"])
    assert out_config(tmp_path, "o")["num_hidden_layers"] == 6


def test_stack_of_whole_models_and_repeated_runs(tmp_path, fam):
    out = build(tmp_path, fam, STACK_HEAD +
                "output o = stack(math.layers[1:3], math.layers[1:3], code)\n")["o"]
    rm, rc = raw(fam, "math"), raw(fam, "code")
    assert sorted(out) == sorted(_stack_names(8))
    for s in SUFFIXES:
        assert_identical(out[f"model.layers.0.{s}"], rm[f"model.layers.1.{s}"])
        assert_identical(out[f"model.layers.3.{s}"], rm[f"model.layers.2.{s}"])
        for i in range(4):
            assert_identical(out[f"model.layers.{4 + i}.{s}"], rc[f"model.layers.{i}.{s}"])
    assert_identical(out["model.embed_tokens.weight"], rm["model.embed_tokens.weight"])
    assert_identical(out["lm_head.weight"], rc["lm_head.weight"])
    assert out_config(tmp_path, "o")["num_hidden_layers"] == 8


def test_slerp_of_layer_runs_inside_stack(tmp_path, fam):
    out = build(tmp_path, fam, STACK_HEAD +
                "output o = stack(slerp(math.layers[0:2], code.layers[2:4], t=ramp(0.2, 0.8)),"
                " deep.layers[6:8])\n"
                '    where layers[1:2] and "*.mlp.*" { t = 0.5 }\n')["o"]
    m, c = inp(fam, "math"), inp(fam, "code")
    rm, rd = raw(fam, "math"), raw(fam, "deep")
    assert sorted(out) == sorted(_stack_names(4))
    for s in SUFFIXES:
        # blocks count from 0 at the start of the slerp's runs: block 0 t=0.2, block 1 t=0.8
        t1 = 0.5 if fnmatchcase(f"x.{s}", "*.mlp.*") else 0.8
        assert_close(out[f"model.layers.0.{s}"],
                     ref_slerp(m[f"model.layers.0.{s}"], c[f"model.layers.2.{s}"], 0.2),
                     fam["dtype"], s)
        assert_close(out[f"model.layers.1.{s}"],
                     ref_slerp(m[f"model.layers.1.{s}"], c[f"model.layers.3.{s}"], t1),
                     fam["dtype"], s)
        assert_identical(out[f"model.layers.2.{s}"], rd[f"model.layers.6.{s}"], s)
        assert_identical(out[f"model.layers.3.{s}"], rd[f"model.layers.7.{s}"], s)
    # embeddings from the first run's model (the slerp's first input), ends from deep
    assert_identical(out["model.embed_tokens.weight"], rm["model.embed_tokens.weight"])
    assert_identical(out["lm_head.weight"], rd["lm_head.weight"])
    assert_identical(out["model.norm.weight"], rd["model.norm.weight"])
    assert out_config(tmp_path, "o")["num_hidden_layers"] == 4


def test_linear_combination_of_layer_runs_in_stack(tmp_path, fam):
    out = build(tmp_path, fam, STACK_HEAD +
                "output o = stack(math.layers[0:1], 0.25 * math.layers[1:3] + "
                "0.75 * code.layers[0:2], deep.layers[7:8])\n")["o"]
    m, c = inp(fam, "math"), inp(fam, "code")
    assert sorted(out) == sorted(_stack_names(4))
    for s in SUFFIXES:
        for i in range(2):
            assert_close(out[f"model.layers.{1 + i}.{s}"],
                         0.25 * m[f"model.layers.{1 + i}.{s}"] + 0.75 * c[f"model.layers.{i}.{s}"],
                         fam["dtype"], s)


# --------------------------------------------------------------------------- let, param


def test_let_intermediates(tmp_path, fam):
    outs = build(tmp_path, fam, HEAD +
                 "let tv_math = math - base\n"
                 "let tv_code = code - base\n"
                 "let mixed = base + 0.7 * tv_math + 0.3 * tv_code\n"
                 "output a = mixed\n"
                 "output b = slerp(mixed, code, t=0.4)\n")
    b, m, c = inp(fam, "base"), inp(fam, "math"), inp(fam, "code")
    mixed = {n: b[n] + 0.7 * (m[n] - b[n]) + 0.3 * (c[n] - b[n]) for n in m}
    assert_all_close(outs["a"], mixed, fam["dtype"])
    # the let is used in float32 inside mergec (not rounded to the storage dtype first)
    assert_all_close(outs["b"], {n: ref_slerp(mixed[n], c[n], 0.4) for n in m}, fam["dtype"])


def test_param_default_and_set_override(tmp_path, fam):
    text = HEAD + ("param t = 0.3\n"
                   "param w = 0.5\n"
                   "output o = slerp(math, code, t=t)\n"
                   "output l = linear(math, code, weight=[w, 1], normalize=false)\n")
    m, c = inp(fam, "math"), inp(fam, "code")
    d = tmp_path / "default"
    d.mkdir()
    outs = build(d, fam, text)
    assert_all_close(outs["o"], per_tensor(lambda n, a, b: ref_slerp(a, b, 0.3), m, c),
                     fam["dtype"])
    assert_all_close(outs["l"], per_tensor(lambda n, a, b: 0.5 * a + b, m, c), fam["dtype"])
    s = tmp_path / "set"
    s.mkdir()
    outs = build(s, fam, text, overrides={"t": "0.7", "w": "-0.25"})
    assert_all_close(outs["o"], per_tensor(lambda n, a, b: ref_slerp(a, b, 0.7), m, c),
                     fam["dtype"])
    assert_all_close(outs["l"], per_tensor(lambda n, a, b: -0.25 * a + b, m, c), fam["dtype"])


# --------------------------------------------------------------------------- output dtypes


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_output_dtype(tmp_path, fam, dtype):
    outs = build(tmp_path, fam, HEAD +
                 f'output o = linear(math, code, weight=[0.3, 0.7]) {{ dtype = "{dtype}" }}\n'
                 f'output s = slerp(math, code, t=0.6) {{ dtype = "{dtype}" }}\n'
                 f'output c = code {{ dtype = "{dtype}" }}\n')
    m, c = inp(fam, "math"), inp(fam, "code")
    assert_all_close(outs["o"], per_tensor(lambda n, a, b: 0.3 * a + 0.7 * b, m, c), dtype)
    assert_all_close(outs["s"], per_tensor(lambda n, a, b: ref_slerp(a, b, 0.6), m, c), dtype)
    # a plain copy converted to another dtype: one rounding of the stored value
    assert_all_close(outs["c"], c, dtype)
    for name in ("o", "s", "c"):
        cfg = out_config(tmp_path, name)
        assert cfg["dtype"] == dtype
        assert cfg["torch_dtype"] == dtype


def test_default_output_dtype_follows_the_config(tmp_path, fam):
    outs = build(tmp_path, fam, HEAD + "output o = linear(math, code)\n")
    assert {v.dtype for v in outs["o"].values()} == {NP_DTYPES[fam["dtype"]]}
    assert out_config(tmp_path, "o")["dtype"] == fam["dtype"]


# --------------------------------------------------------------------------- families agree


def test_bf16_and_f32_families_give_the_same_merge(tmp_path, family, family_f32, backend):
    """The same recipe on both families, float32 output: each equals its own reference,
    and the two differ only by the bf16 rounding of the inputs."""
    text = HEAD + ('output o = task_arithmetic(math, code, base=base, weight=[0.7, 0.4]) '
                   '{ dtype = "float32" }\n')
    res = {}
    for key, paths in (("bf16", family), ("f32", family_f32)):
        f = {"root": paths["base"].parent, "paths": paths, "backend": backend}
        (tmp_path / key).mkdir()
        res[key] = build(tmp_path / key, f, text)["o"]
        b, m, c = inp(f, "base"), inp(f, "math"), inp(f, "code")
        assert_all_close(res[key], per_tensor(
            lambda n, bb, x, y: ref_task_arithmetic(bb, [x, y], [0.7, 0.4]), b, m, c), "float32")
    for n in res["bf16"]:
        a, b = res["bf16"][n].astype(np.float64), res["f32"][n].astype(np.float64)
        # inputs differ by bf16 rounding (2^-8 relative); the merge stays within that
        assert np.max(np.abs(a - b)) <= 2 ** -7 * np.max(np.abs(b)) + 1e-6, n
