"""Front-end scaling: time of `check` and `plan` against recipe size.

Writes recipes of 1k, 10k and 100k statements (blocks of ten realistic statements: models'
task vectors, a TIES merge, a slerp, a stack of layer runs, a `where`; an output every ten
blocks) and
`let` chains of 1,000 statements in three shapes (a value used twice per step, a chain of
merge calls, a running sum), then runs `mergec check` and `mergec plan` on each in a fresh
process and reports the median wall time of several runs.

    python benchmarks/frontend.py                 # print the table
    python benchmarks/frontend.py --write-docs    # and put it into docs/benchmarks.md

The checkpoints are the demo's (`python -m mergec.demo`), written into a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- frontend:begin -->", "<!-- frontend:end -->"


def block(k: int) -> list[str]:
    """Ten statements, the k-th copy."""
    return [
        f"param w{k} = 0.{k % 9 + 1}",
        f"let da{k} = math - base",
        f"let db{k} = code - base",
        f"let t{k} = ties(da{k}, db{k}, density=0.5)",
        f"let m{k} = base + w{k} * t{k}",
        f"let s{k} = slerp(m{k}, chat, t=0.5)",
        f"let l{k} = linear(s{k}, m{k}, weight=[0.5, 0.5])",
        f"let h{k} = stack(l{k}.layers[0:2], s{k}.layers[2:4])",
        f"let z{k} = dare_ties(math, code, base=base, density=0.3)\n"
        f"    where \"*.mlp.*\" {{ density = 0.6 }}",
        # an output every tenth block: the others are values no output uses, which the
        # checker checks all the same
        f"{'output' if k % 10 == 0 else 'let'} o{k} = linear(h{k}, z{k}, weight=[0.5, 0.5])",
    ]


def sized(n: int) -> str:
    lines = ['model base = "./ckpt/base"', 'model math = "./ckpt/math"',
             'model code = "./ckpt/code"', 'model chat = "./ckpt/chat"']
    for k in range((n - 4) // 10):
        lines += block(k)
    return "\n".join(lines) + "\n"


def chain(n: int, shape: str) -> str:
    lines = ['model base = "./ckpt/base"', 'model math = "./ckpt/math"', "let a0 = math"]
    for i in range(1, n):
        if shape == "shared":  # each step uses the previous value twice
            lines.append(f"let a{i} = 0.5 * a{i - 1} + 0.5 * a{i - 1}")
        elif shape == "calls":  # a chain of merge calls
            lines.append(f"let a{i} = linear(a{i - 1}, base, weight=[0.9, 0.1])")
        else:  # a running sum of task vectors
            lines.append(f"let a{i} = a{i - 1} + 0.001 * (math - base)")
    lines.append(f"output o = a{n - 1}")
    return "\n".join(lines) + "\n"


def run(cmd: list[str], runs: int) -> tuple[float, int]:
    """Median wall seconds of `cmd` over `runs` runs, and its exit status."""
    times, rc = [], 0
    for _ in range(runs):
        t = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
        times.append(time.perf_counter() - t)
        rc = p.returncode
        if rc:
            sys.stderr.write(p.stderr[-2000:])
    return statistics.median(times), rc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--chain", type=int, default=1000)
    ap.add_argument("--write-docs", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, "-m", "mergec.demo", str(work / "ckpt")], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        cases = [(f"{int(n):,} statements", sized(int(n))) for n in args.sizes.split(",")]
        cases += [(f"`let` chain of {args.chain:,}, {s}", chain(args.chain, s))
                  for s in ("shared", "calls", "sum")]
        for label, text in cases:
            f = work / "r.merge"
            f.write_text(text)
            n = text.count("\n")
            cells = [label, f"{n:,}"]
            for cmd in ("check", "plan"):
                t, rc = run([sys.executable, "-m", "mergec.cli", cmd, str(f)], args.runs)
                cells.append(f"{t:.2f}" if rc == 0 else f"{t:.2f} (exit {rc})")
            rows.append(cells)
            print(" | ".join(cells), flush=True)
    table = ["| recipe | lines | check (s) | plan (s) |", "|---|---:|---:|---:|"]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    text = "\n".join(table)
    print(text)
    if args.write_docs:
        doc = DOCS.read_text()
        block_text = (f"{BEGIN}\n{text}\n\nMedian of {args.runs} runs, each in a fresh process "
                      f"(start-up included). Regenerate: `python benchmarks/frontend.py "
                      f"--write-docs`.\n{END}")
        if BEGIN in doc:
            doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block_text, doc,
                         flags=re.S)
        else:
            doc += "\n## Front end: check and plan against recipe size\n\n" + block_text + "\n"
        DOCS.write_text(doc)


if __name__ == "__main__":
    main()
