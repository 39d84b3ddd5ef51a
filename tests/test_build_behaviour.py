"""End-to-end behaviour of builds: what transformers sees, purity of check/plan, atomic
output folders, sharding and the CLI's exit codes and messages."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy before safetensors loads
import numpy as np
import pytest
from safetensors.numpy import load_file

import mergec
import mergec.api
import mergec.io.weight_files as weight_files_mod
from mergec.demo import load_tensors, make_llama

HEAD = 'model base = "./ckpt/base"\nmodel math = "./ckpt/math"\nmodel code = "./ckpt/code"\n'
ITEMSIZE = {"BF16": 2, "F16": 2, "F32": 4}
#: the class of each value of conftest's `backend` fixture (numpy, the default on a CPU,
#: and torch), patched by the tests that slow down or break its kernels
BACKEND_CLASS = {"numpy": "mergec.backends.reference.ReferenceBackend",
                 "torch": "mergec.backends.torch_backend.TorchBackend"}


def setup_recipe(folder: Path, family_root: Path, text: str, name: str = "r.merge") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "ckpt"
    if not link.exists():
        link.symlink_to(family_root, target_is_directory=True)
    recipe = folder / name
    recipe.write_text(text)
    return recipe


def root_of(family) -> Path:
    return family["base"].parent


def read_header(path: Path) -> dict:
    """A safetensors header, parsed here without mergec."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        h = json.loads(f.read(n))
    h.pop("__metadata__", None)
    return h


def header_table(folder: Path) -> dict[str, tuple[list[int], str]]:
    return {k: (v["shape"], v["dtype"]) for k, v in read_header(folder / "model.safetensors").items()}


