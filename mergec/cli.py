"""The `mergec` command line.

Exit codes: 0 success, 1 problems in the recipe or its inputs, 2 usage or internal error,
130 Ctrl-C, 143 SIGTERM (a build cleans up and names the outputs it wrote).
Problems are printed as diagnostics (or JSON with `--output-format json`); a traceback is
shown only when MERGEC_DEBUG=1.

Start-up: each command imports what it needs inside its function (the checker, the IR, the
runtime, rich's progress bars), so that `mergec --help` and the light commands do not pay
for the heavy ones. See "Start-up" in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import signal
import sys

INTERRUPTED = "mergec: interrupted; nothing was written at the target"


def _interrupted_at_start_up(signum, frame) -> None:  # pragma: no cover - exits
    os.write(2, (INTERRUPTED + "\n").encode())
    os._exit(130)


def _as_command() -> bool:
    """Does this process run the `mergec` command (its console script, `python -m
    mergec.cli`), rather than a program that imports this module?"""
    main = sys.modules.get("__main__")
    script = os.path.basename(getattr(main, "__file__", None) or "")
    return __name__ == "__main__" or script in ("mergec", "mergec.exe", "mergec-script.py")


# Ctrl-C while the command starts (the imports below, parsing the command line) ends it
# with one line and exit code 130, not a traceback; each command then takes Ctrl-C back
# as a KeyboardInterrupt (see _guard), to clean up what it started.
if _as_command() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted_at_start_up)

import difflib  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
from enum import Enum  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import List, Optional  # noqa: E402

import typer  # noqa: E402

from mergec import __version__  # noqa: E402
from mergec.diagnostics import (Diagnostic, MergecError, SourceMap, UsageError,  # noqa: E402
                                render_all, to_json)
from mergec.io.errors import CheckpointError  # noqa: E402
from mergec.lang.fmt import literal  # noqa: E402

app = typer.Typer(
    name="mergec",
    help="mergec: a compiler for model-merge recipes (.merge files).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: 5GB]" is shown as written
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Fmt(str, Enum):
    text = "text"
    json = "json"


def _err(text: str) -> None:
    sys.stderr.write(text + ("\n" if not text.endswith("\n") else ""))


def _report(e: MergecError, fmt: Fmt) -> None:
    if fmt == Fmt.json:
        print(to_json(e.diagnostics))
    else:
        _err(render_all(e.diagnostics, SourceMap()))


def _guard(fn):
    """Turn known errors into diagnostics and exit codes; hide tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        fmt = kwargs.get("output_format", Fmt.text) or Fmt.text
        if signal.getsignal(signal.SIGINT) is _interrupted_at_start_up:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except UsageError as e:
            _report(e, fmt)
            raise typer.Exit(2)
        except MergecError as e:
            _report(e, fmt)
            raise typer.Exit(1)
        except CheckpointError as e:  # an input that fails while being read
            _report(MergecError(e.to_diagnostic()), fmt)
            raise typer.Exit(1)
        except BrokenPipeError:  # the reader went away (`mergec plan --json | head`)
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:  # pragma: no cover
                pass
            raise typer.Exit(0)
        except KeyboardInterrupt as e:
            _err(_interrupted(e))
            raise typer.Exit(143 if getattr(e, "terminated", False) else 130)
        except Exception as e:  # noqa: BLE001 - the last line of defence
            if os.environ.get("MERGEC_DEBUG") == "1":
                raise
            d = Diagnostic("E599", f"internal error: {type(e).__name__}: {e}",
                           help="run again with MERGEC_DEBUG=1 to see the traceback, and "
                           "report it with the recipe")
            _report(MergecError(d), fmt)
            raise typer.Exit(2)

    return wrapper


