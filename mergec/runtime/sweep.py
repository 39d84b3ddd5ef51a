"""Building a sweep: every point's outputs, each distinct tensor computed once.

The recipe is checked and lowered at every point (:mod:`mergec.check.sweeps`). The IR is
hash-consed: a tensor whose computation does not involve a swept value lowers to the same
node at every point. For each output of the recipe the points' tensors are grouped by
(name, node) into one *combined* output whose tensors are the distinct computations;
that is what `mergec plan` shows and what the build schedules, once. A combined tensor
taken by several points keeps its name; the others are named `NAME@POINT` (the first
point that takes them).

The build runs the combined output through the one runtime (:func:`build_output`) into a
:class:`SweepWriter`, which writes every tensor into the output folder of each point that
takes it; each point's folder is its own atomic checkpoint (committed once every point's
tensors are written), with its own config.json, tokenizer files and model card.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from mergec.check.program import CheckedProgram
from mergec.check.sweeps import Point
from mergec.diagnostics import Diagnostic
from mergec.io.dtypes import itemsize
from mergec.io.writer import OutputWriter
from mergec.ir.lower import LoweredOutput, OutTensor
from mergec.ir.nodes import Node
from mergec.ir.placeholders import ModelTopK


@dataclass
class SweepOutput:
    """One output of the recipe over every point."""

    name: str
    per_point: list[LoweredOutput]  # the output as lowered at each point
    combined: LoweredOutput  # its distinct tensors
    takers: list[list[int]]  # for each combined tensor: the points that take it
    names: list[str]  # for each combined tensor: its name in the points' outputs

    def folders(self, points: list[Point]) -> list[str]:
        return [p.folder(self.name) for p in points]


@dataclass
class SweepReport:
    """What a sweep computes and shares (the numbers the build prints)."""

    points: int
    written: int  # tensors written, over every point and output
    computed: int  # distinct tensors computed
    shared: int  # computed tensors written to two points or more
    shared_by_all: int  # computed tensors every point takes
    ran: int | None = None  # tensors computed by the build (set once it ran)

    def text(self) -> str:
        return (f"sweep: {self.points} points, {self.written} tensors written, "
                f"{self.computed} computed; {self.shared} computed once and shared between "
                f"points ({self.shared_by_all} by all {self.points})")


@dataclass
class SweepPlan:
    points: list[Point]
    programs: list[CheckedProgram]  # the recipe checked at each point
    outputs: list[SweepOutput]
    report: SweepReport = field(init=False)

    def __post_init__(self) -> None:
        written = sum(len(lo.tensors) for so in self.outputs for lo in so.per_point)
        takers = [t for so in self.outputs for t in so.takers]
        n = len(self.points)
        self.report = SweepReport(n, written, len(takers),
                                  sum(1 for t in takers if len(t) > 1),
                                  sum(1 for t in takers if len(t) == n))

    @property
    def combined(self) -> list[LoweredOutput]:
        return [so.combined for so in self.outputs]


def plan_sweep(points: list[Point], programs: list[CheckedProgram],
               lowered: list[list[LoweredOutput]]) -> SweepPlan:
    """Group every output's tensors over the points (`lowered[point][output]`)."""
    _separate_statistics(lowered)
    outputs = []
    for k, first in enumerate(lowered[0]):
        per_point = [lw[k] for lw in lowered]
        groups: dict[tuple, int] = {}
        tensors: list[OutTensor] = []
        takers: list[list[int]] = []
        before = []
        for p, lo in enumerate(per_point):
            for i, t in enumerate(lo.tensors):
                key = (t.name, t.node)
                j = groups.get(key)
                if j is None:
                    groups[key] = j = len(tensors)
                    tensors.append(t)
                    takers.append([])
                    if lo.before is not None:
                        before.append(lo.before[i])
                takers[j].append(p)
        names = [t.name if len(takers[j]) == len(points) or
                 sum(1 for u in tensors if u.name == t.name) == 1
                 else f"{t.name}@{points[takers[j][0]].suffix}"
                 for j, t in enumerate(tensors)]
        combined = LoweredOutput(
            first.output, [replace(t, name=n) for t, n in zip(tensors, names)],
            first.n_layers, first.graph,
            before=before if first.before is not None else None,
            reports=first.reports)
        outputs.append(SweepOutput(first.output.name, per_point, combined, takers,
                                   [t.name for t in tensors]))
    return SweepPlan(points, programs, outputs)


