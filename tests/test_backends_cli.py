"""`mergec build --backend reference|torch|jax --device ...` and `set backend`: the same recipe
built on each backend gives the same tensors (within 1e-6 relative in float32; in practice
bit-identical on the CPU), seeded random methods included."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy before safetensors loads
import numpy as np
import pytest
from safetensors.numpy import load_file

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_JAX = importlib.util.find_spec("jax") is not None

HEAD = """set seed = 1234
model base = "./ckpt/base"
model math = "./ckpt/math"
model code = "./ckpt/code"
model chat = "./ckpt/chat"
"""
F32 = '{ dtype = "float32" }'
RECIPES = {
    "linear": f"output m = linear(math, code, chat, weight=[0.5, 0.3, 0.2]) {F32}\n",
    "slerp": f"output m = slerp(math, code, t=ramp(0.1, 0.9)) {F32}\n",
    "ties": f"output m = ties(math, code, chat, base=base, density=0.4, "
            f"weight=[1.0, 0.7, 0.4]) {F32}\n",
    "dare_ties": f"output m = dare_ties(math, code, chat, base=base, density=[0.3, 0.5, 0.7]) "
                 f"{F32}\n",
}


def _recipe(folder: Path, family: dict, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ckpt").symlink_to(family["base"].parent, target_is_directory=True)
    recipe = folder / "r.merge"
    recipe.write_text(text)
    return recipe


def _load(out: Path) -> dict[str, np.ndarray]:
    return load_file(str(out / "m" / "model.safetensors"))


def assert_close(a: dict, b: dict, rtol: float = 1e-6) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype == np.float32, k
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        scale = max(1e-30, float(np.abs(x).max(initial=0.0)))
        np.testing.assert_allclose(y, x, rtol=rtol, atol=rtol * scale, err_msg=k)


@pytest.fixture(scope="module")
def built(family, tmp_path_factory):
    """{recipe name: {backend: tensors}}, each recipe built once per installed backend via
    the CLI (the NumPy reference, the default on a CPU, always)."""
    from typer.testing import CliRunner

    from mergec.cli import app

    runner = CliRunner()
    root = tmp_path_factory.mktemp("backends-cli")
    out: dict[str, dict[str, dict]] = {}
    for name, body in RECIPES.items():
        recipe = _recipe(root / name, family, HEAD + body)
        out[name] = {}
        for backend in ("reference", "torch", "jax"):
            if not {"reference": True, "torch": HAS_TORCH, "jax": HAS_JAX}[backend]:
                continue
            target = root / name / f"out-{backend}"
            res = runner.invoke(app, ["build", str(recipe), "-o", str(target), "--quiet",
                                      "--backend", backend, "--device", "cpu"])
            assert res.exit_code == 0, res.output
            out[name][backend] = _load(target)
    return out


@pytest.mark.torch
@pytest.mark.jax
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_torch_and_jax_builds_agree(built, name):
    assert_close(built[name]["torch"], built[name]["jax"])


@pytest.mark.parametrize("other", [pytest.param("torch", marks=pytest.mark.torch),
                                   pytest.param("jax", marks=pytest.mark.jax)])
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_numpy_build_agrees_with_the_other_backends(built, name, other):
    assert_close(built[name]["reference"], built[name][other])


@pytest.mark.jax
def test_set_backend_jax_in_the_recipe(family, tmp_path, run_cli, monkeypatch):
    """`set backend = "jax"` picks jax; `--backend` on the command line wins over it."""
    import mergec.backends

    made = []
    real = mergec.backends.get_backend

    def spy(name="auto", device="cpu"):
        be = real(name, device)
        made.append((be.name, device))
        return be

    monkeypatch.setattr(mergec.backends, "get_backend", spy)
    recipe = _recipe(tmp_path, family, 'set backend = "jax"\nset device = "cpu"\n' + HEAD +
                     RECIPES["dare_ties"])
    code, out, err = run_cli("build", recipe, "-o", tmp_path / "out", "--quiet")
    assert code == 0, out + err
    assert made == [("jax", "cpu")]
    ref = _load(tmp_path / "out")
    if HAS_TORCH:
        code, out, err = run_cli("build", recipe, "-o", tmp_path / "out-torch", "--quiet",
                                 "--backend", "torch")
        assert code == 0, out + err
        assert made[-1] == ("torch", "cpu")
        assert_close(_load(tmp_path / "out-torch"), ref)


@pytest.mark.jax
def test_jax_gpu_without_a_gpu_is_e503(family, tmp_path, run_cli):
    import jax

    try:
        has_gpu = bool(jax.devices("gpu"))
    except RuntimeError:
        has_gpu = False
    if has_gpu:
        pytest.skip("this machine has a GPU")
    recipe = _recipe(tmp_path, family, HEAD + RECIPES["linear"])
    code, out, err = run_cli("build", recipe, "-o", tmp_path / "out", "--quiet",
                             "--backend", "jax", "--device", "gpu")
    assert code == 2
    assert "E503" in out + err and "device" in out + err
    assert not (tmp_path / "out" / "m").exists()


@pytest.mark.jax
def test_jax_row_blocks_equal_whole_tensors(family, tmp_path):
    """--max-memory on jax: TIES and DARE masks handed over per block of rows give the same
    bytes as whole tensors (and as torch)."""
    from mergec.api import build
    from mergec.demo import load_tensors

    text = HEAD + """output ti = ties(math, code, base=base, density=[0.3, 0.5], weight=[0.6, 0.4])
output tm = ties(math, code, base=base, density=0.4, trim="model") { dtype = "float32" }
output dt = dare_ties(math, code, base=base, density=0.6)
output dl = dare_linear(math, code, base=base, density=0.5) { dtype = "float32" }
"""
    recipe = _recipe(tmp_path, family, text)
    build(recipe, tmp_path / "whole", backend="jax", device="cpu")
    build(recipe, tmp_path / "blocks", backend="jax", device="cpu", max_memory=16 * 1024)
    if HAS_TORCH:
        build(recipe, tmp_path / "torch", backend="torch", device="cpu")
    for out in ("ti", "tm", "dt", "dl"):
        a = load_tensors(tmp_path / "whole" / out)
        b = load_tensors(tmp_path / "blocks" / out)
        for n in a:
            assert np.array_equal(a[n].view(np.uint8), b[n].view(np.uint8)), (out, n)
        if HAS_TORCH:
            t = load_tensors(tmp_path / "torch" / out)
            for n in a:
                x, y = t[n].astype(np.float64), a[n].astype(np.float64)
                scale = max(1e-30, float(np.abs(x).max(initial=0.0)))
                np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-6 * scale, err_msg=n)