def _interrupted(e: KeyboardInterrupt) -> str:
    """One line on a build stopped by Ctrl-C or SIGTERM: which outputs were written (a
    :class:`mergec.runtime.stop.Interrupted` says) and which were not."""
    written = getattr(e, "written", [])
    not_written = getattr(e, "not_written", [])
    how = "terminated (SIGTERM)" if getattr(e, "terminated", False) else "interrupted"
    if not written:
        return INTERRUPTED.replace("interrupted", how) + ("s" if len(not_written) > 1 else "")
    text = f"mergec: {how}; written: " + ", ".join(f"{r.output} ({r.path})" for r in written)
    if not_written:
        text += "; not written: " + ", ".join(not_written) + " (their targets are unchanged)"
    return text


def _overrides(pairs: Optional[List[str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in pairs or []:
        if "=" not in p or not p.split("=", 1)[0].strip():
            raise UsageError(Diagnostic("E502", f"`--set {p}` is not `name=value`",
                                        help="for example `--set density=0.3`"))
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _size(text: Optional[str], flag: str) -> Optional[int]:
    if text is None:
        return None
    from mergec.io.sizes import parse_size

    try:
        size = parse_size(text)
    except ValueError as e:
        msg = getattr(e, "message", None) or str(e)
        raise UsageError(Diagnostic("E502", f"`{flag} {text}`: {msg}",
                                    help="sizes look like 5GB, 500MB or 2GiB")) from None
    if size <= 0:
        # as `set shard_size` / `set max_memory` in a recipe: 0 (or under a byte) is no size
        raise UsageError(Diagnostic("E502", f"`{flag} {text}`: a size must be at least 1 "
                                    "byte", help="sizes look like 5GB, 500MB or 2GiB"))
    return size


def _version(value: bool):
    if value:
        print(f"mergec {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")):
    """mergec: check, plan and build model-merge recipes."""


SET_HELP = "Override a `param` of the recipe: --set name=value (repeatable)."
FMT_HELP = "How problems are printed."


@app.command()
@_guard
def check(recipe: Path = typer.Argument(..., help="The .merge recipe."),
          set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
          output_format: Fmt = typer.Option(Fmt.text, "--output-format", help=FMT_HELP)):
    """Check a recipe and its inputs (config.json and tensor headers only)."""
    from mergec.api import check as api_check

    checked = api_check(recipe, overrides=_overrides(set_), pins=_lock_pins(recipe))
    _warn(checked, output_format)
    if output_format == Fmt.json:
        print(json.dumps({"diagnostics": [d.to_dict() for d in checked.warnings],
                          "outputs": [o.name for o in checked.outputs]}))
    else:
        n = len(checked.outputs)
        points = checked.point.count if checked.point is not None else 0
        print(f"{recipe}: ok ({len(checked.inputs)} input{'s' if len(checked.inputs) != 1 else ''}"
              f", {n} output{'s' if n != 1 else ''}"
              + (f", {points} sweep point{'s' if points != 1 else ''}" if points else "") + ")")


def _lock_pins(recipe: Path) -> Optional[dict]:
    """The hub commits of RECIPE.lock, when the recipe has one: check, plan and build
    open hub models at them."""
    from mergec.tools.lock import load, lock_path, pins

    path = lock_path(recipe)
    return pins(load(path)) if path.is_file() else None


def _warn(checked, fmt: Fmt) -> None:
    """Print the warnings of a recipe that checked (text mode; JSON carries them itself)."""
    if checked.warnings and fmt == Fmt.text:
        from mergec.diagnostics import render

        _err("\n\n".join(render(d, SourceMap()) for d in checked.warnings))


def _human(n: int) -> str:
    from mergec.io.sizes import format_size

    return format_size(n)


def _say(text: str = "") -> None:
    """Print text that holds names from input files (tensor names, paths), with control
    characters escaped as diagnostics escape them."""
    from mergec.diagnostics import escape

    print(escape(text))


def _print_plan(compiled, show_ir: Optional[str]) -> None:
    from mergec.ir.nodes import render

    sweep = compiled.sweep
    if sweep is not None:
        _say(f"sweep of {len(sweep.points)} point{'s' if len(sweep.points) != 1 else ''}: "
             + "; ".join(p.label() for p in sweep.points))
        _say(sweep.report.text().replace("written", "to write").replace(
            " computed;", " to compute;"))
    for op in compiled.plan.outputs:
        _say(f"output {op.output}:")
        if sweep is not None:
            so = next(x for x in sweep.outputs if x.name == op.output)
            _say("  folders        " + ", ".join(so.folders(sweep.points)))
        _say(f"  tensors        {op.tensors}" + (f" ({op.raw_copies} copied as stored)"
                                                  if op.raw_copies else "")
             + (" distinct (computed once, written to every point that takes them)"
                if sweep is not None else ""))
        if op.stacks:
            _say("  blocks         " + ", ".join(f"{k} {v}" for k, v in op.stacks.items()))
        elif op.layers is not None:
            _say(f"  blocks         {op.layers}")
        ops = ", ".join(f"{k} x{v}" for k, v in op.ops.items()) or "none (copies only)"
        _say(f"  ops            {ops}")
        _say(f"  read           {_human(op.bytes_read)}")
        _say(f"  write          {_human(op.bytes_written)}")
        _say(f"  peak memory    {_human(op.peak_memory)} per worker (estimate)")
        if not op.adapter:
            _say(f"  config from    {op.config_from}    tokenizer from {op.tokenizer_from}")
        if op.adapter:
            _print_adapter_plan(op.adapter)
        if op.moe:
            _say(f"  experts        {op.moe}")
        if op.files:
            _say(f"  files          {', '.join(op.files)}")
        lo = next(x for x in compiled.lowered if x.output.name == op.output)
        v = lo.output.vocab
        if v is not None:  # `set vocab`
            _say(f"  vocabulary     {v.mode}: {len(v.tokens)} tokens, {v.size} rows "
                 f"(fill: {v.fill})")
        done = [f"{r.name}: " + "; ".join(r.changes) for r in lo.reports if r.changes]
        if done:
            _say("  passes         " + "\n                 ".join(done))
    if show_ir:
        for lo in compiled.lowered:
            for i, t in enumerate(lo.tensors):
                if t.name == show_ir:
                    if lo.before is not None:
                        _say(f"\nIR of {lo.output.name}:{t.name} before the passes")
                        _say(render(lo.before[i]))
                        _say(f"\nIR of {lo.output.name}:{t.name} after the passes")
                    else:
                        _say(f"\nIR of {lo.output.name}:{t.name}")
                    _say(render(t.node))
                    break
            else:
                names = [t.name for t in lo.tensors]
                raise UsageError(Diagnostic(
                    "E502", f"output `{lo.output.name}` has no tensor `{show_ir}`",
                    help=(difflib.get_close_matches(show_ir, names, 1) and
                          f"did you mean `{difflib.get_close_matches(show_ir, names, 1)[0]}`?")
                    or None))


def _print_adapter_plan(rows) -> None:
    """The modules of an adapter output: rank and the bound on the relative error."""
    _say(f"  adapter        {len(rows)} modules (LoRA, PEFT format); relative error at most:")
    width = max(len(r.module) for r in rows)
    for r in rows:
        rank = f"rank {r.rank}" if r.rank is not None else "rank by energy"
        _say(f"    {r.module.ljust(width)}  {str(r.shape):<12} {rank:<14} <= {r.max_error:.4f}")


def _print_steps(compiled) -> None:
    for op in compiled.plan.outputs:
        _say(f"\ntensors of {op.output}, in the order the build takes them:")
        for stat in op.model_stats:
            _say(f"  first: {stat} over the whole model")
        width = max((len(s.name) for s in op.steps), default=0)
        for s in op.steps:
            how = ("copy" if s.raw_copy else "convert" if s.kind == "convert" else
                   f"{s.ops} op{'s' if s.ops != 1 else ''}")
            extra = []
            if s.rows:
                extra.append(f"{len(s.rows)} blocks")
            if s.passes:
                extra.append("after " + ", ".join(s.passes))
            if s.runs_in == "main" and len(op.steps) > 1:
                extra.append("in the build process")
            tail = f"  ({'; '.join(extra)})" if extra else ""
            _say(f"  {s.name.ljust(width)}  {s.dtype:<8} {str(s.shape):<14} {how}{tail}")


@app.command()
@_guard
def plan(recipe: Path = typer.Argument(..., help="The .merge recipe."),
         set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
         as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
         tensors: bool = typer.Option(False, "--tensors", help="List every tensor too."),
         ir: Optional[str] = typer.Option(None, "--ir", metavar="TENSOR",
                                          help="Also print the IR of one tensor."),
         max_memory: Optional[str] = typer.Option(None, "--max-memory",
                                                  help="Plan for this memory limit."),
         jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1,
                                            help="Plan for this many workers, as build -j."),
         only: Optional[List[str]] = typer.Option(
             None, "--output", help="Plan only this output (repeatable) [default: all]."),
         output_format: Fmt = typer.Option(Fmt.text, "--output-format", help=FMT_HELP)):
    """Show what a build would do, from headers alone: tensors, ops, bytes, peak memory,
    and (with --tensors or --json) every step the build takes, in its order."""
    from mergec.api import compile as api_compile

    compiled = api_compile(recipe, overrides=_overrides(set_), jobs=jobs,
                           pins=_lock_pins(recipe),
                           max_memory=_size(max_memory, "--max-memory"),
                           outputs=only or None)
    _warn(compiled.checked, output_format)
    if as_json:
        print(compiled.plan.model_dump_json(indent=2))
    else:
        _print_plan(compiled, ir)
        if tensors:
            _print_steps(compiled)


@app.command()
@_guard
def build(recipe: Path = typer.Argument(..., help="The .merge recipe."),
          out_dir: Path = typer.Option(Path("out"), "--out-dir", "-o",
                                       help="Each output is written to OUT_DIR/<name>."),
          set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
          force: bool = typer.Option(False, "--force", help="Replace non-empty output folders."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Check and plan; write nothing."),
          shard_size: Optional[str] = typer.Option(None, "--shard-size",
                                                   help="Largest shard file [default: 5GB]."),
          backend: Optional[str] = typer.Option(None, "--backend",
                                                help="torch | jax | reference | auto."),
          device: Optional[str] = typer.Option(None, "--device",
                                               help="cpu | cuda | cuda:N | gpu | auto."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
          max_memory: Optional[str] = typer.Option(
              None, "--max-memory", help="Keep tensor memory within SIZE (e.g. 512MB): "
              "entry-by-entry computations run in row blocks."),
          jobs: Optional[int] = typer.Option(
              None, "--jobs", "-j", min=1, max=256,
              help="Parallel workers on a CPU [default: the CPUs available, at most 8]; "
              "the result is the same for any number."),
          executor: Optional[str] = typer.Option(
              None, "--executor", help="local (the default) | ray: run the steps as Ray "
              "tasks (pip install 'mergec[ray]')."),
          address: Optional[str] = typer.Option(
              None, "--address", help="With --executor ray: the Ray cluster to join "
              "(e.g. ray://head:10001, or auto); without it a local Ray instance starts."),
          locked: bool = typer.Option(
              False, "--locked", help="Stop before computing unless the inputs match "
              "RECIPE.lock: file contents and hub revisions (`mergec lock`)."),
          only: Optional[List[str]] = typer.Option(
              None, "--output", help="Build only this output (repeatable) [default: all]."),
          output_format: Fmt = typer.Option(Fmt.text, "--output-format", help=FMT_HELP)):
    """Check, compile and build every output of a recipe (every point of a sweep), or those named by --output."""
    from mergec.api import build as api_build, check_targets, compile as api_compile
    from mergec.tools import lock as lk

    if executor not in (None, "local", "ray"):
        raise UsageError(Diagnostic("E473", f"unknown executor `{executor}`",
                                    help="use `--executor local` or `--executor ray`"))
    if address is not None and executor != "ray":
        raise UsageError(Diagnostic("E473", "`--address` joins a Ray cluster: it needs "
                                    "`--executor ray`",
                                    help=f"run `mergec build ... --executor ray --address "
                                    f"{address}`"))
    size = _size(shard_size, "--shard-size")
    limit = _size(max_memory, "--max-memory")
    from mergec.backends import BACKEND_NAMES

    if backend is not None and backend not in BACKEND_NAMES:
        raise UsageError(Diagnostic("E502", f"unknown backend `{backend}`",
                                    help="use " + ", ".join(BACKEND_NAMES[:-1]) +
                                    f" or {BACKEND_NAMES[-1]}"))
    if device is not None and device not in ("cpu", "cuda", "gpu", "auto") and \
            not device.startswith("cuda:"):
        raise UsageError(Diagnostic("E502", f"unknown device `{device}`",
                                    help="use cpu, cuda or auto"))
    lock_file = lk.lock_path(recipe)
    lock = lk.load(lock_file) if locked or lock_file.exists() else None
    compiled = api_compile(recipe, overrides=_overrides(set_), max_memory=limit,
                           backend=backend, device=device, jobs=jobs,
                           pins=lk.pins(lock) if lock is not None else None,
                           outputs=only or None)
    if lock is not None:  # hub inputs are pinned to the locked commits; the rest is compared
        compiled.checked.warnings += lk.check_build(compiled.checked, lock, lock_file.name,
                                                    locked=locked)
    _warn(compiled.checked, output_format)
    check_targets(compiled, out_dir, force)
    if dry_run:
        _print_plan(compiled, None)
        print("dry run: nothing written")
        return
    from mergec.backends import BackendUnavailable

    from mergec.runtime.stop import sigterm_raises

    try:
        with sigterm_raises():  # SIGTERM cleans up as Ctrl-C does
            results = _run_build(api_build, recipe, compiled, out_dir, force, size, backend,
                                 device, quiet, limit, jobs, executor, address)
    except BackendUnavailable as e:
        text = str(e)
        if "CUDA" in text or "device" in text:
            help_ = "choose a device this machine has: `--device cpu` (or `auto`)"
        elif "package" in text:
            want = backend or compiled.checked.settings.backend
            help_ = (f"install it with `pip install 'mergec[{want}]'`, or choose another "
                     "backend with `--backend`" if want in ("torch", "jax") else
                     "choose another backend with `--backend`")
        else:
            help_ = "choose another backend with `--backend`"
        raise UsageError(Diagnostic("E503", text, help=help_)) from None
    for r in results:
        if getattr(r, "skipped", False):
            _say(f"{r.output}: up to date ({r.tensors} tensors), nothing written")
            continue
        done = f"{r.tensors} tensors"
        if getattr(r, "recomputed", None) is not None and r.recomputed < r.tensors:
            done = f"recomputed {r.recomputed} of {r.tensors} tensors"
            if getattr(r, "resumed", 0):
                done += f", {r.resumed} from an interrupted build"
        _say(f"wrote {r.output}: {r.path} ({done}, {_human(r.bytes_written)}, "
             f"{r.seconds:.1f}s)")
        for line in getattr(r, "notes", ()):  # an adapter's ranks and errors
            _say("  " + line)
    if getattr(results, "sweep", None) is not None:
        _say(results.sweep.text())


def _run_build(api_build, recipe, compiled, out_dir, force, size, backend, device, quiet,
               limit=None, jobs=None, executor=None, address=None):
    if quiet:
        return api_build(recipe, out_dir, force=force, shard_size=size, backend=backend,
                         device=device, compiled=compiled, max_memory=limit, jobs=jobs,
                         executor=executor, address=address)
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    totals = {p.output: (p.tensors, p.bytes_written) for p in compiled.plan.outputs}
    console = Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.fields[tensors]}"), DownloadColumn(binary_units=True),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console,
                  transient=False) as prog:
        tasks = {}

        def progress(name: str, done: int, nbytes: int) -> None:
            n, total = totals[name]
            if name not in tasks:
                tasks[name] = prog.add_task(name, total=total, tensors=f"0/{n} tensors")
            prog.update(tasks[name], completed=nbytes, tensors=f"{done}/{n} tensors")

        return api_build(recipe, out_dir, force=force, shard_size=size, backend=backend,
                         device=device, compiled=compiled, progress=progress,
                         max_memory=limit, jobs=jobs, executor=executor, address=address)


@app.command()
@_guard
def stats(model: str = typer.Argument(..., help="The model: a folder or a hub id, as in a "
                                      "recipe."),
          data: Path = typer.Option(..., "--data", help="Texts (and labels): .jsonl or .csv."),
          kind: str = typer.Option(..., "--kind", help="fisher | gram."),
          out: Path = typer.Option(..., "--out", help="The statistics folder to write."),
          fisher: str = typer.Option("sampled", "--fisher",
                                     help="sampled (targets drawn from the model) | "
                                     "empirical (the data's labels or tokens)."),
          max_examples: Optional[int] = typer.Option(None, "--max-examples",
                                                     help="Use at most N examples."),
          batch_size: int = typer.Option(8, "--batch-size", help="Examples per forward pass "
                                         "(Gram; Fisher takes one example at a time)."),
          device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N | auto."),
          max_length: int = typer.Option(512, "--max-length", help="Tokens per example."),
          text_field: str = typer.Option("text", "--text-field", help="Field of the text."),
          label_field: str = typer.Option("label", "--label-field",
                                          help="Field of the label."),
          seed: int = typer.Option(0, "--seed", help="Seed of the sampled targets."),
          force: bool = typer.Option(False, "--force", help="Replace a non-empty folder."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar.")):
    """Compute Fisher or Gram statistics of a model on data (for `fisher` and `regmean`)."""
    from mergec.statistics import compute

    kw = dict(fisher=fisher, max_examples=max_examples, batch_size=batch_size, device=device,
              max_length=max_length, text_field=text_field, label_field=label_field,
              seed=seed, force=force)
    if quiet:
        res = compute(model, data, kind, out, **kw)
    else:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeRemainingColumn)

        prog = Progress(TextColumn(f"[bold]{kind}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("examples"), TimeRemainingColumn(),
                        console=Console(stderr=True))
        task = prog.add_task(kind, total=None)

        def progress(done: int, total: int) -> None:  # shown once the model runs
            prog.start()
            prog.update(task, completed=done, total=total)

        try:
            res = compute(model, data, kind, out, **kw, progress=progress)
        finally:
            prog.stop()
    _say(f"wrote {res.kind} statistics: {res.out} ({res.tensors} tensors, {res.examples} "
         f"examples{f', {res.rows} rows' if res.rows else ''}, {res.seconds:.1f}s)")


@app.command()
@_guard
def fmt(files: List[Path] = typer.Argument(..., help="Recipes to format."),
        check_: bool = typer.Option(False, "--check",
                                    help="Exit 1 if a file is not canonical; change nothing."),
        diff: bool = typer.Option(False, "--diff", help="Print a diff; change nothing."),
        stdout: bool = typer.Option(False, "--stdout", help="Print the result; change nothing."),
        output_format: Fmt = typer.Option(Fmt.text, "--output-format", help=FMT_HELP)):
    """Rewrite recipes in the one canonical format."""
    from mergec.lang.fmt import format_text
    from mergec.lang.source import read_recipe

    changed = []
    problems: list[Diagnostic] = []
    for f in files:
        text, name = read_recipe(f)
        try:
            new = format_text(text, name)
        except MergecError as e:
            problems += e.diagnostics
            continue
        if stdout:
            sys.stdout.write(new)
            continue
        if new != text:
            changed.append(str(f))
            if diff:
                sys.stdout.writelines(difflib.unified_diff(
                    text.splitlines(True), new.splitlines(True), f"{f} (original)",
                    f"{f} (formatted)"))
            elif not check_:
                f.write_text(new, encoding="utf-8")
    if problems:
        raise MergecError(problems)
    if check_ or diff:
        for c in changed:
            _err(f"would reformat {c}")
        if changed:
            raise typer.Exit(1)
        if check_:
            print(f"{len(files)} file{'s' if len(files) != 1 else ''} already formatted")
    elif not stdout:
        for c in changed:
            print(f"formatted {c}")


@app.command("import")
@_guard
def import_(config: Path = typer.Argument(..., help="The mergekit YAML config."),
            out: Optional[Path] = typer.Option(None, "--out", "-o",
                                               help="Write the recipe to this file "
                                               "[default: print it]."),
            name: Optional[str] = typer.Option(None, "--name",
                                               help="The output's name [default: merged]."),
            base_dir: Optional[Path] = typer.Option(
                None, "--base-dir", help="Where the config's relative model paths are, as "
                "mergekit reads them from its working folder [default: the current folder]."),
            output_format: Fmt = typer.Option(Fmt.text, "--output-format", help=FMT_HELP)):
    """Convert a mergekit YAML config into a formatted .merge recipe."""
    from mergec.tools.mergekit_import import import_file

    result = import_file(config, out=out, base_dir=base_dir, name=name)
    if result.warnings and output_format == Fmt.text:
        _err(render_all(result.warnings, SourceMap()))
    elif result.warnings:
        _err(to_json(result.warnings))
    if out is None:
        sys.stdout.write(result.text)
    else:
        out.write_text(result.text, encoding="utf-8")
        print(f"wrote {out} ({len(result.outputs)} output"
              f"{'s' if len(result.outputs) != 1 else ''}: {', '.join(result.outputs)})")


@app.command("diff")
@_guard
def diff_(a: str = typer.Argument(..., help="A checkpoint folder (or hub id), or a .merge recipe."),
          b: Optional[str] = typer.Argument(None, help="The other one, of the same kind."),
          git: Optional[str] = typer.Option(None, "--git", help="Recipes: compare recipe A at "
                                            "this git revision with A as it is now."),
          tensors: bool = typer.Option(False, "--tensors", help="List every tensor."),
          as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
          output_format: Fmt = typer.Option(Fmt.text, "--output-format", help=FMT_HELP)):
    """Compare two checkpoints tensor by tensor, or two recipes by what they compute."""
    from mergec.tools import diff as d

    recipes = a.endswith(".merge") or git is not None
    if recipes and git is not None:
        if b is not None:
            raise UsageError(Diagnostic("E502", "give one recipe with --git, not two",
                                        help=f"mergec diff {a} --git REV"))
        res = d.diff_recipes(a, a, text_a=d.git_text(Path(a), git))
        res.a = f"{a}@{git}"
    elif b is None:
        raise UsageError(Diagnostic("E502", "diff needs two checkpoints or two recipes",
                                    help="mergec diff A B, or mergec diff RECIPE --git REV"))
    elif recipes != b.endswith(".merge"):
        raise UsageError(Diagnostic("E502", "diff compares two checkpoints or two recipes, "
                                    "not one of each"))
    elif recipes:
        for r in (a, b):
            if not Path(r).is_file():
                raise UsageError(Diagnostic("E501", f"cannot read recipe `{r}`: no such file"))
        res = d.diff_recipes(a, b)
    else:
        res = d.diff_checkpoints(a, b)
    if as_json:
        print(json.dumps(res.to_json(), indent=2))
    elif isinstance(res, d.RecipeDiff):
        print(d.recipe_table(res, tensors))
    else:
        print(d.checkpoint_table(res, tensors))


@app.command("lock")
@_guard
def lock_(recipe: Path = typer.Argument(..., help="The .merge recipe."),
          check_: bool = typer.Option(False, "--check", help="Compare the inputs with "
                                      "RECIPE.lock (contents, hub revisions); write nothing."),
          set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
          output_format: Fmt = typer.Option(Fmt.text, "--output-format", help=FMT_HELP)):
    """Pin every input of a recipe (hub commits, file fingerprints) in RECIPE.lock."""
    from mergec.api import check as api_check
    from mergec.tools import lock as lk

    lock_file = lk.lock_path(recipe)
    if check_:
        lock = lk.load(lock_file)
        checked = api_check(recipe, overrides=_overrides(set_), pins=lk.pins(lock))
        lk.check_build(checked, lock, lock_file.name, locked=True)
        print(f"{recipe}: every input matches {lock_file.name}")
        return
    checked = api_check(recipe, overrides=_overrides(set_))
    _warn(checked, output_format)
    lock = lk.make_lock(checked)
    tmp = lock_file.with_name(lock_file.name + ".tmp")
    tmp.write_text(lk.dumps(lock), encoding="utf-8")
    os.replace(tmp, lock_file)
    n = sum(len(i.files) for i in lock.inputs)
    print(f"wrote {lock_file} ({len(lock.inputs)} input{'s' if len(lock.inputs) != 1 else ''}, "
          f"{n} file{'s' if n != 1 else ''})")


@app.command()
def explain(code: str = typer.Argument(..., help="A diagnostic code, e.g. E201.")):
    """Explain a diagnostic code."""
    from mergec.errors import ERRORS, explain as explain_code

    text = explain_code(code)
    if text is None:
        close = difflib.get_close_matches(code.upper(), list(ERRORS), 1)
        _err(f"mergec: E502 unknown code `{code}`" +
             (f"\n  = help: did you mean `{close[0]}`?" if close else ""))
        raise typer.Exit(2)
    print(text, end="")


@app.command()
def methods(name: Optional[str] = typer.Argument(None, help="Show one method in detail.")):
    """List the merge methods, or show one with its parameters and formula."""
    from mergec.methods import METHODS, REGISTRY

    if name is None:
        width = max(len(m.name) for m in METHODS)
        for m in METHODS:
            print(f"{m.name.ljust(width)}  {m.summary}")
        print(f"{'stack'.ljust(width)}  Concatenate runs of blocks into a new model (builtin).")
        print(f"{'ramp'.ljust(width)}  A parameter value that varies with depth (builtin).")
        return
    if name in BUILTIN_DOCS:
        print(BUILTIN_DOCS[name])
        return
    m = REGISTRY.get(name)
    if m is None:
        close = difflib.get_close_matches(name, list(REGISTRY), 1)
        _err(f"mergec: E204 unknown merge method `{name}`" +
             (f"\n  = help: did you mean `{close[0]}`?" if close else ""))
        raise typer.Exit(2)
    print(method_text(m))


BUILTIN_DOCS = {
    "stack": """stack: concatenate runs of blocks into a new model (builtin)

  inputs   one or more runs of blocks (`x.layers[a:b]`), whole models, or merges of
           equal-length runs (`slerp(a.layers[0:8], b.layers[0:8], t=0.5)`)
  result   a Model whose blocks are renumbered from 0; config.json gets the new count

  parameters:
    embed   Model  default: the first run's model   where embeddings come from
    head    Model  default: the last run's model    where the final norm and head come from""",
    "ramp": """ramp: a number that varies with depth (builtin, a parameter value)

  ramp(v0, ..., vk): for block i of n, x = i / (n - 1); the value is the piecewise-linear
  interpolation of the anchors placed evenly on [0, 1]. Tensors outside the blocks take v0.
  Example: slerp(a, b, t=ramp(0, 1)) goes from a at the first block to b at the last.""",
}


def method_text(m) -> str:
    lines = [f"{m.name}: {m.summary}", "", f"  inputs   {m.arity_text()}"]
    if m.base == "delta":
        lines.append("  base=    optional: with it the inputs are models and the result a Model;"
                     " without it the inputs are Deltas and the result a Delta")
    lines += ["", "  formula  " + m.formula, "", "  parameters:"]
    for p in m.params:
        default = "required" if p.required else literal(p.default, short=True)
        extra = " (one value, or a list with one per input)" if p.per_input else ""
        lines.append(f"    {p.name:<15} {p.type:<7} default {default:<10} range "
                     f"{p.range_text()}{extra}")
        lines.append(f"    {'':<15} {p.doc}")
    if m.random:
        lines += ["", "  random: seeded per tensor from (seed, output name, tensor name)"]
    if m.notes:
        lines += ["", "  " + m.notes]
    if m.references:
        lines += ["", "  references:"] + [f"    {r}" for r in m.references]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    app()
