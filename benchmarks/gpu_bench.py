#!/usr/bin/env python3
"""GPU benchmark of the mergec backends: the same merges on torch and jax, GPU and CPU.

    bash benchmarks/gpu.sh                      # ~250M-parameter checkpoints, GPU and CPU
    bash benchmarks/gpu.sh --gpu-only --runs 5  # skip the (slow) CPU rows
    bash benchmarks/gpu.sh --cpu-only --small   # a smoke test that needs no GPU

Not run in CI. What it does:

1. makes synthetic bf16 Llama checkpoints (base + math, code, chat) under
   benchmarks/work/gpu/SIZE/ckpt with mergec.demo.make_llama, unless a stamp says they are
   already there, and one recipe per merge (linear, slerp, ties, dare_ties with a seed);
2. for each backend/device (torch cuda, jax gpu, then torch cpu and jax cpu), in a fresh
   subprocess: builds every merge once untimed (the warm-up: CUDA start-up, JIT compilation),
   then ``--runs`` times timed, then once more with every backend call synchronized and timed
   (host-to-device, compute, device-to-host); a backend or device that is missing is skipped
   with the reason;
3. compares every output with the first configuration that built it (max relative
   difference of the stored values; "same" when bit-identical);
4. prints a markdown table: wall time (median), throughput in GB/s of input read (the bytes
   of the input tensors the plan reads, over the wall time), the first (warm-up) run and the
   breakdown; ``--json FILE`` also writes the numbers.

jax needs its CUDA build on the GPU: when ``jax.devices('gpu')`` fails on a machine with an
NVIDIA GPU the script runs ``pip install "jax[cuda12]==<installed jax version>"`` into this
interpreter's environment (``--no-install`` skips that; a failed install, e.g. offline, just
skips the jax GPU rows).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "benchmarks" / "work" / "gpu"

#: make_llama arguments per size; "full" is about 250M parameters (0.5 GB per bf16 model)
SIZES = {
    "full": dict(layers=6, hidden=1536, intermediate=4096, heads=12, kv_heads=4, vocab=32000),
    "small": dict(layers=2, hidden=128, intermediate=352, heads=4, kv_heads=2, vocab=512),
}
MODELS = ("base", "math", "code", "chat")
MERGES = {
    "linear": "linear(math, code, chat, weight=[0.5, 0.3, 0.2])",
    "slerp": "slerp(math, code, t=ramp(0.2, 0.8))",
    "ties": "ties(math, code, chat, base=base, density=0.3, weight=[1.0, 0.8, 0.6])",
    "dare_ties": "dare_ties(math, code, chat, base=base, density=0.5)",
}
GPU_CONFIGS = [("torch", "cuda"), ("jax", "gpu")]
CPU_CONFIGS = [("torch", "cpu"), ("jax", "cpu")]
TIMED_CALLS = {  # backend primitive -> bucket of the breakdown
    "asarray": "h2d", "to_numpy": "d2h", "host": "h2d",
    **{name: "compute" for name in (
        "wsum", "wsum64", "to_float32", "to_float64", "add", "sub", "mul", "div", "abs",
        "sign", "where", "keep", "gt", "lt", "ne", "and_", "or_", "topk_mask", "gram",
        "row_dots", "sum64", "abs_sum64", "matmul", "svd", "zeros", "zeros_like",
        "keep_mask", "uniform", "rank_ascending", "scale_rows", "transpose")},
}


# Parent: checkpoints, recipes, subprocesses, table -----------------------------------------


def make_inputs(size: str, dtype: str) -> dict[str, Path]:
    """The checkpoints and one recipe per merge; returns merge name -> recipe path."""
    sys.path.insert(0, str(ROOT))
    from mergec.demo import load_tensors, make_llama

    folder = WORK / size
    ckpt = folder / "ckpt"
    stamp = ckpt / "stamp.json"
    want = json.dumps({"models": MODELS, "seed": 0, "noise": 0.02, **SIZES[size]},
                      sort_keys=True)
    t0 = time.perf_counter()
    if not stamp.exists() or stamp.read_text() != want:
        if ckpt.exists():
            shutil.rmtree(ckpt)
        base = make_llama(ckpt / MODELS[0], dtype="bfloat16", seed=0, **SIZES[size])
        base_tensors = load_tensors(base)
        for i, name in enumerate(MODELS[1:], 1):
            make_llama(ckpt / name, dtype="bfloat16", seed=i, base=base_tensors, noise=0.02,
                       **SIZES[size])
        stamp.write_text(want)
    print(f"checkpoints ready in {ckpt} ({time.perf_counter() - t0:.1f}s)", file=sys.stderr)
    recipes = {}
    for name, expr in MERGES.items():
        text = ("set seed = 42\n" + "".join(f'model {m} = "./ckpt/{m}"\n' for m in MODELS)
                + f'output {name} = {expr} {{ dtype = "{dtype}" }}\n')
        path = folder / f"{name}.merge"
        path.write_text(text)
        recipes[name] = path
    return recipes


def input_bytes(recipe: Path) -> int:
    import mergec.api

    return sum(o.bytes_read for o in mergec.api.compile(recipe).plan.outputs)


def nvidia_gpu_present() -> bool:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        r = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


def _python_ok(code: str) -> bool:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return r.returncode == 0


def ensure_jax_gpu(install: bool) -> str | None:
    """None when jax sees a GPU (installing jax[cuda12] if needed), else why not."""
    if not _python_ok("import jax"):
        return "jax is not installed"
    probe = "import jax, sys; sys.exit(0 if jax.devices('gpu') else 1)"
    if _python_ok(probe):
        return None
    if not nvidia_gpu_present():
        return "no NVIDIA GPU (nvidia-smi lists none)"
    if not install:
        return "jax has no GPU backend (--no-install given)"
    version = subprocess.run([sys.executable, "-c", "import jax; print(jax.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    spec = f"jax[cuda12]=={version}" if version else "jax[cuda12]"
    print(f"jax has no GPU backend: pip install {spec!r} ...", file=sys.stderr)
    try:
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", "--retries", "1", "--timeout", "30",
                            spec], timeout=1800)
        ok = r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if ok and _python_ok(probe):
        return None
    return f"jax has no GPU backend and `pip install {spec}` failed (offline?)"


def run_config(backend: str, device: str, recipes: dict[str, Path], runs: int,
               out_root: Path) -> dict:
    """Run the child for one configuration; its JSON result (or {"skip": why})."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", backend, device,
           "--runs", str(runs), "--out", str(out_root),
           "--recipes", json.dumps({k: str(v) for k, v in recipes.items()})]
    env = dict(os.environ)
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU politely
    if device == "cpu":
        env.setdefault("JAX_PLATFORMS", "cpu")  # no GPU start-up for the cpu rows
    print(f"running {backend} on {device} ...", file=sys.stderr, flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    last = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not last:
        tail = (r.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"skip": f"failed (exit {r.returncode}): {tail}"}
    return json.loads(last[-1])


def compare(a: Path, b: Path) -> str:
    """'same' when every tensor of the two outputs is bit-identical, else the max relative
    difference (per tensor, over its largest magnitude)."""
    import ml_dtypes  # noqa: F401 - registers bfloat16 with numpy
    import numpy as np
    from safetensors.numpy import load_file

    def load(d: Path) -> dict:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            out.update(load_file(str(f)))
        return out

    x, y = load(a), load(b)
    if sorted(x) != sorted(y):
        return "different tensors"
    worst, same = 0.0, True
    for k in x:
        if x[k].tobytes() == y[k].tobytes():
            continue
        same = False
        u, v = x[k].astype(np.float64), y[k].astype(np.float64)
        scale = max(1e-30, float(np.abs(u).max(initial=0.0)))
        worst = max(worst, float(np.abs(u - v).max(initial=0.0)) / scale)
    return "same" if same else f"{worst:.1e}"


def table(rows: list[dict], skipped: list[tuple[str, str, str]], size: str) -> str:
    lines = [f"mergec backends, size `{size}`: wall time is the median of the timed runs, "
             "GB/s is input read per second of wall time; the breakdown (h2d / compute / "
             "d2h) comes from one extra run with every backend call synchronized.", "",
             "| merge | backend | device | input GB | wall s | GB/s | first run s | h2d s "
             "| compute s | d2h s | vs first row |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['merge']} | {r['backend']} | {r['device']} | {r['bytes'] / 1e9:.3f} "
            f"| {r['wall']:.2f} | {r['bytes'] / 1e9 / max(r['wall'], 1e-9):.2f} "
            f"| {r['first']:.2f} | {r['h2d']:.2f} | {r['compute']:.2f} | {r['d2h']:.2f} "
            f"| {r['agree']} |")
    for backend, device, why in skipped:
        lines.append(f"\nskipped {backend} on {device}: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="tiny checkpoints (a smoke test)")
    ap.add_argument("--cpu-only", action="store_true", help="only the CPU rows (no GPU needed)")
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU rows")
    ap.add_argument("--runs", type=int, default=None, help="timed runs (default 3; 1 small)")
    ap.add_argument("--merges", default=",".join(MERGES), help="comma-separated subset")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                    help="output dtype (float32 shows the numeric differences best)")
    ap.add_argument("--no-install", action="store_true",
                    help="never pip install jax[cuda12]")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", nargs=2, metavar=("BACKEND", "DEVICE"), help=argparse.SUPPRESS)
    ap.add_argument("--recipes", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1], json.loads(args.recipes),
                     args.runs or 1, args.out)
    if args.cpu_only and args.gpu_only:
        ap.error("--cpu-only and --gpu-only exclude each other")
    size = "small" if args.small else "full"
    runs = args.runs or (1 if args.small else 3)
    names = [m for m in args.merges.split(",") if m]
    unknown = [m for m in names if m not in MERGES]
    if unknown:
        ap.error(f"unknown merge(s) {', '.join(unknown)}; choose from {', '.join(MERGES)}")

    recipes = {k: v for k, v in make_inputs(size, args.dtype).items() if k in names}
    nbytes = {k: input_bytes(v) for k, v in recipes.items()}
    configs = ([] if args.cpu_only else GPU_CONFIGS) + ([] if args.gpu_only else CPU_CONFIGS)
    rows, skipped, first_out = [], [], {}
    jax_gpu_skip = None
    if ("jax", "gpu") in configs:
        jax_gpu_skip = ensure_jax_gpu(not args.no_install)
    for backend, device in configs:
        if (backend, device) == ("jax", "gpu") and jax_gpu_skip:
            skipped.append((backend, device, jax_gpu_skip))
            continue
        out_root = WORK / size / f"out-{backend}-{device}"
        res = run_config(backend, device, recipes, runs, out_root)
        if "skip" in res:
            skipped.append((backend, device, res["skip"]))
            print(f"  skipped: {res['skip']}", file=sys.stderr)
            continue
        for merge in recipes:
            r = res["merges"][merge]
            out = out_root / merge
            ref = first_out.setdefault(merge, (f"{backend}/{device}", out))
            agree = "(first)" if ref[1] == out else f"{compare(ref[1], out)} vs {ref[0]}"
            rows.append(dict(merge=merge, backend=backend, device=device, bytes=nbytes[merge],
                             wall=statistics.median(r["wall"]), first=r["first"],
                             h2d=r["h2d"], compute=r["compute"], d2h=r["d2h"], agree=agree))
    rows.sort(key=lambda r: (list(recipes).index(r["merge"]), r["device"] == "cpu"))
    print(table(rows, skipped, size))
    if args.json:
        args.json.write_text(json.dumps({"size": size, "rows": rows, "skipped": skipped},
                                        indent=2) + "\n")
    return 0


