"""--max-memory: entry-by-entry tensors are computed in row blocks that fit the limit,
bit-identical to whole-tensor builds; the rest is named by a W302 warning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mergec.api import build, compile
from mergec.demo import load_tensors
from mergec.io.checkpoint import Checkpoint

RECIPE = """model base = "./ckpt/base"
model math = "./ckpt/math"
model code = "./ckpt/code"
output ta = task_arithmetic(math, code, base=base, weight=[0.3, 0.6], lambda=0.8)
output ar = base + 0.7 * (math - base) - 0.2 * (code - base) { dtype = "float32" }
output ns = nearswap(math, base=base, t=0.01)
output cp = stack(math.layers[0:2], code.layers[2:4])
output cv = stack(math.layers[0:4]) { dtype = "float16" }
output ti = ties(math, code, base=base, density=[0.3, 0.5], weight=[0.6, 0.4])
output tm = ties(math, code, base=base, density=0.4, trim="model") { dtype = "float32" }
output dt = dare_ties(math, code, base=base, density=0.6)
output dl = dare_linear(math, code, base=base, density=0.5) { dtype = "float32" }
"""


@pytest.mark.parametrize("fam", ["family", "family_f32"])
def test_row_blocks_give_the_same_bytes_and_fit(tmp_path, fam, request, monkeypatch, backend):
    family = request.getfixturevalue(fam)
    (tmp_path / "ckpt").symlink_to(Path(family["base"]).parent)
    r = tmp_path / "r.merge"
    r.write_text(RECIPE)
    build(r, tmp_path / "whole", backend=backend)
    limit = 16 * 1024
    comp = compile(r, max_memory=limit, backend=backend)
    assert not comp.checked.warnings  # everything here can be split
    assert all(o.peak_memory <= limit for o in comp.plan.outputs)
    rows_read: list[int] = []
    whole_reads: list[str] = []
    real_rows, real_read = Checkpoint.read_rows, Checkpoint.read

    def read_rows(self, name, start, stop):
        rows_read.append(stop - start)
        return real_rows(self, name, start, stop)

    def read(self, name):
        whole_reads.append(name)
        return real_read(self, name)

    monkeypatch.setattr(Checkpoint, "read_rows", read_rows)
    monkeypatch.setattr(Checkpoint, "read", read)
    build(r, tmp_path / "blocks", max_memory=limit, backend=backend)
    assert rows_read and max(rows_read) < 128  # the 128-row tensors were split
    big = {n for n, i in compile(r).checked.inputs["base"].checkpoint.tensors.items()
           if i.shape[0] >= 128}
    assert not big & set(whole_reads)  # no big tensor was read whole
    for out in ("ta", "ar", "ns", "cp", "cv", "ti", "tm", "dt", "dl"):
        a, b = load_tensors(tmp_path / "whole" / out), load_tensors(tmp_path / "blocks" / out)
        for n in a:
            assert np.array_equal(a[n].view(np.uint8), b[n].view(np.uint8)), (out, n)


def test_whole_tensor_methods_are_named_by_a_warning(tmp_path, family):
    (tmp_path / "ckpt").symlink_to(Path(family["base"]).parent)
    r = tmp_path / "r.merge"
    r.write_text('model base = "./ckpt/base"\nmodel math = "./ckpt/math"\n'
                 "output t = iso_c(math, base=base)\n"
                 "output l = linear(math, base)\n")
    comp = compile(r, max_memory=16 * 1024)
    (w,) = comp.checked.warnings
    assert w.code == "W302"
    assert w.message == ("output `t`: 30 tensors need more than the memory limit 16.0 KiB at "
                         "once (`lm_head.weight`: 192.0 KiB)")


WHOLE_TENSOR_STATS = """model base = "./ckpt/base"
model math = "./ckpt/math"
model code = "./ckpt/code"
output sl = slerp(math, code, t=0.3)
output nf = nuslerp(math, code, weight=[1, 3])
output nr = nuslerp(math, code, weight=[1, 3], flatten=false, row_wise=true)
output ms = multislerp(math, code, base, weight=[1, 2, 1])
output ka = karcher(math, code, base)
output mo = model_stock(math, code, base=base)
output mf = model_stock(math, code, base=base, filter_wise=true)
output d1 = dare_ties(math, code, base=base, density=0.5, rescale="l1")
output d2 = dare_linear(math, code, base=base, density=[0.3, 1.0], rescale="l1")
output te = ties(math, code, base=base, density=[0.2, 0.7], weight=[1, 2])
output tn = slerp(ties(math, code, base=base, density=0.5), base, t=0.5)
"""


@pytest.mark.parametrize("fam", ["family", "family_f32"])
def test_whole_tensor_statistics_do_not_depend_on_blocks_or_workers(tmp_path, fam, request,
                                                                     backend):
    """Inner products (slerp & co, model stock), L1 norms (DARE rescale="l1") and TIES
    thresholds are whole-tensor statistics: computed from passes over row blocks, the
    result is the same bytes for any block size and any number of workers."""
    family = request.getfixturevalue(fam)
    (tmp_path / "ckpt").symlink_to(Path(family["base"]).parent)
    r = tmp_path / "r.merge"
    r.write_text(WHOLE_TENSOR_STATS)
    assert not compile(r, max_memory=16 * 1024, backend=backend).checked.warnings  # all splits
    build(r, tmp_path / "whole", jobs=1, backend=backend)
    build(r, tmp_path / "blocks", max_memory=16 * 1024, jobs=1, backend=backend)
    build(r, tmp_path / "workers", max_memory=8 * 1024, jobs=3, backend=backend)
    for out in ("sl", "nf", "nr", "ms", "ka", "mo", "mf", "d1", "d2", "te", "tn"):
        a = load_tensors(tmp_path / "whole" / out)
        for other in ("blocks", "workers"):
            b = load_tensors(tmp_path / other / out)
            for n in a:
                assert np.array_equal(a[n].view(np.uint8), b[n].view(np.uint8)), (out, n, other)


FORKED = """import sys
from mergec.cli import app
import mergec.runtime.schedule as sch
import mergec.io.weight_files as wf
sch.HEAVY_BYTES = 1  # every tensor computed whole is computed by the build process
if len(sys.argv) > 2:  # reads of one tensor fail, in whichever worker computes it
    real = wf.read_span
    def fail(path, offset, nbytes, *, tensor=None):
        if offset is not None and nbytes == int(sys.argv[2]):
            raise OSError(5, "Input/output error")
        return real(path, offset, nbytes, tensor=tensor)
    wf.read_span = fail
