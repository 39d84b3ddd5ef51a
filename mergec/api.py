"""The Python API: parse, check, compile and build recipes.

    import mergec
    checked = mergec.check("recipes/demo.merge")            # reads headers only
    compiled = mergec.compile("recipes/demo.merge")         # + per-tensor IR and plan
    results = mergec.build("recipes/demo.merge", out_dir="out")

Every function raises ``mergec.MergecError`` with the diagnostics of all problems found.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mergec.check.checker import check_program
from mergec.check.program import CheckedProgram
from mergec.diagnostics import Diagnostic, MergecError, UsageError
from mergec.lang import ast
from mergec.limits import deep_recursion, paused_gc
from mergec.lang.parser import parse as _parse
from mergec.lang.source import read_recipe

# Start-up: `mergec check` needs only the front end. The IR, the schedule and the runtime
# (pydantic models, the backends, numpy) are imported inside the functions that use them.
if TYPE_CHECKING:
    from mergec.ir.lower import LoweredOutput
    from mergec.runtime.schedule import Plan
    from mergec.runtime.sweep import SweepPlan


@dataclass
class Compiled:
    checked: CheckedProgram
    lowered: list[LoweredOutput]
    plan: Plan
    #: a sweep's points and how their tensors are shared (`lowered` then holds the
    #: combined outputs: each distinct tensor once); None for a recipe without a sweep
    sweep: SweepPlan | None = None


def parse(text: str, file: str = "<recipe>") -> ast.Program:
    return _parse(text, file)


def check(recipe: str | Path, *, text: str | None = None,
          overrides: dict[str, str] | None = None, base_dir: Path | None = None,
          pins: dict[str, str] | None = None) -> CheckedProgram:
    """Parse and check a recipe file (or `text`, reported as `recipe`). Reads config.json
    and tensor headers of every input, never tensor data. A recipe with a sweep is checked
    at every point; the program of the first point is returned (its `point` says which,
    and how many there are). `pins` replaces source texts (a lock file's hub commits:
    `org/x` -> `org/x@COMMIT`)."""
    return check_points(recipe, text=text, overrides=overrides, base_dir=base_dir,
                        pins=pins)[0]


def check_points(recipe: str | Path, *, text: str | None = None,
                 overrides: dict[str, str] | None = None, base_dir: Path | None = None,
                 pins: dict[str, str] | None = None) -> list[CheckedProgram]:
    """The recipe checked at every point of its sweep (one program, whose `point` is
    None, when nothing is swept; see :mod:`mergec.check.sweeps`). Each input is opened
    once; a problem found at some points only names them."""
    with paused_gc(), deep_recursion():
        return _check_points(recipe, text, overrides, base_dir, pins)


def _check_points(recipe, text, overrides, base_dir, pins) -> list[CheckedProgram]:
    from mergec.check.sweeps import Sweeps, check_folders

    if text is None:
        text, file = read_recipe(recipe)
    else:
        file = str(recipe)
    program = _parse(text, file)
    if base_dir is None:
        base_dir = Path(file).resolve().parent
    overrides = dict(overrides or {})
    from mergec.io import open_input
    from mergec.io.adapter import open_adapter

    pins = pins or {}
    loaders = {"loader": lambda raw, d: open_input(pins.get(raw, raw), d),
               "adapter_loader": lambda raw, d: open_adapter(pins.get(raw, raw), d)}
    sweeps = Sweeps(program, overrides)
    if not sweeps.swept and not sweeps.diagnostics:
        return [check_program(program, overrides=overrides, base_dir=base_dir, **loaders)]
    outputs = [(st.name.name, st.name.span) for st in program.statements
               if isinstance(st, ast.OutputStmt)]
    problems = sweeps.errors
    if not problems:
        problems = check_folders(sweeps.points(), outputs)
    if problems:  # the other problems of the recipe too, checked without the sweep
        try:
            check_program(program, overrides=sweeps.fixed, base_dir=base_dir, **loaders)
        except MergecError as e:
            problems = problems + [d for d in e.diagnostics if d not in problems]
        raise MergecError(problems)
    return _check_each_point(program, sweeps, base_dir, loaders)


def _check_each_point(program: ast.Program, sweeps, base_dir: Path,
                      loaders: dict) -> list[CheckedProgram]:
    from mergec.io import CheckpointError

    opened: dict = {}

    def once(opener):
        def load(raw: str, where: Path):
            key = (opener, raw, str(where))
            if key not in opened:
                try:
                    opened[key] = (True, opener(raw, where))
                except CheckpointError as e:
                    opened[key] = (False, e)
            ok, value = opened[key]
            if not ok:
                raise value
            return value
        return load

    points = sweeps.points()
    programs: list[CheckedProgram] = []
    found: list[tuple[Diagnostic, int]] = []
    for i, point in enumerate(points):
        try:
            checked = check_program(program, overrides={**sweeps.fixed, **point.overrides()},
                                    base_dir=base_dir, loader=once(loaders["loader"]),
                                    adapter_loader=once(loaders["adapter_loader"]))
        except MergecError as e:
            found += [(d, i) for d in e.diagnostics]
            continue
        checked.point = point
        checked.overrides = dict(sweeps.fixed)
        found += [(d, i) for d in checked.warnings]
        programs.append(checked)
    diags = _at_points(found, points) + _settings_differ(program, programs)
    errors = [d for d in diags if d.severity == "error"]
    if errors:
        raise MergecError(errors + sweeps.warnings +
                          [d for d in diags if d.severity != "error"])
    programs[0].warnings = sweeps.warnings + diags
    for c in programs[1:]:
        c.warnings = []
    return programs


def _settings_differ(program: ast.Program, programs: list[CheckedProgram]) -> list:
    """A sweep is built with one backend, device, shard size and memory limit: a `set`
    of those that follows a swept param is refused (the seed may follow one)."""
    out = []
    for key in ("backend", "device", "shard_size", "max_memory"):
        values = {getattr(c.settings, key) for c in programs}
        if len(values) > 1:
            st = next((x for x in program.statements
                       if isinstance(x, ast.SetStmt) and x.name.name == key), None)
            out.append(Diagnostic(
                "E272", f"`set {key}` takes a different value at different points of the "
                "sweep", st.value.span if st is not None else None,
                f"a sweep is built with one {key.replace('_', ' ')}; of the settings, only "
                "`seed` may follow a swept param"))
    return out


def _at_points(found: list[tuple[Diagnostic, int]], points) -> list[Diagnostic]:
    """Each problem once: one found at some points only says at which."""
    where: dict[tuple, list] = {}
    first: dict[tuple, Diagnostic] = {}
    for d, i in found:
        key = (d.code, d.message, d.span, d.severity)
        first.setdefault(key, d)
        where.setdefault(key, []).append(i)
    out = []
    for key, d in first.items():
        at = where[key]
        if len(points) > 1 and len(at) < len(points):
            more = f" and {len(at) - 1} more" if len(at) > 1 else ""
            d = replace(d, message=f"{d.message} (at sweep point "
                        f"{points[at[0]].label()}{more})")
        out.append(d)
    return out


def compile(recipe: str | Path, *, text: str | None = None,  # noqa: A001 - public API name
            overrides: dict[str, str] | None = None, passes: bool = True,
            max_memory: int | None = None, backend: str | None = None,
            device: str | None = None, jobs: int | None = None,
            pins: dict[str, str] | None = None,
            outputs: list[str] | None = None) -> Compiled:
    """Check, lower to per-tensor IR and (unless `passes=False`) optimize, and schedule
    the build: its memory limit (`max_memory` or `set max_memory`), backend, device and
    workers (`jobs`) are those a build with the same arguments gets, so the plan's steps
    are the build's. A build runs the passes on an IR that has not had them. `outputs`:
    compile only the outputs of these names (E312 for a name the recipe lacks)."""
    from mergec.ir.lower import lower, optimize
    from mergec.runtime.schedule import execution, make_plan, memory_warnings

    _check_size("max_memory", max_memory)
    programs = check_points(recipe, text=text, overrides=overrides, pins=pins)
    checked = programs[0]
    if outputs is not None:
        from mergec.check.outputs import select_outputs

        for c in programs:
            select_outputs(c, outputs)
    sweep = None
    with deep_recursion(), paused_gc():
        lowered = lower(checked)
        if passes:
            optimize(lowered)
        if checked.point is not None:  # a sweep: each point lowered, its tensors grouped
            from mergec.runtime.sweep import plan_sweep, sweep_warnings

            every = [lowered] + [lower(c) for c in programs[1:]]
            if passes:
                for lw in every[1:]:
                    optimize(lw)
            sweep = plan_sweep([c.point for c in programs], programs, every)
            lowered = sweep.combined
            checked.warnings += sweep_warnings(sweep)
    limit = max_memory or checked.settings.max_memory
    checked.warnings += memory_warnings(lowered, limit)
    if any(lo.output.form is not None for lo in lowered):
        from mergec.runtime.extract import svd_memory_warnings

        checked.warnings += svd_memory_warnings(lowered, limit)
    name, dev = resolve_backend(backend or checked.settings.backend,
                                device or checked.settings.device)
    ex = execution(name, dev, jobs, [checked.source(n) for n in checked.inputs])
    plan = make_plan(checked.file, lowered, max_memory=limit, on_cpu=ex.on_cpu,
                     workers=ex.workers, pool=ex.pool, backend=name)
    return Compiled(checked, lowered, plan, sweep)


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
        names = [o.name] if compiled.sweep is None else \
            [p.folder(o.name) for p in compiled.sweep.points]
        # a folder mergec wrote is rebuilt incrementally (not E413); sweep points and
        # outputs written in another form are rebuilt whole
        incremental = compiled.sweep is None and o.form is None
        for name in names:
            target = Path(out_dir) / name
            try:
                check_target(target, force or (incremental and written_by_mergec(target)))
            except CheckpointError as e:
                diags.append(e.to_diagnostic(o.span))
    if diags:
        raise MergecError(diags)


def build(recipe: str | Path, out_dir: str | Path = "out", *, text: str | None = None,
          overrides: dict[str, str] | None = None, force: bool = False,
          shard_size: int | None = None, backend: str | None = None,
          device: str | None = None, progress=None, compiled: Compiled | None = None,
          max_memory: int | None = None, jobs: int | None = None, trace=None,
          executor=None, address: str | None = None, outputs: list[str] | None = None):
    """Check, compile and build every output of a recipe into `out_dir/<output name>`
    (a sweep: `out_dir/<output name>-<point>` for every point, see
    :mod:`mergec.check.sweeps`; the returned list then has a `sweep` attribute, the
    :class:`mergec.runtime.sweep.SweepReport`). `jobs`: parallel workers on a CPU
    (default: the CPUs available, at most 8). `executor="ray"` runs the steps as Ray
    tasks (a local Ray instance, or the cluster at `address`; see
    :mod:`mergec.runtime.ray_executor`). `trace` receives every step as it runs (see
    :mod:`mergec.runtime.build`). Ctrl-C raises :class:`mergec.runtime.stop.Interrupted`
    (a KeyboardInterrupt) once the output being written is discarded; it lists the outputs
    written before and those not written. `outputs`: build only the outputs of these
    names."""
    from mergec.backends import get_backend
    from mergec.io.writer import DEFAULT_SHARD_SIZE
    from mergec.ir.lower import optimize

    _check_size("shard_size", shard_size)
    _check_size("max_memory", max_memory)
    compiled = compiled or compile(recipe, text=text, overrides=overrides,
                                   max_memory=max_memory, backend=backend, device=device,
                                   jobs=jobs, outputs=outputs)
    if any(lo.before is None for lo in compiled.lowered):
        optimize(compiled.lowered)  # the runtime evaluates the IR the passes leave
    out_dir = Path(out_dir)
    check_targets(compiled, out_dir, force)
    settings = compiled.checked.settings
    size = shard_size or settings.shard_size or DEFAULT_SHARD_SIZE
    results = BuildResults()
    limit = max_memory or settings.max_memory
    runner = None
    try:
        if isinstance(executor, str) and executor != "local":
            from mergec.runtime.ray_executor import open_executor

            runner = open_executor(executor, address=address, jobs=jobs, max_memory=limit)
        elif executor is not None and executor != "local":
            runner = executor  # an executor object, e.g. a RayExecutor set up by the caller
        be = get_backend(backend or settings.backend, device or settings.device)
        if compiled.sweep is not None:
            from mergec.runtime.sweep import build_sweep

            results += build_sweep(compiled.sweep, out_dir, be, force=force, shard_size=size,
                                   progress=progress, max_memory=limit, jobs=jobs,
                                   trace=trace, executor=runner)
            results.sweep = compiled.sweep.report
            return results
        for lo in compiled.lowered:
            if lo.output.form is not None:  # an adapter, or a mixture of experts
                from mergec.check.program import MoeForm
                from mergec.runtime.extract import build_adapter
                from mergec.runtime.moe import build_moe

                target = out_dir / lo.output.name
                results.append(
                    build_moe(lo, compiled.checked, target, be, force=force, shard_size=size,
                              progress=progress) if isinstance(lo.output.form, MoeForm) else
                    build_adapter(lo, compiled.checked, target, be, force=force,
                                  progress=progress, max_memory=limit))
                continue
            results.append(_build_one(lo, compiled.checked, out_dir / lo.output.name, be,
                                      force=force, shard_size=size, progress=progress,
                                      max_memory=limit, jobs=jobs, trace=trace,
                                      executor=runner))
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM under stop.sigterm_raises
        from mergec.runtime.stop import Interrupted

        if isinstance(e, Interrupted):
            raise
        if compiled.sweep is not None:
            names = [r.output for r in results]
            raise Interrupted(e, list(results), [
                p.folder(so.name) for so in compiled.sweep.outputs
                for p in compiled.sweep.points if p.folder(so.name) not in names]) from e
        done = {r.output for r in results}
        raise Interrupted(e, results, [lo.output.name for lo in compiled.lowered
                                       if lo.output.name not in done]) from e
    finally:
        if runner is not None and runner is not executor:
            runner.close()
    return results


class BuildResults(list):
    """The BuildResult of every output written, in order; `sweep` is the
    :class:`mergec.runtime.sweep.SweepReport` of a sweep (None otherwise)."""

    sweep = None


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
