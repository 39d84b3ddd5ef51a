"""Incremental builds (only the tensors whose key changed are computed; up-to-date outputs
are skipped) and resume (a SIGKILLed build continues from its staging folder); both give
the bytes of a clean build."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import mergec.api
from mergec.demo import make_llama

ROOT = Path(__file__).resolve().parent.parent
SIZES = dict(layers=2, hidden=32, intermediate=64, heads=4, kv_heads=2, vocab=64,
             dtype="float32")

RECIPE = """\
model base = "./ckpt/base"
model math = "./ckpt/math"
model code = "./ckpt/code"

output a = task_arithmetic(math, code, base=base, weight=[1.0, 0.5])
output b = slerp(math, code, t=0.5)
    where "*.mlp.*" { t = 0.3 }
output c = ties(math, code, base=base, density=0.5)
"""


@pytest.fixture()
def work(tmp_path):
    make_llama(tmp_path / "ckpt" / "base", seed=0, noise=0.0, **SIZES)
    for i, n in enumerate(("math", "code")):
        make_llama(tmp_path / "ckpt" / n, base=tmp_path / "ckpt" / "base", seed=i + 1, **SIZES)
    (tmp_path / "r.merge").write_text(RECIPE)
    return tmp_path


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _same_as_clean(work: Path, out: Path, text: str) -> None:
    """Every file of every output equals those of a build from scratch of `text`."""
    (work / "clean").mkdir(exist_ok=True)
    if not (work / "clean" / "ckpt").exists():
        (work / "clean" / "ckpt").symlink_to(work / "ckpt")
    (work / "clean" / "r.merge").write_text(text)
    mergec.api.build(work / "clean" / "r.merge", work / "clean" / "out", force=True)
    for name in ("a", "b", "c"):
        assert _files(out / name) == _files(work / "clean" / "out" / name), name


def test_edit_recomputes_only_the_affected_tensors(work, run_cli):
    r = run_cli("build", work / "r.merge", "-o", work / "out", "-q")
    assert r.exit_code == 0, r.stderr
    before = {n: (work / "out" / n / "model.safetensors").stat().st_mtime_ns
              for n in "abc"}
    # nothing changed: every output is up to date and left alone
    r = run_cli("build", work / "r.merge", "-o", work / "out", "-q")
    assert r.stdout.splitlines() == [f"{n}: up to date (21 tensors), nothing written"
                                     for n in "abc"]
    assert {n: (work / "out" / n / "model.safetensors").stat().st_mtime_ns
            for n in "abc"} == before
    # one output's MLP parameter changes: its 6 MLP tensors are computed, nothing else
    text = RECIPE.replace("t = 0.3", "t = 0.4")
    (work / "r.merge").write_text(text)
    results = mergec.api.build(work / "r.merge", work / "out")
    assert [(r.output, r.recomputed, r.skipped) for r in results] == \
        [("a", 0, False), ("b", 6, False), ("c", 0, False)]
    _same_as_clean(work, work / "out", text)
    assert sorted(p.name for p in (work / "out").iterdir()) == ["a", "b", "c"]


def test_cli_reports_the_count_and_force_recomputes_everything(work, run_cli):
    assert run_cli("build", work / "r.merge", "-o", work / "out", "-q").exit_code == 0
    (work / "r.merge").write_text(RECIPE.replace("density=0.5", "density=0.6"))
    r = run_cli("build", work / "r.merge", "-o", work / "out", "-q")
    lines = r.stdout.splitlines()
    assert lines[2].startswith(f"wrote c: {work / 'out' / 'c'} (21 tensors, ")
    assert lines[0].startswith(f"wrote a: {work / 'out' / 'a'} (recomputed 0 of 21 tensors")
    r = run_cli("build", work / "r.merge", "-o", work / "out", "-q", "--force")
    assert all("(21 tensors," in line for line in r.stdout.splitlines())


def test_folder_mergec_did_not_write_is_still_refused(work, run_cli):
    assert run_cli("build", work / "r.merge", "-o", work / "out", "-q").exit_code == 0
    (work / "out" / "b" / "mergec-keys.json").unlink()
    r = run_cli("build", work / "r.merge", "-o", work / "out", "-q")
    assert r.exit_code == 1 and "E413" in r.stderr and "out/b" in r.stderr


KILLER = """\
import os, signal, sys
import mergec.runtime.incremental as inc
after = int(os.environ["KILL_AFTER"])
done = inc.Journal.done
def dying(self, name):
    done(self, name)
    with open(self.path, encoding="utf-8") as f:
        if sum(1 for _ in f) >= after:
            os.kill(os.getpid(), signal.SIGKILL)
inc.Journal.done = dying
from mergec.cli import app
sys.argv = ["mergec"] + sys.argv[1:]
app()
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigkilled_build_resumes_from_its_staging_folder(work, jobs):
    (work / "r.merge").write_text(RECIPE + 'set shard_size = "20KB"\n')
    env = dict(os.environ, KILL_AFTER="9", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", KILLER, "build", str(work / "r.merge"),
                           "-o", str(work / "out"), "-q", "--jobs", jobs,
                           "--backend", "reference"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    staging = [p for p in (work / "out").iterdir() if p.name.startswith(".a.mergec-tmp-")]
    assert len(staging) == 1 and not (work / "out" / "a").exists()
    assert len(list(staging[0].glob("model-*.safetensors"))) > 1  # several shards
    results = mergec.api.build(work / "r.merge", work / "out", jobs=int(jobs),
                               backend="reference")
    a = results[0]
    assert (a.output, a.resumed, a.recomputed) == ("a", 9, 12)
    assert [r.resumed for r in results[1:]] == [0, 0]
    assert sorted(p.name for p in (work / "out").iterdir()) == ["a", "b", "c"]
    _same_as_clean(work, work / "out", RECIPE + 'set shard_size = "20KB"\n')


def test_model_wide_trim_recomputes_the_whole_output(work):
    """TIES with trim="model" ranks the tensors of an output together: a change in some of
    them moves the threshold of the others, so every tensor of that output is computed."""
    text = RECIPE.replace("density=0.5)", 'density=0.5, trim="model")\n'
                          '    where "*.mlp.*" { density = 0.3 }')
    (work / "r.merge").write_text(text)
    mergec.api.build(work / "r.merge", work / "out")
    text = text.replace("density = 0.3", "density = 0.4")
    (work / "r.merge").write_text(text)
    results = mergec.api.build(work / "r.merge", work / "out")
    assert [(r.output, r.recomputed) for r in results] == [("a", 0), ("b", 0), ("c", 21)]
    _same_as_clean(work, work / "out", text)
