"""Local executor vs `--executor ray` (a local Ray instance) on one large synthetic merge
and a 10-point sweep: wall time and peak memory per process.

    python -m benchmarks.ray_sweep                     # 134m-sized checkpoints
    python -m benchmarks.ray_sweep --size tiny         # smoke test (a few seconds a run)
    python -m benchmarks.ray_sweep --layers 32 --hidden 4096 --intermediate 11008 ...

Checkpoints (`benchmarks/work/ray/SIZE/ckpt/{base,ft1,ft2,ft3}`, bf16, a random base and
three fine-tunes) are made with `mergec.demo.make_llama` and reused while their arguments
are the same. Each build runs as a fresh `mergec build` subprocess; every 20 ms the script
reads `RssAnon` of every process of its tree from /proc, and reports per build: the wall
time, the peak of the build process (the driver), the largest peak of any other process
(a worker: a forked process of the local executor, a Ray worker), the number of those
processes, and the peak of their sum. Ray's own services (gcs, raylet, dashboard agents)
are counted in the sum and reported apart. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work" / "ray"

SIZES = {  # layers, hidden, intermediate, heads, kv_heads, vocab
    "tiny": (2, 64, 176, 4, 2, 512),
    "small": (4, 256, 688, 4, 4, 8000),
    "134m": (12, 768, 2048, 12, 12, 32000),
}

MERGE = """model base = "./ckpt/base"
model ft1 = "./ckpt/ft1"
model ft2 = "./ckpt/ft2"
model ft3 = "./ckpt/ft3"

output merged = ties(ft1, ft2, ft3, base=base, weight=[0.5, 0.3, 0.2], density=0.5)
"""

SWEEP = """model base = "./ckpt/base"
model ft1 = "./ckpt/ft1"
model ft2 = "./ckpt/ft2"
model ft3 = "./ckpt/ft3"

param alpha = sweep({values})

output merged = task_arithmetic(ft1, ft2, ft3, base=base, weight=[alpha, 0.3, 0.2])
    where "*.mlp.*" {{ weight = [0.5, 0.3, 0.2] }}
"""



def checkpoints(name: str, shape: tuple) -> Path:
    from mergec.demo import make_llama

    layers, hidden, inter, heads, kv, vocab = shape
    d = WORK / name
    kw = dict(layers=layers, hidden=hidden, intermediate=inter, heads=heads, kv_heads=kv,
              vocab=vocab, dtype="bfloat16")
    base = make_llama(d / "ckpt" / "base", seed=0, **kw)
    for i in (1, 2, 3):
        make_llama(d / "ckpt" / f"ft{i}", seed=i, base=base, noise=0.002, **kw)
    return d


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(p.name))
    return kids


def _tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _rss_anon(pid: int) -> tuple[int, str]:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return 0, ""
    for line in status.splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024, cmd
    return 0, cmd


def measure(cmd: list[str], cwd: Path) -> dict:
    """Run `cmd`; wall time and peak RssAnon per process of its tree."""
    peaks: dict[int, int] = {}
    names: dict[int, str] = {}
    total = [0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            s = 0
            for pid in _tree(proc.pid):
                rss, name = _rss_anon(pid)
                s += rss
                peaks[pid] = max(peaks.get(pid, 0), rss)
                if name:
                    names[pid] = name  # a Ray worker renames itself `ray::...`
            total[0] = max(total[0], s)
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err.decode()}")
    ray = any("raylet" in n for n in names.values())

    def is_worker(n: str) -> bool:
        return n.startswith("ray::") or "default_worker.py" in n if ray else True

    others = [p for p in peaks if p != proc.pid and peaks[p]]
    services = {p for p in others if not is_worker(names.get(p, ""))}
    workers = [peaks[p] for p in others if p not in services]
    return {"wall_s": round(wall, 2), "driver_peak": peaks.get(proc.pid, 0),
            "worker_peak": max(workers, default=0), "workers": len(workers),
            "services_peak_sum": sum(peaks[p] for p in services),
            "tree_peak": total[0], "stdout": out.decode().splitlines()[-1:]}


def mib(b: int) -> str:
    return f"{b / 2**20:.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="134m", choices=sorted(SIZES))
    ap.add_argument("--points", type=int, default=10)
    ap.add_argument("--jobs", type=int, default=2, help="workers (local) / CPUs (Ray)")
    ap.add_argument("--executors", default="local,ray")
    ap.add_argument("--runs", type=int, default=1)
    a = ap.parse_args(argv)
    d = checkpoints(a.size, SIZES[a.size])
    values = ", ".join(f"{0.1 * (i + 1):.1f}" for i in range(a.points))
    (d / "merge.merge").write_text(MERGE)
    (d / "sweep.merge").write_text(SWEEP.format(values=values))
    rows = []
    for workload in ("merge", "sweep"):
        for ex in a.executors.split(","):
            for rep in range(a.runs):
                out = d / "out"
                shutil.rmtree(out, ignore_errors=True)
                cmd = [sys.executable, "-m", "mergec.cli", "build", f"{workload}.merge",
                       "-o", "out", "-q", "-j", str(a.jobs), "--executor", ex]
                r = measure(cmd, d)
                r.update(workload=workload, executor=ex, run=rep + 1)
                rows.append(r)
                print(f"{workload:<6} {ex:<6} run {rep + 1}: {r['wall_s']:7.2f} s  driver "
                      f"{mib(r['driver_peak'])}  worker max {mib(r['worker_peak'])} "
                      f"(x{r['workers']})  tree {mib(r['tree_peak'])}", flush=True)
    shutil.rmtree(d / "out", ignore_errors=True)
    path = WORK / f"results-{a.size}.json"
    path.write_text(json.dumps({"size": a.size, "shape": SIZES[a.size], "jobs": a.jobs,
                                "points": a.points, "rows": rows}, indent=2))
    print("\n| workload | executor | wall | driver peak | worker peak (count) | Ray services "
          "(sum) | whole tree peak |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['workload']} | {r['executor']} | {r['wall_s']:.2f} s | "
              f"{mib(r['driver_peak'])} | {mib(r['worker_peak'])} ({r['workers']}) | "
              f"{mib(r['services_peak_sum'])} | {mib(r['tree_peak'])} |")
    print(f"\nraw results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