# Child: one backend on one device ----------------------------------------------------------


class _Timed:
    """A backend whose calls are synchronized and timed into buckets."""

    def __init__(self, be, sync):
        self._be, self._sync = be, sync
        self.seconds = {"h2d": 0.0, "compute": 0.0, "d2h": 0.0}

    def __getattr__(self, name):
        attr = getattr(self._be, name)
        bucket = TIMED_CALLS.get(name)
        if bucket is None or not callable(attr):
            return attr

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = attr(*args, **kwargs)
            self._sync(out)
            self.seconds[bucket] += time.perf_counter() - t0
            return out
        return timed


def _sync_for(be):
    if be.name == "torch":
        import torch

        if be.device.type == "cuda":
            return lambda out: torch.cuda.synchronize(be.device)
        return lambda out: None
    if be.name == "jax":
        import jax

        return lambda out: jax.block_until_ready(out)
    return lambda out: None


def child(backend: str, device: str, recipes: dict[str, str], runs: int, out_root: Path) -> int:
    sys.path.insert(0, str(ROOT))
    import mergec.api
    import mergec.backends
    from mergec.backends import BackendUnavailable, get_backend

    try:
        be = get_backend(backend, device)
    except (BackendUnavailable, ValueError) as e:
        print(json.dumps({"skip": str(e)}))
        return 0
    current = {"be": be}
    mergec.backends.get_backend = lambda name="auto", device="cpu": current["be"]
    compiled = {k: mergec.api.compile(v) for k, v in recipes.items()}

    def build(merge: str) -> float:
        t0 = time.perf_counter()
        mergec.api.build(recipes[merge], out_root, force=True, compiled=compiled[merge])
        return time.perf_counter() - t0

    results = {}
    for merge in recipes:
        first = build(merge)  # warm-up: device start-up, JIT compilation, page cache
        wall = [build(merge) for _ in range(runs)]
        timed = _Timed(be, _sync_for(be))
        current["be"] = timed
        build(merge)
        current["be"] = be
        results[merge] = dict(first=first, wall=wall, **timed.seconds)
        print(f"  {merge}: first {first:.2f}s, median {statistics.median(wall):.2f}s",
              file=sys.stderr, flush=True)
    print(json.dumps({"backend": backend, "device": str(getattr(be, "device", device)),
                      "merges": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
