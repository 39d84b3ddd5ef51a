"""`build --executor ray`: the demo recipes and a sweep built as Ray tasks are the same
bytes as with the local executor; a worker that dies is retried; a failing task or a
killed driver leaves nothing at the target. One local Ray instance serves the module."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mergec
from mergec.diagnostics import MergecError, UsageError

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ray_instance():
    import ray

    path = os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "")
                                          .split(os.pathsep) if p])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


@pytest.fixture
def demo(tmp_path, family) -> Path:
    """recipes/demo.merge beside a `ckpt` folder of the demo checkpoints."""
    (tmp_path / "ckpt").symlink_to(family["base"].parent, target_is_directory=True)
    shutil.copy(ROOT / "recipes" / "demo.merge", tmp_path / "demo.merge")
    shutil.copy(ROOT / "recipes" / "sweep.merge", tmp_path / "sweep.merge")
    return tmp_path


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def ray_executor(**kw):
    from mergec.runtime.ray_executor import RayExecutor

    return RayExecutor(**kw)


@pytest.mark.ray
def test_vocabulary_union_on_ray_is_bit_identical(ray_instance, demo):
    """Workers read the inputs' embeddings with the output's rows, as the driver does."""
    shutil.copy(ROOT / "recipes" / "vocabulary.merge", demo / "vocabulary.merge")
    [local] = mergec.build(demo / "vocabulary.merge", demo / "local", jobs=1)
    mergec.build(demo / "vocabulary.merge", demo / "ray", executor=ray_executor())
    assert files(demo / "ray" / local.output) == files(local.path)


@pytest.mark.ray
def test_demo_recipe_on_ray_is_bit_identical(ray_instance, demo):
    local = mergec.build(demo / "demo.merge", demo / "local", jobs=1)
    seen = []
    ray_out = mergec.build(demo / "demo.merge", demo / "ray", executor=ray_executor(),
                           trace=seen.append, progress=lambda *a: seen.append(a))
    assert [r.output for r in ray_out] == [r.output for r in local] == \
        ["generalist", "math_code"]
    for r in local:
        assert files(demo / "ray" / r.output) == files(r.path)
    # every tensor reported once, to the trace and to the progress bar (bytes growing)
    assert len([s for s in seen if isinstance(s, dict) and "name" in s]) == 2 * 39
    bars = [s for s in seen if isinstance(s, tuple) and s[0] == "generalist"]
    assert [b[1] for b in bars] == list(range(1, 40))
    assert bars[-1][2] == local[0].bytes_written
    assert not [p for p in (demo / "ray").iterdir() if p.name.startswith(".")]


@pytest.mark.ray
def test_a_killed_worker_is_retried(ray_instance, demo):
    marker = demo / "died"

    def die_once():  # a closure: Ray sends it by value to the workers
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)  # the worker process dies in the middle of its task

    mergec.build(demo / "demo.merge", demo / "local", jobs=1)
    mergec.build(demo / "demo.merge", demo / "ray", executor=ray_executor(before_task=die_once))
    assert marker.exists()
    for name in ("generalist", "math_code"):
        assert files(demo / "ray" / name) == files(demo / "local" / name)


@pytest.mark.ray
def test_every_recipe_on_ray_equals_the_local_build(ray_instance, demo):
    """recipes/*.merge (the demo's other recipes and the sweep) both ways."""
    recipes = sorted((ROOT / "recipes").glob("*.merge"))
    assert len(recipes) >= 5
    for r in recipes:
        if r.name == "demo.merge":
            continue  # above
        if any(line.startswith("stats ") for line in r.read_text().splitlines()):
            continue  # statistics folders: made by tests/test_recipes.py, not here
        shutil.copy(r, demo / r.name)
        local = mergec.build(demo / r.name, demo / "local" / r.stem, jobs=1)
        on_ray = mergec.build(demo / r.name, demo / "ray" / r.stem, executor=ray_executor())
        assert [x.output for x in on_ray] == [x.output for x in local]
        for x in local:
            assert files(demo / "ray" / r.stem / x.output) == files(x.path), (r.name, x.output)
        if r.name == "sweep.merge":
            assert on_ray.sweep.ran == on_ray.sweep.computed == local.sweep.computed < \
                on_ray.sweep.written


@pytest.mark.ray
def test_a_failing_task_leaves_nothing(ray_instance, demo):
    def fail():
        raise RuntimeError("disk on fire")

    with pytest.raises(MergecError) as e:
        mergec.build(demo / "demo.merge", demo / "ray", executor=ray_executor(before_task=fail))
    [d] = e.value.diagnostics
    assert d.code == "E472"
    assert d.message.startswith("a Ray task failed (tensors `")
    assert d.message.endswith("): RuntimeError: disk on fire")
    assert not (demo / "ray").exists() or list((demo / "ray").iterdir()) == []


@pytest.mark.ray
def test_task_memory_larger_than_the_cluster(ray_instance, demo):
    with pytest.raises(MergecError) as e:
        mergec.build(demo / "demo.merge", demo / "ray", max_memory=10**15,
                     executor=ray_executor(max_memory=10**15))
    assert [d.code for d in e.value.diagnostics] == ["E474"]
    assert not (demo / "ray").exists() or list((demo / "ray").iterdir()) == []


@pytest.mark.ray
def test_cli_joins_the_running_instance(ray_instance, demo, run_cli):
    code, out, err = run_cli("build", demo / "demo.merge", "-o", demo / "ray", "-q",
                             "--executor", "ray")
    assert code == 0, err
    assert out.splitlines()[0].startswith("wrote generalist: ")
    assert ray_instance.is_initialized()  # joined, not started: left running
    mergec.build(demo / "demo.merge", demo / "local", jobs=1)
    assert files(demo / "ray" / "math_code") == files(demo / "local" / "math_code")


def _driver(script: str) -> subprocess.Popen:
    """A build driver in its own Python process (this checkout first on its path)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
    return subprocess.Popen([sys.executable, "-c", script], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.ray
def test_a_killed_driver_leaves_no_output(ray_instance, demo):
    script = textwrap.dedent(f"""
        import time, mergec
        from mergec.runtime.ray_executor import RayExecutor

        def slow():
            time.sleep(60)

        mergec.build({str(demo / "demo.merge")!r}, {str(demo / "ray")!r},
                     executor=RayExecutor(address="auto", before_task=slow))
    """)
    proc = _driver(script)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                (demo / "ray").is_dir() and any((demo / "ray").iterdir())):
            time.sleep(0.1)
        staging = list((demo / "ray").iterdir())
        assert [p.name.startswith(".generalist.mergec-tmp-") for p in staging] == [True]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (demo / "ray" / "generalist").exists()
    # the next build to that folder removes the staging folder of the dead driver
    mergec.build(demo / "demo.merge", demo / "ray", jobs=1)
    assert sorted(p.name for p in (demo / "ray").iterdir()) == ["generalist", "math_code"]


def test_ray_missing_is_a_diagnostic(demo, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UsageError) as e:
        mergec.build(demo / "demo.merge", demo / "out", executor="ray")
    [d] = e.value.diagnostics
    assert (d.code, d.message) == ("E470", "`--executor ray` needs the `ray` package, "
                                   "which is not installed")
    assert not (demo / "out").exists()


def test_executor_usage_errors(demo, run_cli):
    code, _, err = run_cli("build", demo / "demo.merge", "--executor", "dask")
    assert code == 2 and "E473 unknown executor `dask`" in err
    code, _, err = run_cli("build", demo / "demo.merge", "--address", "auto")
    assert code == 2 and "E473 `--address` joins a Ray cluster: it needs `--executor ray`" \
        in err


@pytest.mark.ray
def test_an_input_error_in_a_task_is_reported_as_locally(ray_instance, demo, family):
    """An input cut short after the check: the same error as a local build's."""
    found = []
    for k, how in enumerate(({"jobs": 1}, {"executor": ray_executor()})):
        ckpt = demo / f"copy{k}"
        shutil.copytree(family["base"].parent, ckpt)
        (demo / "ckpt").unlink()
        (demo / "ckpt").symlink_to(ckpt, target_is_directory=True)
        compiled = mergec.compile(demo / "demo.merge")
        for f in (ckpt / "math").glob("*.safetensors"):
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        with pytest.raises(Exception) as e:
            mergec.build(demo / "demo.merge", demo / f"out{k}", compiled=compiled, **how)
        found.append((type(e.value).__name__, e.value.code))
        assert not (demo / f"out{k}").exists() or list((demo / f"out{k}").iterdir()) == []
    assert found == [("CheckpointError", "E408")] * 2


@pytest.mark.ray
def test_a_build_whose_driver_was_killed_resumes_from_the_finished_tensors(ray_instance,
                                                                           demo):
    """The first two Ray tasks finish, the others hang; the driver is killed once some
    tensors are journaled in the staging folder. The next build takes them over and writes
    the same bytes as a build that was never interrupted."""
    mergec.build(demo / "demo.merge", demo / "clean", jobs=1)
    tickets = demo / "tickets"
    tickets.mkdir()
    script = textwrap.dedent(f"""
        import os, time, mergec
        from mergec.runtime.ray_executor import RayExecutor

        def third_and_later_hang():
            n = len(os.listdir({str(tickets)!r}))
            open(os.path.join({str(tickets)!r}, f"t{{n}}-{{os.getpid()}}-{{time.time_ns()}}"),
                 "w").close()
            if n >= 2:
                time.sleep(60)

        mergec.build({str(demo / "demo.merge")!r}, {str(demo / "ray")!r},
                     executor=RayExecutor(address="auto", before_task=third_and_later_hang))
    """)
    proc = _driver(script)
    try:
        deadline = time.monotonic() + 90
        journal = []
        while time.monotonic() < deadline and not journal:
            journal = [j for j in (demo / "ray").glob(".generalist.mergec-tmp-*/.mergec-journal")
                       if j.read_text().strip()] if (demo / "ray").is_dir() else []
            time.sleep(0.1)
        assert journal, "no tensor was journaled"
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (demo / "ray" / "generalist").exists()
    results = mergec.build(demo / "demo.merge", demo / "ray", jobs=1)
    first = results[0]
    assert first.output == "generalist" and 0 < first.resumed < first.tensors
    for name in ("generalist", "math_code"):
        assert files(demo / "ray" / name) == files(demo / "clean" / name)
    assert sorted(p.name for p in (demo / "ray").iterdir()) == ["generalist", "math_code"]
