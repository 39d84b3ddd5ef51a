"""The Python API: parse, check, compile and build recipes.

    import mergec
    checked = mergec.check("recipes/demo.merge")            # reads headers only
    compiled = mergec.compile("recipes/demo.merge")         # + per-tensor IR and plan
    results = mergec.build("recipes/demo.merge", out_dir="out")

Every function raises ``mergec.MergecError`` with the diagnostics of all problems found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mergec.check.checker import check_program
from mergec.check.program import CheckedProgram
from mergec.diagnostics import Diagnostic, MergecError, UsageError
from mergec.lang import ast
from mergec.lang.parser import parse as _parse
from mergec.lang.source import read_recipe

# Start-up: `mergec check` needs only the front end. The IR, the schedule and the runtime
# (pydantic models, the backends, numpy) are imported inside the functions that use them.
if TYPE_CHECKING:
    from mergec.ir.lower import LoweredOutput
    from mergec.runtime.schedule import Plan


@dataclass
class Compiled:
    checked: CheckedProgram
    lowered: list[LoweredOutput]
    plan: Plan


def parse(text: str, file: str = "<recipe>") -> ast.Program:
    return _parse(text, file)


def check(recipe: str | Path, *, text: str | None = None,
          overrides: dict[str, str] | None = None, base_dir: Path | None = None,
          pins: dict[str, str] | None = None) -> CheckedProgram:
    """Parse and check a recipe file (or `text`, reported as `recipe`). Reads config.json
    and tensor headers of every input, never tensor data. `pins` replaces source texts
    (a lock file's hub commits: `org/x` -> `org/x@COMMIT`)."""
    if text is None:
        text, file = read_recipe(recipe)
    else:
        file = str(recipe)
    program = _parse(text, file)
    if base_dir is None:
        base_dir = Path(file).resolve().parent
    loaders = {}
    if pins:
        from mergec.io import open_input
        from mergec.io.adapter import open_adapter

        loaders = {"loader": lambda raw, d: open_input(pins.get(raw, raw), d),
                   "adapter_loader": lambda raw, d: open_adapter(pins.get(raw, raw), d)}
    return check_program(program, overrides=overrides, base_dir=base_dir, **loaders)


def compile(recipe: str | Path, *, text: str | None = None,  # noqa: A001 - public API name
            overrides: dict[str, str] | None = None, passes: bool = True,
            max_memory: int | None = None, backend: str | None = None,
            device: str | None = None, jobs: int | None = None,
            pins: dict[str, str] | None = None) -> Compiled:
    """Check, lower to per-tensor IR and (unless `passes=False`) optimize, and schedule
    the build: its memory limit (`max_memory` or `set max_memory`), backend, device and
    workers (`jobs`) are those a build with the same arguments gets, so the plan's steps
    are the build's. A build runs the passes on an IR that has not had them."""
    from mergec.ir.lower import lower, optimize
    from mergec.runtime.schedule import execution, make_plan, memory_warnings

    _check_size("max_memory", max_memory)
    checked = check(recipe, text=text, overrides=overrides, pins=pins)
    lowered = lower(checked)
    if passes:
        optimize(lowered)
    limit = max_memory or checked.settings.max_memory
    checked.warnings += memory_warnings(lowered, limit)
    name, dev = resolve_backend(backend or checked.settings.backend,
                                device or checked.settings.device)
    ex = execution(name, dev, jobs, [checked.source(n) for n in checked.inputs])
    plan = make_plan(checked.file, lowered, max_memory=limit, on_cpu=ex.on_cpu,
                     workers=ex.workers, pool=ex.pool, backend=name)
    return Compiled(checked, lowered, plan)


def _check_size(name: str, value) -> None:
    """A size given as an argument is a whole number of bytes >= 1, as `set` requires
    (0 is not "no limit": that is None)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise UsageError(Diagnostic("E502", f"`{name}={value!r}`: a size must be a whole "
                                    "number of bytes >= 1",
                                    help="give None for the default"))


def resolve_backend(name: str, device: str) -> tuple[str, str]:
    """The backend `auto` stands for, and the kind of device a build on it uses ("cpu"
    or the device asked for), without importing any backend library."""
    from mergec.backends import auto_backend, gpu_present

    if name == "numpy":
        name = "reference"
    if name == "auto":
        name = auto_backend(device)
    if name == "reference" or device == "cpu" or (device == "auto" and not gpu_present()):
        return name, "cpu"
    return name, device


def check_targets(compiled: Compiled, out_dir: Path, force: bool) -> None:
    """Refuse non-empty output folders before any tensor is read."""
    from mergec.io.errors import CheckpointError
    from mergec.io.writer import check_target
    from mergec.runtime.incremental import written_by_mergec

    diags = []
    for o in compiled.checked.outputs:
        target = Path(out_dir) / o.name
        try:  # a folder mergec wrote is rebuilt incrementally: not E413
            check_target(target, force or written_by_mergec(target))
        except CheckpointError as e:
            diags.append(e.to_diagnostic(o.span))
    if diags:
        raise MergecError(diags)


def build(recipe: str | Path, out_dir: str | Path = "out", *, text: str | None = None,
          overrides: dict[str, str] | None = None, force: bool = False,
          shard_size: int | None = None, backend: str | None = None,
          device: str | None = None, progress=None, compiled: Compiled | None = None,
          max_memory: int | None = None, jobs: int | None = None, trace=None):
    """Check, compile and build every output of a recipe into `out_dir/<output name>`.
    `jobs`: parallel workers on a CPU (default: the CPUs available, at most 8). `trace`
    receives every step as it runs (see :mod:`mergec.runtime.build`). Ctrl-C raises
    :class:`mergec.runtime.stop.Interrupted` (a KeyboardInterrupt) once the output being
    written is discarded; it lists the outputs written before and those not written."""
    from mergec.backends import get_backend
    from mergec.io.writer import DEFAULT_SHARD_SIZE
    from mergec.ir.lower import optimize
    from mergec.runtime.build import build_output

    _check_size("shard_size", shard_size)
    _check_size("max_memory", max_memory)
    compiled = compiled or compile(recipe, text=text, overrides=overrides,
                                   max_memory=max_memory, backend=backend, device=device,
                                   jobs=jobs)
    if any(lo.before is None for lo in compiled.lowered):
        optimize(compiled.lowered)  # the runtime evaluates the IR the passes leave
    out_dir = Path(out_dir)
    check_targets(compiled, out_dir, force)
    settings = compiled.checked.settings
    size = shard_size or settings.shard_size or DEFAULT_SHARD_SIZE
    results = []
    try:
        be = get_backend(backend or settings.backend, device or settings.device)
        for lo in compiled.lowered:
            results.append(_build_one(lo, compiled.checked, out_dir / lo.output.name, be,
                                      force=force, shard_size=size, progress=progress,
                                      max_memory=max_memory or settings.max_memory,
                                      jobs=jobs, trace=trace))
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM under stop.sigterm_raises
        from mergec.runtime.stop import Interrupted

        if isinstance(e, Interrupted):
            raise
        done = {r.output for r in results}
        raise Interrupted(e, results, [lo.output.name for lo in compiled.lowered
                                       if lo.output.name not in done]) from e
    return results


def _build_one(lo, checked, target: Path, be, *, force: bool, **kw):
    """One output, incrementally: skipped when its key is the one recorded in `target`;
    otherwise the tensors whose keys are unchanged are copied from the previous output
    (not with `force`) or from a killed build's staging folder, and the rest computed
    (:mod:`mergec.runtime.incremental`)."""
    from mergec.runtime import incremental as inc
    from mergec.runtime.build import BuildResult, build_output

    keys = inc.tensor_keys(lo, checked, getattr(be, "name", ""))
    whole = inc.output_key(keys, lo, checked)
    reuse: dict = {}
    ours = inc.written_by_mergec(target)
    if ours and not force:
        if (inc.recorded(target) or {}).get("output") == whole:
            return BuildResult(lo.output.name, target, len(lo.tensors), 0, 0.0, recomputed=0,
                               skipped=True)
        reuse = inc.reusable_from_output(target, keys, lo)
    staging = inc.claim_resumable(target, keys)
    staged = inc.reusable_from_staging(staging, keys, lo) if staging is not None else {}
    resumed = [n for n in staged if n not in reuse]
    result = build_output(lo, checked, target, be, force=force or ours,
                          reuse={**staged, **reuse}, keys=(keys, whole), **kw)
    inc.discard(staging)
    result.resumed = len(resumed)
    return result