def _separate_statistics(lowered: list[list[LoweredOutput]]) -> None:
    """A model-wide statistic (TIES' `trim="model"` threshold) is named after its output
    and call, so two points would share it even where it ranges over different task
    vectors (a swept weight inside the call's inputs). Such a placeholder is renamed at
    the points where its task vectors differ from the first point's (`CALL@2`, `CALL@3`
    for each further distinct set), so that the combined output computes each statistic
    over exactly the tensors a separate build would."""
    from mergec.runtime.prepass import placeholder_inputs

    for k in range(len(lowered[0])):
        variants: dict[ModelTopK, list[tuple]] = {}
        for lw in lowered:
            renamed = {}
            for ph, nodes in placeholder_inputs(lw[k]).items():
                key = tuple(dict.fromkeys(nodes))
                seen = variants.setdefault(ph, [])
                if key not in seen:
                    seen.append(key)
                j = seen.index(key)
                if j:
                    renamed[ph] = replace(ph, call=f"{ph.call}@{j + 1}")
            if renamed:
                lo, memo = lw[k], {}
                lo.tensors = [replace(t, node=_rename(t.node, renamed, memo))
                              for t in lo.tensors]


def _rename(n: Node, renamed: dict, memo: dict) -> Node:
    """`n` with the placeholders in `renamed` replaced in its merge parameters."""
    got = memo.get(id(n))
    if got is not None:
        return got
    args = tuple(_rename(a, renamed, memo) for a in n.args)
    attrs = n.attrs
    if n.op == "merge":
        def swap(v):
            if isinstance(v, tuple):
                return tuple(swap(x) for x in v)
            return renamed.get(v, v) if isinstance(v, ModelTopK) else v

        attrs = tuple((k, tuple((pk, swap(pv)) for pk, pv in v) if k == "params" else v)
                      for k, v in n.attrs)
    out = n if args == n.args and attrs == n.attrs else Node(n.op, args, attrs, n.shape,
                                                             n.dtype)
    memo[id(n)] = out
    return out


def sweep_warnings(plan: SweepPlan) -> list[Diagnostic]:
    """W361 when no output depends on the swept values: every point is the same model."""
    if len(plan.points) < 2 or plan.report.shared_by_all < plan.report.computed:
        return []
    names = ", ".join(f"`{k}`" for k, _ in plan.points[0].values)
    return [Diagnostic("W361", f"no output depends on the swept param{'s' if ',' in names else ''} "
                       f"{names}: the {len(plan.points)} points are the same model",
                       plan.outputs[0].per_point[0].output.span,
                       "use the swept param in a merge call, or build once without the "
                       "sweep", severity="warning")]


