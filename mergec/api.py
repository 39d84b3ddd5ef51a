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
          overrides: dict[str, str] | None = None, base_dir: Path | None = None
          ) -> CheckedProgram:
    """Parse and check a recipe file (or `text`, reported as `recipe`). Reads config.json
    and tensor headers of every input, never tensor data."""
    if text is None:
        text, file = read_recipe(recipe)
    else:
        file = str(recipe)
    program = _parse(text, file)
    if base_dir is None:
        base_dir = Path(file).resolve().parent
    return check_program(program, overrides=overrides, base_dir=base_dir)


def compile(recipe: str | Path, *, text: str | None = None,  # noqa: A001 - public API name
            overrides: dict[str, str] | None = None, passes: bool = True,
            max_memory: int | None = None, backend: str | None = None,
            device: str | None = None, jobs: int | None = None,
            outputs: list[str] | None = None) -> Compiled:
    """Check, lower to per-tensor IR and (unless `passes=False`) optimize, and schedule
    the build: its memory limit (`max_memory` or `set max_memory`), backend, device and
    workers (`jobs`) are those a build with the same arguments gets, so the plan's steps
    are the build's. A build runs the passes on an IR that has not had them. `outputs`:
    compile only the outputs of these names (E312 for a name the recipe lacks)."""
    from mergec.ir.lower import lower, optimize
    from mergec.runtime.schedule import execution, make_plan, memory_warnings

    _check_size("max_memory", max_memory)
    checked = check(recipe, text=text, overrides=overrides)
    if outputs is not None:
        from mergec.check.outputs import select_outputs

        select_outputs(checked, outputs)
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

    diags = []
    for o in compiled.checked.outputs:
        try:
            check_target(Path(out_dir) / o.name, force)
        except CheckpointError as e:
            diags.append(e.to_diagnostic(o.span))
    if diags:
        raise MergecError(diags)


def build(recipe: str | Path, out_dir: str | Path = "out", *, text: str | None = None,
          overrides: dict[str, str] | None = None, force: bool = False,
          shard_size: int | None = None, backend: str | None = None,
          device: str | None = None, progress=None, compiled: Compiled | None = None,
          max_memory: int | None = None, jobs: int | None = None, trace=None,
          outputs: list[str] | None = None):
    """Check, compile and build every output of a recipe into `out_dir/<output name>`.
    `jobs`: parallel workers on a CPU (default: the CPUs available, at most 8). `trace`
    receives every step as it runs (see :mod:`mergec.runtime.build`). Ctrl-C raises
    :class:`mergec.runtime.stop.Interrupted` (a KeyboardInterrupt) once the output being
    written is discarded; it lists the outputs written before and those not written.
    `outputs`: build only the outputs of these names."""
    from mergec.backends import get_backend
    from mergec.io.writer import DEFAULT_SHARD_SIZE
    from mergec.ir.lower import optimize
    from mergec.runtime.build import build_output

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
    results = []
    try:
        be = get_backend(backend or settings.backend, device or settings.device)
        for lo in compiled.lowered:
            results.append(build_output(lo, compiled.checked, out_dir / lo.output.name, be,
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
