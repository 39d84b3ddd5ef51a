#!/usr/bin/env python3
"""Start-up time of the light commands against the floor of any typer CLI.

    python -m benchmarks.startup               # 15 runs each, writes docs/benchmarks.md
    python -m benchmarks.startup --runs 5 --no-doc
    python -m benchmarks.startup --baseline 6dcc758   # also time mergec as of that commit

Target: `mergec --help`, `mergec fmt` and `mergec check` (on a recipe whose inputs are local)
each within 0.15 s of `python -c "import typer, rich"` in the same venv. Every command is a
fresh process; the commands run in turn, run after run, so a change in the machine's load
touches them alike; the median wall time is reported. The recipe is recipes/demo.merge on
the tiny demo checkpoints (`python -m mergec.demo`), made once under benchmarks/work/.
`mergec check` reads their config.json files and safetensors headers, no tensor data.

The part of docs/benchmarks.md between the start-up markers is rewritten; the rest is kept.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work" / "startup"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN = "<!-- BEGIN GENERATED: python -m benchmarks.startup rewrites this part -->"
END = "<!-- END GENERATED: startup -->"
TARGET_S = 0.15
FLOOR = "`python -c \"import typer, rich\"`"
TYPER_APP = "a typer app: one command, one `Path` argument (what any typer CLI pays)"
TYPER_APP_CODE = ("import sys, pathlib, typer\n"
                  "app = typer.Typer()\n"
                  "@app.command()\n"
                  "def main(path: pathlib.Path, check: bool = typer.Option(False, '--check')):\n"
                  "    path.read_text()\n"
                  "app()\n")


def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def wall(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"`{shlex.join(cmd)}` failed (exit {r.returncode}):\n{r.stderr}")
    return dt


def prepare() -> Path:
    """The demo recipe next to tiny local checkpoints; returns its folder."""
    d = WORK / "demo"
    if not (d / "ckpt" / "base" / "config.json").exists():
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        subprocess.run([sys.executable, "-m", "mergec.demo", str(d / "ckpt")], check=True,
                       stdout=subprocess.DEVNULL)
    shutil.copyfile(ROOT / "recipes" / "demo.merge", d / "demo.merge")
    return d


def baseline_source(rev: str) -> tuple[Path, str]:
    snap = WORK / "baseline-src"
    shutil.rmtree(snap, ignore_errors=True)
    snap.mkdir(parents=True)
    commit = sh(["git", "-C", str(ROOT), "rev-parse", "--short", f"{rev}^{{commit}}"])
    if not commit:
        raise SystemExit(f"--baseline {rev}: not a commit of this repository")
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "mergec",
                          "grammar"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(snap)], input=tar, check=True)
    return snap, commit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15, help="runs per command (median)")
    ap.add_argument("--baseline", metavar="REV", help="also time mergec at git commit REV")
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--no-doc", action="store_true", help="print only")
    args = ap.parse_args(argv)

    d = prepare()
    py = sys.executable
    # the working tree's mergec, through the venv's interpreter; the grammar cache is kept
    # in a folder of its own, made by a first (untimed) run, as on a user's machine
    env = dict(os.environ, PYTHONPATH=str(ROOT), MERGEC_CACHE_DIR=str(WORK / "cache"))
    launcher = [py, "-c", "import sys; from mergec.cli import app; "
                "sys.argv[0] = 'mergec'; app()"]
    cmds: dict[str, tuple[list[str], dict]] = {
        FLOOR: ([py, "-c", "import typer, rich"], env),
        TYPER_APP: ([py, "-c", TYPER_APP_CODE, "demo.merge", "--check"], env),
        "`mergec --help`": (launcher + ["--help"], env),
        "`mergec fmt --check demo.merge`": (launcher + ["fmt", "--check", "demo.merge"], env),
        "`mergec check demo.merge`": (launcher + ["check", "demo.merge"], env),
        "`mergec plan demo.merge`": (launcher + ["plan", "demo.merge"], env),
    }
    base_note = ""
    if args.baseline:
        snap, commit = baseline_source(args.baseline)
        benv = dict(env, PYTHONPATH=str(snap))
        for name in ("--help", "fmt --check demo.merge", "check demo.merge"):
            cmds[f"`mergec {name}` at {commit}"] = (launcher + name.split(), benv)
        base_note = f" Rows marked with a commit run mergec as of that commit (`--baseline`)."
    for cmd, e in cmds.values():  # untimed: compiled bytecode and the grammar cache exist
        wall(cmd, d, e)
    times: dict[str, list[float]] = {k: [] for k in cmds}
    started = _dt.datetime.now()
    load0 = Path("/proc/loadavg").read_text().split()[:3]
    for _ in range(args.runs):
        for name, (cmd, e) in cmds.items():
            times[name].append(wall(cmd, d, e))
    load1 = Path("/proc/loadavg").read_text().split()[:3]
    med = {k: statistics.median(v) for k, v in times.items()}
    floor = med[FLOOR]

    head = sh(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]) or "?"
    dirty = " plus uncommitted changes" if sh(["git", "-C", str(ROOT), "status",
                                                "--porcelain", "--", "mergec"]) else ""
    lines = [BEGIN, "", "## Start-up of the light commands", "",
             f"Run {started:%Y-%m-%d %H:%M}, mergec at commit {head}{dirty}; "
             f"`python -m benchmarks.startup --runs {args.runs}"
             + (f" --baseline {args.baseline}" if args.baseline else "") + "`. "
             f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; load average "
             f"{' '.join(load0)} before, {' '.join(load1)} after. Median of {args.runs} "
             "fresh processes per command, the commands in turn; `demo.merge` is "
             "recipes/demo.merge on the tiny demo checkpoints (local; `check` reads their "
             "config.json files and safetensors headers)." + base_note, "",
             "| command | wall median (s) | min–max (s) | over the floor (s) | target |",
             "|---|---:|---:|---:|---|"]
    for name, v in times.items():
        over = med[name] - floor
        if name == FLOOR:
            target = "the floor"
        elif " at " in name or "plan" in name or name == TYPER_APP:
            target = "—"
        else:
            ok = over <= TARGET_S
            target = f"≤ {TARGET_S:.2f} s over: " + ("met" if ok else "**not met**")
        lines.append(f"| {name} | {med[name]:.3f} | {min(v):.3f}–{max(v):.3f} | "
                     f"{'' if name == FLOOR else f'{over:+.3f}'} | {target} |")
    lines += ["", END]
    text = "\n".join(lines)
    print(text)
    if not args.no_doc:
        old = args.doc.read_text(encoding="utf-8") if args.doc.exists() else ""
        if BEGIN in old and END in old:
            pre, rest = old.split(BEGIN, 1)
            new = pre + text + rest.split(END, 1)[1]
        else:
            new = old.rstrip("\n") + "\n\n" + text + "\n"
        args.doc.write_text(new, encoding="utf-8")
        print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