class SweepWriter:
    """The writer of a combined output: every tensor goes to the folder of each point
    that takes it (one :class:`OutputWriter` per point, all open at once)."""

    def __init__(self, so: SweepOutput, plan: SweepPlan, out_dir: Path, *, shard_size: int,
                 force: bool, metadata: dict[str, str]):
        self.so, self.plan = so, plan
        self.writers: list[OutputWriter] = []
        try:
            for p, lo in zip(plan.points, so.per_point):
                decl = [(t.name, t.shape, t.dtype) for t in lo.tensors]
                self.writers.append(OutputWriter(Path(out_dir) / p.folder(so.name), decl,
                                                 shard_size=shard_size, force=force,
                                                 metadata=metadata))
        except BaseException:
            self.abort()
            raise
        self.routes = {t.name: [(self.writers[p], real) for p in takers]
                       for t, real, takers in zip(so.combined.tensors, so.names, so.takers)}

    def write(self, name: str, array) -> None:
        for w, real in self.routes[name]:
            w.write(real, array)

    def write_rows(self, name: str, start: int, array) -> None:
        for w, real in self.routes[name]:
            w.write_rows(real, start, array)

    def write_raw(self, name: str, data: bytes) -> None:
        for w, real in self.routes[name]:
            w.write_raw(real, data)

    def note_written(self, name: str) -> None:
        for w, real in self.routes[name]:
            w.note_written(real)

    def staged(self, names) -> "StagedRoutes":
        """What another process writes combined tensors `names` with (see
        :meth:`OutputWriter.staged`): each into every point that takes it."""
        index = {id(w): k for k, w in enumerate(self.writers)}
        routes = {n: [(index[id(w)], real) for w, real in self.routes[n]] for n in names}
        wanted: dict[int, list[str]] = {}
        for pairs in routes.values():
            for k, real in pairs:
                wanted.setdefault(k, []).append(real)
        views = {k: self.writers[k].staged(reals) for k, reals in wanted.items()}
        return StagedRoutes(routes, views)

    def commit(self) -> list[Path]:
        """Write each point's files and commit every point's folder, once all of them
        hold all their tensors (else nothing is committed)."""
        for w in self.writers:
            if w.missing():
                return [w.commit()]  # aborts and raises E414, naming the tensors
        from mergec.runtime.output_files import write_files

        for w, lo, checked in zip(self.writers, self.so.per_point, self.plan.programs):
            write_files(w, lo, checked)
        return [w.commit() for w in self.writers]

    def abort(self) -> None:
        for w in self.writers:
            w.abort()

    def __enter__(self) -> "SweepWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abort()
        return False


def build_sweep(plan: SweepPlan, out_dir: Path, backend, *, force: bool, shard_size: int,
                progress=None, max_memory: int | None = None, jobs: int | None = None,
                trace=None, executor=None) -> list:
    """Build every output at every point; returns a BuildResult per point and output, in
    the order of the points, and sets `plan.report.ran`."""
    from mergec import __version__
    from mergec.runtime.build import BuildResult, build_output

    ran = 0

    def counting(record: dict) -> None:
        nonlocal ran
        if "name" in record:
            ran += 1
        if trace is not None:
            trace(record)

    results: dict[tuple[int, int], BuildResult] = {}
    for k, so in enumerate(plan.outputs):
        t0 = time.perf_counter()

        def open_writer(decl, so=so):
            return SweepWriter(so, plan, out_dir, shard_size=shard_size, force=force,
                               metadata={"mergec_version": __version__})

        build_output(so.combined, plan.programs[0], Path(out_dir) / so.name, backend,
                     force=force, shard_size=shard_size, progress=progress,
                     max_memory=max_memory, jobs=jobs, trace=counting,
                     open_writer=open_writer, executor=executor)
        seconds = time.perf_counter() - t0
        for p, (point, lo) in enumerate(zip(plan.points, so.per_point)):
            nbytes = sum(t.node.numel * itemsize(t.dtype) for t in lo.tensors)
            results[(p, k)] = BuildResult(point.folder(so.name),
                                          Path(out_dir) / point.folder(so.name),
                                          len(lo.tensors), nbytes, seconds)
    plan.report.ran = ran
    return [results[(p, k)] for p in range(len(plan.points)) for k in range(len(plan.outputs))]


class StagedRoutes:
    """The picklable counterpart of a :class:`SweepWriter` for a few tensors: each write
    goes to the staging folder of every point that takes the tensor."""

    def __init__(self, routes: dict[str, list[tuple[int, str]]], views: dict):
        self.routes, self.views = routes, views

    def write(self, name: str, array) -> None:
        for k, real in self.routes[name]:
            self.views[k].write(real, array)

    def write_rows(self, name: str, start: int, array) -> None:
        for k, real in self.routes[name]:
            self.views[k].write_rows(real, start, array)

    def write_raw(self, name: str, data: bytes) -> None:
        for k, real in self.routes[name]:
            self.views[k].write_raw(real, data)
