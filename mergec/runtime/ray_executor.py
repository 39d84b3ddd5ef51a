"""`build --executor ray`: the steps of a build as Ray tasks.

The build process (the *driver*) does everything it does with the local executor —
checks, plans, computes the model-wide statistics, opens the output's writer, whose
staging folder sits beside the target — and hands the steps to Ray instead of its own
worker processes. The steps are shared out into tensor groups (about four per CPU of the
cluster, balanced by bytes; the distinct tensors of a sweep's points are steps like any
other) and each group is one task. A task opens the inputs itself (once per worker
process: local folders, or the hub cache that the driver filled before starting), runs
each step with the same interpreter, and writes the tensors at their offsets into the
staging folder's shard files (:meth:`mergec.io.writer.OutputWriter.staged`). As tasks
finish, the driver records their tensors, advances the progress bar, and, once every
tensor is written, commits the output exactly as the local executor does: index, files,
fsync, one rename.

- A task whose worker dies (killed, out of memory, a lost node) is run again, up to
  :data:`MAX_RETRIES` times; its writes are positioned, so running it twice writes the
  same bytes. An error raised by mergec itself (an unreadable input) is not retried: it is
  reported as the local executor reports it.
- A driver that stops (an error, Ctrl-C, SIGKILL) leaves nothing at the target: the
  staging folder is removed (or, after SIGKILL, by the next build to that folder), and the
  pending tasks are cancelled (after SIGKILL, a local Ray instance goes with the driver).
- `--max-memory` sets each task's Ray `memory` requirement as well as the row blocks of
  its steps, so Ray places no more tasks on a node than its memory holds.
- On a cluster (`--address`), every node must see the inputs and the output folder at
  the same paths (shared storage) and have the same mergec installed.

`ray` is an optional dependency (`pip install 'mergec[ray]'`), imported here only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mergec.diagnostics import Diagnostic, MergecError, UsageError
from mergec.io.dtypes import itemsize

#: how many times a task whose worker died is run again
MAX_RETRIES = 3
#: tensor groups per CPU of the cluster
GROUPS_PER_CPU = 4

_OPENED: dict = {}  # in a worker process: the inputs opened so far
_REMOTE: dict = {}  # the remote function, made once per process


def import_ray():
    """The `ray` module, or a usage error E470 when it is not installed."""
    try:
        import ray  # optional dependency: only `--executor ray` needs it
    except ImportError:
        raise UsageError(Diagnostic(
            "E470", "`--executor ray` needs the `ray` package, which is not installed",
            help="install it with `pip install 'mergec[ray]'`, or build with the local "
            "executor (leave out `--executor`)")) from None
    return ray


def open_executor(kind: str, *, address: str | None = None, jobs: int | None = None,
                  max_memory: int | None = None):
    """The executor named `kind` ("ray"); a usage error E473 for another name."""
    if kind != "ray":
        raise UsageError(Diagnostic("E473", f"unknown executor `{kind}`",
                                    help="use `--executor local` or `--executor ray`"))
    return RayExecutor(address=address, jobs=jobs, max_memory=max_memory)


class RayExecutor:
    """Runs a build's steps as Ray tasks (see the module docstring). Joins the Ray
    instance this process already has (`ray.init` called before), else the cluster at
    `address`, else starts a local instance with `jobs` CPUs (default: the CPUs this
    process may use, at most 8), which :meth:`close` stops. `before_task` is called in
    the worker at the start of every task (for tests: inject a failure)."""

    def __init__(self, *, address: str | None = None, jobs: int | None = None,
                 max_memory: int | None = None, before_task: Callable | None = None):
        self.ray = ray = import_ray()
        self.max_memory = max_memory
        self.before_task = before_task
        self.started = False
        if not ray.is_initialized():
            import logging

            from mergec.runtime.parallel import default_jobs

            try:
                if address is not None:
                    ray.init(address=address, log_to_driver=False,
                             logging_level=logging.WARNING)
                else:
                    ray.init(num_cpus=jobs or default_jobs(), include_dashboard=False,
                             log_to_driver=False, logging_level=logging.WARNING)
            except Exception as e:  # noqa: BLE001 - Ray raises many kinds here
                where = f"the Ray cluster at `{address}`" if address else "a local Ray instance"
                raise MergecError(Diagnostic(
                    "E471", f"cannot start or join {where}: {type(e).__name__}: {e}",
                    help="check `ray status` on the cluster, or build with the local "
                    "executor (leave out `--executor ray`)")) from None
            self.started = True

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        self.started = False

    def _cpus(self) -> int:
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def run(self, tensors, steps, checked, writer, stats, finished, backend) -> None:
        """Run every step as part of a task; call `finished(i, record)` for each step as
        its task completes, once its tensor is recorded by `writer`."""
        ray = self.ray
        if not steps:
            return
        for name in checked.inputs:  # a hub input is fetched once, into the cache
            src = checked.source(name)
            if getattr(src, "remote", False):
                src.ensure_weights()
        remote = _remote(ray)
        opts = {"max_retries": MAX_RETRIES, "retry_exceptions": False, "num_cpus": 1}
        if self.max_memory is not None:
            total = ray.cluster_resources().get("memory")
            if total is not None and self.max_memory > total:
                from mergec.io.sizes import format_size

                raise MergecError(Diagnostic(
                    "E474", f"each task asks for --max-memory {format_size(self.max_memory)}"
                    f", but the Ray cluster has {format_size(int(total))} of memory for tasks",
                    help="give a smaller --max-memory (the steps are split into row blocks "
                    "to fit it), or add nodes to the cluster"))
            opts["memory"] = int(self.max_memory)
        shared = ray.put({"inputs": _input_specs(checked), "settings": checked.settings,
                          "stats": stats,
                          "backend": (getattr(backend, "name", "reference"),
                                      str(getattr(backend, "device", "cpu"))),
                          "before": self.before_task})
        groups = _groups(tensors, self._cpus() * GROUPS_PER_CPU)
        pending = {}
        try:
            for g in groups:
                names = [tensors[i].name for i in g]
                work = [(tensors[i], steps[i]) for i in g]
                ref = remote.options(**opts).remote(shared, work, writer.staged(names))
                pending[ref] = g
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    g = pending.pop(ref)
                    records = _result(ray, ref, [tensors[i].name for i in g])
                    for i, record in zip(g, records):
                        writer.note_written(tensors[i].name)
                        finished(i, record)
        except BaseException:
            for ref in pending:  # stop the others before the writer removes its files
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - a task that ended meanwhile
                    pass
            raise


def _groups(tensors, n: int) -> list[list[int]]:
    """Steps (in dispatch order, largest first) shared out into at most `n` groups of
    about equal bytes: each to the group with the fewest bytes so far."""
    n = max(1, min(n, len(tensors)))
    groups: list[list[int]] = [[] for _ in range(n)]
    load = [0] * n
    for i, t in enumerate(tensors):
        k = min(range(n), key=lambda j: (load[j], j))
        groups[k].append(i)
        load[k] += t.node.numel * itemsize(t.dtype)
    return [g for g in groups if g]


def _input_specs(checked) -> dict:
    """How a worker opens each input: kind, local folder, source and header fingerprint."""
    specs = {}
    for name, inp in checked.inputs.items():
        src = checked.source(name)
        kind = "adapter" if hasattr(inp, "adapter") else "model"
        specs[name] = (kind, str(src.root), getattr(src, "ref", None), src.fingerprint())
    plans = {}  # `set vocab`: one plan, read through by every input's view
    for name in checked.inputs:
        plan = getattr(checked.source(name), "vocab_plan", None)
        if plan is not None:
            specs[name] += (plans.setdefault(id(plan), plan.portable()),)
    return specs


def _result(ray, ref, names: list[str]) -> list[dict]:
    """The records of a finished task; its error as mergec reports errors."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        from mergec.io.errors import CheckpointError

        if isinstance(cause, (CheckpointError, MergecError)):
            raise cause from None
        what = f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
        raise MergecError(Diagnostic("E472", f"a Ray task failed ({_names(names)}): "
                                     f"{what}", help="see `mergec explain E472`")) from None
    except ray.exceptions.RayError as e:  # the worker died on every try, or the node
        raise MergecError(Diagnostic(
            "E472", f"a Ray task failed after {MAX_RETRIES} retries ({_names(names)}): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            help="see `mergec explain E472`")) from None


def _names(names: list[str]) -> str:
    shown = ", ".join(f"`{n}`" for n in names[:3])
    return f"tensors {shown}" + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _remote(ray):
    fn = _REMOTE.get(id(ray))
    if fn is None:
        fn = _REMOTE[id(ray)] = ray.remote(run_group)
    return fn


class WorkerInputs:
    """The inputs as a worker sees them: opened on first use, kept for the next task."""

    def __init__(self, specs: dict, settings=None):
        from mergec.check.program import Settings

        self.specs = specs
        #: the recipe's settings, which steps read (allow_nonfinite)
        self.settings = settings if settings is not None else Settings()

    def source(self, name: str):
        kind, root, ref, fingerprint, *vocab = self.specs[name]
        if vocab:  # `set vocab`: the input's embeddings with the output's rows
            return self._vocab_view(name, vocab[0])
        return self._open(kind, root, ref, fingerprint)

    def _vocab_view(self, name: str, plan):
        from mergec.io.vocab import VocabView

        view = plan.views.get(name)
        if view is None:
            plan.opener = self.source
            kind, root, ref, fingerprint, _ = self.specs[name]
            view = VocabView(self._open(kind, root, ref, fingerprint), name, plan)
        return view

    def _open(self, kind, root, ref, fingerprint):
        key = (kind, root, fingerprint)
        opened = _OPENED.get(key)
        if opened is None:
            if kind == "model":
                from mergec.io.checkpoint import open_checkpoint

                opened = open_checkpoint(Path(root), ref, allow_remote=False)
            else:
                from mergec.io.adapter import open_adapter

                opened = open_adapter(root, Path(root))
            _OPENED[key] = opened
        return opened


def run_group(shared: dict, work: list, sink) -> list[dict]:
    """A task: run the steps of one tensor group, writing into the staging folder."""
    from mergec.backends import get_backend
    from mergec.runtime.interpreter import run_step

    if shared.get("before") is not None:
        shared["before"]()
    name, device = shared["backend"]
    backend = get_backend(name, device)
    inputs = WorkerInputs(shared["inputs"], shared.get("settings"))
    return [run_step(t, step, inputs, backend, sink, shared["stats"], None)
            for t, step in work]