def nbytes(shape, st_dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * ITEMSIZE[st_dtype]


def temp_dirs(out_dir: Path, name: str) -> list[Path]:
    if not out_dir.exists():
        return []
    return [p for p in out_dir.iterdir() if p.name.startswith(f".{name}.mergec-")]


# --------------------------------------------------------------------------- a built recipe


def backend_class(backend: str) -> type:
    import importlib

    module, name = BACKEND_CLASS[backend].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def cli_backend(backend: str) -> str:
    """The --backend value for `backend` (the command line takes `reference` for numpy)."""
    return "reference" if backend == "numpy" else backend


@pytest.fixture(scope="module", params=["numpy", pytest.param("torch", marks=pytest.mark.torch)])
def built(family, tmp_path_factory, request):
    """One recipe with three outputs, built once per backend for the transformers/side-file
    tests.

    `code2` is a copy of `code` with its own config.json (max_position_embeddings 256) and
    tokenizer_config.json (model_max_length 256), so their origin shows in the output."""
    d = tmp_path_factory.mktemp(f"built-{request.param}")
    code2 = d / "code2"
    shutil.copytree(family["code"], code2)
    cfg = json.loads((code2 / "config.json").read_text())
    cfg["max_position_embeddings"] = 256
    (code2 / "config.json").write_text(json.dumps(cfg, indent=2))
    tok = json.loads((code2 / "tokenizer_config.json").read_text())
    tok["model_max_length"] = 256
    (code2 / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
    text = (HEAD + 'model deep = "./ckpt/deep"\nmodel code2 = "./code2"\n'
            "\n# a plain merge, a stack and explicit side-file sources\n"
            "output avg = linear(math, code)\n"
            "output frank = stack(math.layers[0:2], deep.layers[4:8])\n"
            "output picked = task_arithmetic(math, code2, base=base, lambda=0.5) {\n"
            "    tokenizer = code2\n"
            "    config = code2\n"
            "}\n")
    recipe = setup_recipe(d, root_of(family), text)
    mergec.api.build(recipe, d / "out", backend=request.param, device="cpu")
    return {"dir": d, "out": d / "out", "recipe": recipe, "text": text, "code2": code2}


@pytest.mark.torch  # transformers runs the models with torch
def test_merged_model_loads_in_transformers(built, family):
    import torch

    transformers = pytest.importorskip("transformers")
    ids = torch.tensor([[1, 5, 9, 17, 40, 2]])
    for name, layers in (("avg", 4), ("frank", 6)):
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            built["out"] / name, output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert model.config.num_hidden_layers == layers
        assert len(model.model.layers) == layers
        with torch.no_grad():
            logits = model(ids).logits
        assert tuple(logits.shape) == (1, ids.shape[1], 128)
        assert torch.isfinite(logits).all()
        # the loaded weights are the written ones (nothing re-initialized)
        written = load_file(str(built["out"] / name / "model.safetensors"))
        w = model.model.layers[layers - 1].mlp.up_proj.weight.detach().float().numpy()
        np.testing.assert_array_equal(
            w, written[f"model.layers.{layers - 1}.mlp.up_proj.weight"].astype(np.float32))
    deep = load_tensors(family["deep"])
    frank = load_file(str(built["out"] / "frank" / "model.safetensors"))
    assert frank["model.layers.5.mlp.up_proj.weight"].tobytes() == \
        deep["model.layers.7.mlp.up_proj.weight"].tobytes()


def test_tokenizer_files_come_from_the_tokenizer_input(built, family):
    transformers = pytest.importorskip("transformers")
    names = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
    for n in names:
        assert (built["out"] / "picked" / n).read_bytes() == (built["code2"] / n).read_bytes()
        # default: the first input (math) for a plain merge
        assert (built["out"] / "avg" / n).read_bytes() == (family["math"] / n).read_bytes()
    tok = transformers.AutoTokenizer.from_pretrained(built["out"] / "picked")
    assert tok.model_max_length == 256
    assert tok("hello world").input_ids == [1, 75, 76]
    tok = transformers.AutoTokenizer.from_pretrained(built["out"] / "avg")
    assert tok.model_max_length == 128


def test_config_comes_from_the_config_input(built, family):
    picked = json.loads((built["out"] / "picked" / "config.json").read_text())
    avg = json.loads((built["out"] / "avg" / "config.json").read_text())
    assert picked["max_position_embeddings"] == 256
    math_cfg = json.loads((family["math"] / "config.json").read_text())
    assert avg == math_cfg  # same dtype: the config is unchanged
    frank = json.loads((built["out"] / "frank" / "config.json").read_text())
    assert frank == {**math_cfg, "num_hidden_layers": 6}


def test_default_config_of_a_base_merge_is_the_base(tmp_path, family):
    base = family["base"]
    cfg = json.loads((base / "config.json").read_text())
    cfg["max_position_embeddings"] = 64
    b2 = tmp_path / "b2"
    shutil.copytree(base, b2)
    (b2 / "config.json").write_text(json.dumps(cfg))
    recipe = setup_recipe(tmp_path, root_of(family),
                          'model b2 = "./b2"\nmodel math = "./ckpt/math"\n'
                          "output o = task_arithmetic(math, base=b2)\n")
    mergec.api.build(recipe, tmp_path / "out")
    assert json.loads((tmp_path / "out/o/config.json").read_text())["max_position_embeddings"] == 64


def test_stack_config_from_another_input_gets_the_new_layer_count(tmp_path, family):
    recipe = setup_recipe(tmp_path, root_of(family),
                          'model math = "./ckpt/math"\nmodel deep = "./ckpt/deep"\n'
                          "output s = stack(math.layers[0:2], deep.layers[4:8]) { config = deep }\n"
                          "output d = stack(deep.layers[0:8])\n")
    mergec.api.build(recipe, tmp_path / "out")
    deep_cfg = json.loads((family["deep"] / "config.json").read_text())
    assert deep_cfg["num_hidden_layers"] == 8
    got = json.loads((tmp_path / "out/s/config.json").read_text())
    assert got == {**deep_cfg, "num_hidden_layers": 6}
    assert json.loads((tmp_path / "out/d/config.json").read_text()) == deep_cfg
    assert (tmp_path / "out/s/tokenizer.json").read_bytes() == \
        (family["math"] / "tokenizer.json").read_bytes()


def test_generation_config_is_copied(built, family):
    assert (built["out"] / "avg" / "generation_config.json").read_bytes() == \
        (family["math"] / "generation_config.json").read_bytes()


def test_model_card(built):
    used = {"avg": ("math", "code"), "frank": ("math", "deep"),
            "picked": ("base", "math", "code2")}
    for name in ("avg", "frank", "picked"):
        card = (built["out"] / name / "README.md").read_text()
        assert built["text"].rstrip("\n") in card
        for inp in ("base", "math", "code", "deep", "code2"):  # the inputs this output used
            assert (f"| {inp} |" in card) == (inp in used[name]), (name, inp)
        assert mergec.__version__ in card
        assert f"# {name}" in card
    with open(built["out"] / "avg" / "model.safetensors", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        assert json.loads(f.read(n))["__metadata__"]["mergec_version"] == mergec.__version__


# --------------------------------------------------------------------------- check/plan purity


PURE_RECIPE = (HEAD + 'model deep = "./ckpt/deep"\n'
               "param t = 0.4\n"
               "output a = slerp(math, code, t=t)\n"
               '    where "*.mlp.*" { t = ramp(0, 1) }\n'
               "output b = task_arithmetic(math, code, base=base, weight=[1, 0.5])\n"
               'output c = stack(math.layers[0:2], deep.layers[4:8]) { dtype = "float32" }\n')


def _no_reads(monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("tensor data read during check/plan")

    monkeypatch.setattr(weight_files_mod, "read_span", refuse)
    return calls


def test_check_and_plan_read_no_tensor_data(tmp_path, family, monkeypatch, run_cli):
    recipe = setup_recipe(tmp_path, root_of(family), PURE_RECIPE)
    calls = _no_reads(monkeypatch)
    checked = mergec.api.check(recipe)
    assert [o.name for o in checked.outputs] == ["a", "b", "c"]
    compiled = mergec.api.compile(recipe, overrides={"t": "0.6"})
    assert [o.tensors for o in compiled.plan.outputs] == [39, 39, 57]
    code, out, err = run_cli("check", recipe)
    assert code == 0, err
    code, out, err = run_cli("plan", recipe, "--json")
    assert code == 0, err
    code, out, err = run_cli("build", recipe, "-o", tmp_path / "out", "--dry-run")
    assert code == 0, err
    assert not (tmp_path / "out").exists()
    assert calls == []
    # the patch does intercept the tensor reads: a real build now fails, leaving nothing
    code, out, err = run_cli("build", recipe, "-o", tmp_path / "out", "-q", "--jobs", "1")
    assert code != 0 and "E412" in err
    assert calls
    assert not (tmp_path / "out" / "a").exists() and not temp_dirs(tmp_path / "out", "a")


def test_read_error_during_build_is_an_input_problem(tmp_path, family, monkeypatch, run_cli):
    recipe = setup_recipe(tmp_path, root_of(family), HEAD + "output o = linear(math, code)\n")
    _no_reads(monkeypatch)
    code, out, err = run_cli("build", recipe, "-o", tmp_path / "out", "-q")
    assert "E412" in err
    assert "E599" not in err and "internal error" not in err
    assert code == 1


def test_config_that_cannot_take_the_new_layer_count_fails_check(tmp_path, family, run_cli):
    m2 = tmp_path / "m2"
    shutil.copytree(family["math"], m2)
    cfg = json.loads((m2 / "config.json").read_text())
    cfg["layer_types"] = ["full_attention", "sliding_attention"] * 2
    (m2 / "config.json").write_text(json.dumps(cfg))
    recipe = setup_recipe(tmp_path, root_of(family),
                          'model m2 = "./m2"\nmodel deep = "./ckpt/deep"\n'
                          "output o = stack(m2.layers[0:2], deep.layers[4:8])\n")
    code, out, err = run_cli("check", recipe)
    assert code == 1 and "E418" in err


def _garbage_copy(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    with open(f, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        size = os.fstat(fh.fileno()).st_size
        fh.seek(8 + n)
        fh.write(np.random.default_rng(7).integers(0, 256, size - 8 - n, dtype=np.uint8).tobytes())
    assert f.stat().st_size == (src / "model.safetensors").stat().st_size


def test_garbage_tensor_data_checks_and_plans_identically(tmp_path, family):
    garbage = tmp_path / "garbage"
    for n in ("base", "math", "code", "deep"):
        _garbage_copy(family[n], garbage / n)
    assert load_tensors(garbage / "math")["lm_head.weight"].tobytes() != \
        load_tensors(family["math"])["lm_head.weight"].tobytes()
    good = setup_recipe(tmp_path / "good", root_of(family), PURE_RECIPE)
    bad = setup_recipe(tmp_path / "bad", garbage, PURE_RECIPE)
    results = []
    for recipe in (good, bad):
        compiled = mergec.api.compile(recipe)
        plan = compiled.plan.model_dump()
        plan.pop("recipe")
        fps = {k: v.checkpoint.fingerprint() for k, v in compiled.checked.inputs.items()}
        tables = [{n: (m.shape, m.dtype) for n, m in o.expr.tensors.items()}
                  for o in compiled.checked.outputs]
        results.append((plan, fps, tables))
    assert results[0] == results[1]


# --------------------------------------------------------------------------- atomic output


SLOW_BUILD = r"""
import importlib, sys, time
module, name = sys.argv[1].rsplit(".", 1)
Backend = getattr(importlib.import_module(module), name)
DELAY = float(sys.argv[2])

def slowed(fn):
    def slow(self, *args, **kwargs):
        time.sleep(DELAY)
        return fn(self, *args, **kwargs)
    return slow

# every computing entry point: kernels and weighted sums (linear merges are weighted sums)
for name in ("wsum", "wsum64", "matmul", "topk_mask", "gram"):
    setattr(Backend, name, slowed(getattr(Backend, name)))
from mergec.cli import app
sys.argv = ["mergec"] + sys.argv[3:]
app()
"""


@pytest.fixture(scope="module")
def big_family(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("big")
    make_llama(d / "base", layers=8, hidden=256, seed=0)
    make_llama(d / "math", layers=8, hidden=256, seed=1, base=d / "base")
    return d


def _start_slow_build(recipe: Path, out: Path, backend: str, *options: str,
                      prelude: str = "", settle: float = 0.5,
                      name: str = "big") -> subprocess.Popen:
    """`mergec build` with every kernel call slowed down, in a process group of its own
    (with the worker processes it forks); returns `settle` seconds after the build created
    its temporary folder for output `name` (a few tensors written). `prelude` is Python
    run first. On failure, the whole group is killed."""
    proc = subprocess.Popen([sys.executable, "-c", prelude + SLOW_BUILD, BACKEND_CLASS[backend],
                             "0.1", "build", str(recipe), "-o", str(out), "-q",
                             "--backend", cli_backend(backend), "--device", "cpu", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not temp_dirs(out, name):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the build never created its temporary folder"
            time.sleep(0.02)
        time.sleep(settle)
        assert proc.poll() is None, "the build finished before it could be killed"
    except BaseException:
        _kill_group(proc)
        raise
    return proc


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # the group is gone already
        pass
    proc.kill()
    proc.communicate()


def test_killed_build_leaves_no_target_and_rebuild_succeeds(tmp_path, big_family, backend):
    """The build and its worker processes (the NumPy backend forks them) are killed at
    once, as when a job is cancelled."""
    recipe = setup_recipe(tmp_path, big_family,
                          'model base = "./ckpt/base"\nmodel math = "./ckpt/math"\n'
                          "output big = linear(math, base)\n")
    out = tmp_path / "out"
    proc = _start_slow_build(recipe, out, backend)
    _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "big").exists()
    stale = temp_dirs(out, "big")
    assert len(stale) == 1 and stale[0].name.startswith(".big.mergec-tmp-")
    # a rebuild succeeds, removes the stale folder and writes the right values
    res = mergec.api.build(recipe, out, backend=backend, device="cpu")
    assert res[0].path == out / "big"
    assert temp_dirs(out, "big") == []
    got = load_file(str(out / "big" / "model.safetensors"))
    m, b = load_tensors(big_family / "math"), load_tensors(big_family / "base")
    n = "model.layers.7.mlp.down_proj.weight"
    ref = ((m[n].astype(np.float64) + b[n].astype(np.float64)) / 2).astype(m[n].dtype)
    diff = np.abs(got[n].astype(np.float32) - ref.astype(np.float32))
    assert np.all(diff <= np.abs(np.spacing(ref)).astype(np.float32))


def _stat(pid) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state, parent pid, ...)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _worker_pids(pid: int) -> list[int]:
    """The child processes of `pid` (Linux)."""
    kids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and (st := _stat(p.name)) is not None and st[1] == str(pid):
            kids.append(int(p.name))
    return kids


def _running(pid: int) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z"  # a zombie has exited


def _group(pgid: int) -> list[int]:
    """The running processes of process group `pgid` (Linux)."""
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and (st := _stat(p.name)) is not None and st[2] == str(pgid)
            and st[0] != "Z"]


def _survivors(pids: list[int], pgid: int, wait: float = 5.0) -> list[int]:
    """Which of `pids`, or of process group `pgid`, still run after up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        left = sorted({p for p in pids if _running(p)} | set(_group(pgid)))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


#: SIGKILLs per variant in the test below (MERGEC_TEST_KILLS=20 for a longer run)
KILLS = int(os.environ.get("MERGEC_TEST_KILLS", "5"))
#: the build without PR_SET_PDEATHSIG, as on a POSIX system other than Linux
NO_PDEATHSIG = ("import mergec.runtime.parallel as parallel\n"
                "parallel.die_with_parent = lambda: False\n")


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_killed_build_leaves_no_worker_behind(tmp_path, big_family):
    recipe = setup_recipe(tmp_path, big_family,
                          'model base = "./ckpt/base"\nmodel math = "./ckpt/math"\n'
                          "output big = linear(math, base)\n")
    proc = _start_slow_build(recipe, tmp_path / "out", "numpy")
    try:
        workers = _worker_pids(proc.pid)
        assert workers, "the NumPy build forked no worker process"
        proc.send_signal(signal.SIGKILL)  # the build process only
        proc.wait()
        deadline = time.monotonic() + 5
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [w for w in workers if _running(w)]
        assert not left, f"worker processes {left} still run after the build was killed"
    finally:
        _kill_group(proc)  # the workers are in the build's process group


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
@pytest.mark.parametrize("guard", ["pdeathsig", "watchdog"])
def test_sigkilled_multi_worker_build_leaves_no_worker_and_reruns(tmp_path, big_family, guard):
    """The build process alone is killed with SIGKILL, at different moments, while two
    forked workers run: every worker dies with it (the kernel kills them on Linux; with
    `watchdog` only their watchdog thread is left to notice), and a rerun writes the same
    bytes as a build that was never interrupted."""
    recipe = setup_recipe(tmp_path, big_family,
                          'model base = "./ckpt/base"\nmodel math = "./ckpt/math"\n'
                          "output big = linear(math, base)\n")
    mergec.api.build(recipe, tmp_path / "clean", backend="numpy", device="cpu", jobs=2)
    clean = _files(tmp_path / "clean" / "big")
    prelude = NO_PDEATHSIG if guard == "watchdog" else ""
    kills = KILLS if guard == "pdeathsig" else max(1, KILLS // 2)
    for k in range(kills):
        out = tmp_path / f"out{k}"
        proc = _start_slow_build(recipe, out, "numpy", "--jobs", "2", prelude=prelude,
                                 settle=0.1 + 0.15 * (k % 5))
        try:
            workers = _worker_pids(proc.pid)
            assert len(workers) == 2, f"kill {k}: the build forked {len(workers)} workers"
            proc.send_signal(signal.SIGKILL)  # the build process only
            proc.wait()
            left = _survivors(workers, proc.pid)
            assert not left, f"kill {k}: processes {left} still run after the build was killed"
        finally:
            _kill_group(proc)
        assert not (out / "big").exists()
        res = mergec.api.build(recipe, out, backend="numpy", device="cpu", jobs=2)
        assert res[0].path == out / "big"
        assert temp_dirs(out, "big") == []
        assert _files(out / "big") == clean, f"kill {k}: the rerun wrote other bytes"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc")
def test_sigterm_stops_workers_removes_staging_and_names_what_was_written(tmp_path,
                                                                          big_family):
    """SIGTERM to the build process (a job scheduler's stop) cleans up as Ctrl-C does: the
    output being written is discarded with its temporary folder, the workers are stopped,
    and the message says which outputs were written."""
    recipe = setup_recipe(tmp_path, big_family,
                          'model base = "./ckpt/base"\nmodel math = "./ckpt/math"\n'
                          "output first = linear(math, base)\n"
                          "output big = linear(base, math, weight=[2, 1])\n"
                          "output last = linear(math, base, weight=[2, 1])\n")
    out = tmp_path / "out"
    proc = _start_slow_build(recipe, out, "numpy", "--jobs", "2", settle=0.3)
    try:
        workers = _worker_pids(proc.pid)
        assert len(workers) == 2
        proc.send_signal(signal.SIGTERM)  # the build process only
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 143
        assert err.decode() == (f"mergec: terminated (SIGTERM); written: first ({out / 'first'}); "
                                "not written: big, last (their targets are unchanged)\n")
        assert _survivors(workers, proc.pid) == []
    finally:
        _kill_group(proc)
    assert sorted(p.name for p in out.iterdir()) == ["first"]
    assert (out / "first" / "model.safetensors").is_file()


def test_sigterm_before_any_output_is_written(tmp_path, big_family):
    recipe = setup_recipe(tmp_path, big_family,
                          'model base = "./ckpt/base"\nmodel math = "./ckpt/math"\n'
                          "output big = linear(math, base)\n")
    out = tmp_path / "out"
    proc = _start_slow_build(recipe, out, "numpy", "--jobs", "2", settle=0.3)
    try:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        _kill_group(proc)
    assert (proc.returncode, err.decode()) == (
        143, "mergec: terminated (SIGTERM); nothing was written at the target\n")
    assert list(out.iterdir()) == []


def test_ctrl_c_with_several_outputs_names_those_written(tmp_path, family, monkeypatch,
                                                         run_cli):
    """Ctrl-C while the second of three outputs is written: the first stays, and the
    message says so."""
    import mergec.runtime.build as build_mod

    recipe = setup_recipe(tmp_path, root_of(family),
                          HEAD + "output a = linear(math, code)\noutput b = linear(math, base)\n"
                          "output c = linear(code, base)\n")
    real, cls = build_mod.build_output, backend_class("numpy")
    original = cls.wsum64

    def interrupt(self, *args, **kwargs):
        raise KeyboardInterrupt

    def build_output(lo, *args, **kwargs):
        if lo.output.name == "b":  # Ctrl-C in the middle of b
            monkeypatch.setattr(cls, "wsum64", interrupt)
        try:
            return real(lo, *args, **kwargs)
        finally:
            monkeypatch.setattr(cls, "wsum64", original)

    monkeypatch.setattr(build_mod, "build_output", build_output)
    out = tmp_path / "out"
    code, _, err = run_cli("build", recipe, "-o", out, "-q", "-j", "1")
    assert code == 130
    assert err == (f"mergec: interrupted; written: a ({out / 'a'}); "
                   "not written: b, c (their targets are unchanged)\n")
    assert sorted(p.name for p in out.iterdir()) == ["a"]


def test_ctrl_c_before_any_output_of_several(tmp_path, family, monkeypatch, run_cli):
    recipe = setup_recipe(tmp_path, root_of(family),
                          HEAD + "output a = linear(math, code)\noutput b = linear(math, base)\n")
    cls = backend_class("numpy")

    def interrupt(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cls, "wsum64", interrupt)
    out = tmp_path / "out"
    code, _, err = run_cli("build", recipe, "-o", out, "-q", "-j", "1")
    assert (code, err) == (130, "mergec: interrupted; nothing was written at the targets\n")
    assert list(out.iterdir()) == []


#: the `mergec` command with a Ctrl-C (SIGINT to itself) when it imports module argv[1]
CTRL_C_AT_IMPORT = r"""
import os, signal, sys
__file__ = "mergec"  # as the console script runs it
MODULE = sys.argv[1]

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == MODULE:
            os.kill(os.getpid(), signal.SIGINT)

sys.meta_path.insert(0, CtrlC())
sys.argv = ["mergec"] + sys.argv[2:]
from mergec.cli import app
app()
"""


@pytest.mark.parametrize("module", ["typer", "mergec.api"],
                         ids=["loading-the-cli", "loading-the-checker"])
@pytest.mark.parametrize("command", ["check", "build"])
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path, family, module, command):
    recipe = setup_recipe(tmp_path, root_of(family), HEAD + "output o = linear(math, code)\n")
    proc = subprocess.run([sys.executable, "-c", CTRL_C_AT_IMPORT, module, command,
                           str(recipe)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert (proc.returncode, proc.stderr, proc.stdout) == (
        130, "mergec: interrupted; nothing was written at the target\n", "")
    assert not (tmp_path / "out").exists()


def test_importing_the_cli_leaves_ctrl_c_alone():
    """A program that imports mergec.cli (the tests, an application) keeps Python's
    KeyboardInterrupt; only the `mergec` command itself takes Ctrl-C over at start-up."""
    code = ("import signal, mergec.cli\n"
            "assert signal.getsignal(signal.SIGINT) is signal.default_int_handler\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def _fail_on_call(monkeypatch, k: int, backend: str):
    """The k-th weighted sum fails (linear merges are computed as weighted sums). The
    count is shared with the worker processes that a NumPy build forks."""
    cls = backend_class(backend)
    original = cls.wsum64
    calls = multiprocessing.get_context("fork").Value("i", 0)

    def method(self, *args, **kwargs):
        with calls.get_lock():
            calls.value += 1
            n = calls.value
        if n == k:
            raise RuntimeError(f"kernel failure on call {k}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "wsum64", method)
    return calls



def test_exception_midway_leaves_nothing_and_exits_2(tmp_path, family, monkeypatch, run_cli,
                                                     backend):
    recipe = setup_recipe(tmp_path, root_of(family), HEAD + "output o = linear(math, code)\n")
    out = tmp_path / "out"
    calls = _fail_on_call(monkeypatch, 5, backend)
    code, stdout, stderr = run_cli("build", recipe, "-o", out, "-q",
                                   "--backend", cli_backend(backend))
    assert calls.value >= 5  # other workers may have started a sum meanwhile
    assert code == 2
    assert "E599" in stderr and "kernel failure on call 5" in stderr
    assert "Traceback" not in stderr + stdout
    assert not (out / "o").exists()
    assert temp_dirs(out, "o") == []


def test_exception_midway_with_debug_shows_the_exception(tmp_path, family, monkeypatch,
                                                        run_cli, backend):
    recipe = setup_recipe(tmp_path, root_of(family), HEAD + "output o = linear(math, code)\n")
    out = tmp_path / "out"
    _fail_on_call(monkeypatch, 5, backend)
    with pytest.raises(RuntimeError, match="kernel failure on call 5"):
        run_cli("build", recipe, "-o", out, "-q", "--backend", cli_backend(backend),
                env={"MERGEC_DEBUG": "1"})
    assert not (out / "o").exists()
    assert temp_dirs(out, "o") == []


def test_exception_midway_through_the_api(tmp_path, family, monkeypatch, backend):
    recipe = setup_recipe(tmp_path, root_of(family), HEAD + "output o = linear(math, code)\n")
    _fail_on_call(monkeypatch, 5, backend)
    with pytest.raises(RuntimeError):
        mergec.api.build(recipe, tmp_path / "out", backend=backend)
    assert not (tmp_path / "out" / "o").exists()
    assert temp_dirs(tmp_path / "out", "o") == []


# --------------------------------------------------------------------------- output folder


def test_existing_target_needs_force(tmp_path, family, run_cli):
    recipe = setup_recipe(tmp_path, root_of(family), HEAD + "output o = linear(math, code)\n")
    target = tmp_path / "out" / "o"
    target.mkdir(parents=True)
    (target / "keep.txt").write_text("old contents")
    code, stdout, stderr = run_cli("build", recipe, "-o", tmp_path / "out", "-q")
    assert code == 1
    assert "E413" in stderr and "--force" in stderr
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    assert (target / "keep.txt").read_text() == "old contents"
    # with --force it is replaced
    code, stdout, stderr = run_cli("build", recipe, "-o", tmp_path / "out", "-q", "--force")
    assert code == 0, stderr
    names = sorted(p.name for p in target.iterdir())
    assert "keep.txt" not in names and "model.safetensors" in names
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["o"]  # nothing beside


def test_empty_existing_target_is_fine(tmp_path, family, run_cli):
    recipe = setup_recipe(tmp_path, root_of(family), HEAD + "output o = linear(math, code)\n")
    (tmp_path / "out" / "o").mkdir(parents=True)
    code, _, stderr = run_cli("build", recipe, "-o", tmp_path / "out", "-q")
    assert code == 0, stderr
    assert (tmp_path / "out" / "o" / "model.safetensors").is_file()


def test_dry_run_writes_nothing(tmp_path, family, run_cli):
    recipe = setup_recipe(tmp_path, root_of(family), HEAD + "output o = linear(math, code)\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, stderr = run_cli("build", recipe, "-o", tmp_path / "out", "--dry-run")
    assert code == 0, stderr
    assert "dry run" in stdout and "output o:" in stdout
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_sharded_build_equals_unsharded(tmp_path, family, run_cli):
    recipe = setup_recipe(tmp_path, root_of(family),
                          HEAD + "output o = task_arithmetic(math, code, base=base)\n")
    code, _, err = run_cli("build", recipe, "-o", tmp_path / "one", "-q")
    assert code == 0, err
    code, _, err = run_cli("build", recipe, "-o", tmp_path / "many", "-q", "--shard-size", "100KB")
    assert code == 0, err
    one = load_file(str(tmp_path / "one" / "o" / "model.safetensors"))
    d = tmp_path / "many" / "o"
    shards = sorted(p.name for p in d.glob("*.safetensors"))
    assert not (d / "model.safetensors").exists()
    n = len(shards)
    assert n >= 3
    assert shards == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(one)
    many = {}
    for s in shards:
        h = read_header(d / s)
        data = sum(nbytes(v["shape"], v["dtype"]) for v in h.values())
        assert data <= 100_000 or len(h) == 1
        part = load_file(str(d / s))
        assert all(index["weight_map"][k] == s for k in part)
        many.update(part)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in one.values())
    assert sorted(many) == sorted(one)
    for k in one:
        assert many[k].dtype == one[k].dtype and many[k].tobytes() == one[k].tobytes(), k
    # and the sharded folder is what loaders read
    assert load_tensors(d)["lm_head.weight"].tobytes() == one["lm_head.weight"].tobytes()


# --------------------------------------------------------------------------- CLI


def test_cli_check_ok(tmp_path, family, run_cli):
    recipe = setup_recipe(tmp_path, root_of(family), PURE_RECIPE)
    code, out, err = run_cli("check", recipe)
    assert code == 0, err
    assert "ok" in out and "4 inputs" in out and "3 outputs" in out


def test_cli_check_problem_exits_1(tmp_path, family, run_cli):
    recipe = setup_recipe(tmp_path, root_of(family), HEAD + "output o = linear(math, cod)\n")
    code, out, err = run_cli("check", recipe)
    assert code == 1
    assert "E201" in err and "r.merge:4:" in err
    assert "Traceback" not in err


def test_cli_plan_json_counts_from_headers(tmp_path, family, run_cli):
    recipe = setup_recipe(tmp_path, root_of(family), PURE_RECIPE)
    code, out, err = run_cli("plan", recipe, "--json")
    assert code == 0, err
    plan = json.loads(out)
    by = {o["output"]: o for o in plan["outputs"]}
    h = {n: header_table(family[n]) for n in ("base", "math", "code", "deep")}

    def size(model, name):
        shape, dt = h[model][name]
        return nbytes(shape, dt)

    names = list(h["math"])
    # a: slerp(math, code) -> every tensor of both, bf16 out
    assert by["a"]["tensors"] == len(names)
    assert by["a"]["bytes_read"] == sum(size("math", n) + size("code", n) for n in names)
    assert by["a"]["bytes_written"] == sum(size("math", n) for n in names)
    # b: task arithmetic with base -> three inputs read
    assert by["b"]["bytes_read"] == sum(size(m, n) for m in ("base", "math", "code")
                                        for n in names)
    assert by["b"]["bytes_written"] == sum(size("math", n) for n in names)
    # c: stack, float32 out
    reads = [("math", "model.embed_tokens.weight"), ("deep", "model.norm.weight"),
             ("deep", "lm_head.weight")]
    reads += [("math", n) for n in names if n.startswith(("model.layers.0.", "model.layers.1."))]
    reads += [("deep", n) for n in h["deep"]
              if any(n.startswith(f"model.layers.{i}.") for i in range(4, 8))]
    assert by["c"]["tensors"] == len(reads) == 57
    assert by["c"]["layers"] == 6
    assert by["c"]["bytes_read"] == sum(size(m, n) for m, n in reads)
    assert by["c"]["bytes_written"] == sum(size(m, n) // 2 * 4 for m, n in reads)
    # and the build writes exactly that many bytes of tensor data
    mergec.api.build(recipe, tmp_path / "out")
    for name in ("a", "b", "c"):
        written = read_header(tmp_path / "out" / name / "model.safetensors")
        assert len(written) == by[name]["tensors"]
        assert sum(nbytes(v["shape"], v["dtype"]) for v in written.values()) == \
            by[name]["bytes_written"]


def test_cli_explain(run_cli):
    code, out, err = run_cli("explain", "E201")
    assert code == 0
    assert out.startswith("E201: unknown name")
    assert "Names are case-sensitive" in out
    code, out, err = run_cli("explain", "E2O1")
    assert code == 2


def test_cli_fmt_check_then_fmt(tmp_path, family, run_cli):
    recipe = setup_recipe(tmp_path, root_of(family),
                          'model   math="./ckpt/math"\nmodel code = "./ckpt/code"\n'
                          "output o=linear(math,code,weight=[1,2])  # mix\n")
    original = recipe.read_text()
    code, out, err = run_cli("fmt", "--check", recipe)
    assert code == 1
    assert "would reformat" in err
    assert recipe.read_text() == original  # --check changes nothing
    code, out, err = run_cli("fmt", recipe)
    assert code == 0, err
    formatted = recipe.read_text()
    assert formatted != original and "# mix" in formatted
    code, out, err = run_cli("fmt", "--check", recipe)
    assert code == 0, err
    code, out, err = run_cli("fmt", recipe)
    assert code == 0 and recipe.read_text() == formatted
    code, out, err = run_cli("check", recipe)
    assert code == 0, err