try:
    app(["build", "r.merge", "-o", sys.argv[1], "--quiet", "--jobs", "2"])
except SystemExit as e:
    assert "torch" not in sys.modules and "jax" not in sys.modules
    sys.exit(e.code)
"""


def test_forked_workers_write_the_same_bytes_and_fail_cleanly(tmp_path, family):
    """With the NumPy backend a build forks worker processes (in a fresh interpreter that
    has imported neither torch nor jax), while the build process computes the tensors that
    are computed whole: same bytes as one worker in this process; an I/O error in a
    worker is one diagnostic, exit 1, and nothing at the target."""
    import subprocess
    import sys

    (tmp_path / "ckpt").symlink_to(Path(family["base"]).parent)
    r = tmp_path / "r.merge"
    r.write_text(WHOLE_TENSOR_STATS + RECIPE.split("\n", 3)[3] +
                 "output bc = breadcrumbs(math, code, base=base, density=0.5, gamma=0.01)\n")
    build(r, tmp_path / "one", jobs=1)
    run = subprocess.run([sys.executable, "-c", FORKED, "forked"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    for out in [p.name for p in (tmp_path / "one").iterdir()]:
        a = load_tensors(tmp_path / "one" / out)
        b = load_tensors(tmp_path / "forked" / out)
        assert a.keys() == b.keys()
        for n in a:
            assert np.array_equal(a[n].view(np.uint8), b[n].view(np.uint8)), (out, n)
    info = Checkpoint  # the size of one down_proj weight: the read that fails
    base = compile(r).checked.inputs["base"].checkpoint
    size = base.info("model.layers.1.mlp.down_proj.weight").nbytes
    run = subprocess.run([sys.executable, "-c", FORKED, "broken", str(size)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 1, run.stderr
    assert "E412" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "broken").exists() or not any(
        p.is_dir() and not p.name.startswith(".") for p in (tmp_path / "broken").iterdir())


def test_without_process_support_the_build_uses_threads(monkeypatch):
    """Where no process pool can be made (no POSIX semaphores, say), process_pool says so
    and the build falls back to threads instead of failing."""
    import multiprocessing

    from mergec.runtime import parallel

    def broken(method=None):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(multiprocessing, "get_context", broken)
    assert parallel.process_pool(2) is None


def test_heavy_whole_tensors_are_computed_one_at_a_time(tmp_path, family, monkeypatch):
    """Tensors computed whole that need a lot of memory are computed by the build process
    itself, one after the other, whatever the number of workers; same bytes."""
    from mergec.runtime import build as runtime_build
    from mergec.runtime import parallel, schedule

    (tmp_path / "ckpt").symlink_to(Path(family["base"]).parent)
    r = tmp_path / "r.merge"
    r.write_text('model base = "./ckpt/base"\nmodel math = "./ckpt/math"\n'
                 'model code = "./ckpt/code"\n'
                 "output bc = breadcrumbs(math, code, base=base, density=0.5, gamma=0.01)\n"
                 "output ta = task_arithmetic(math, code, base=base)\n")
    build(r, tmp_path / "one", jobs=1)
    monkeypatch.setattr(schedule, "HEAVY_BYTES", 1)
    running, most = [0], [0]
    real = runtime_build.run_step

    def counting(t, *a, **k):
        heavy = schedule.is_heavy(t)
        running[0] += heavy
        most[0] = max(most[0], running[0])
        try:
            return real(t, *a, **k)
        finally:
            running[0] -= heavy

    monkeypatch.setattr(runtime_build, "run_step", counting)
    monkeypatch.setattr(parallel, "can_fork", lambda *a: False)  # threads: countable here
    build(r, tmp_path / "many", jobs=3)
    assert most[0] == 1
    for out in ("bc", "ta"):
        a, b = load_tensors(tmp_path / "one" / out), load_tensors(tmp_path / "many" / out)
        for n in a:
            assert np.array_equal(a[n].view(np.uint8), b[n].view(np.uint8)), (out, n)
