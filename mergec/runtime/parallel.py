"""Running steps side by side: worker processes or threads, read-ahead, the allocator.

numpy runs a short operation on a block faster than two threads can pass Python's global
lock back and forth, and some conversions (bfloat16 through ml_dtypes) hold the lock
throughout; so on a CPU with the NumPy backend the steps are shared out to forked worker
processes. They inherit the compiled program, the open checkpoints and the writer's shard
files, run whole steps (block after block) and write at their offsets; the build process
records what they wrote and reports progress. Elsewhere (torch, jax, or no fork) a pool of
threads runs them.

A worker dies with the build process, however that ends (SIGKILL, the OOM killer): on
Linux the kernel kills it (``PR_SET_PDEATHSIG``), and everywhere a watchdog thread in the
worker ends it once its parent is gone, so that no worker waits for ever for tasks while
holding its memory and the caller's output pipes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

from mergec.io.dtypes import numpy_dtype
from mergec.ir.nodes import topo

_FORKED: dict = {}

#: how often (seconds) a worker's watchdog checks that the build process is still there
WATCHDOG_INTERVAL = 0.2


def tune_allocator() -> None:
    """Keep freed blocks in the C heap for reuse instead of returning them to the system
    and faulting fresh pages in for the next block (glibc only; a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 64 << 20)   # blocks come from the heap, not fresh mappings
    mallopt(m_trim_threshold, 256 << 20)  # and stay there once freed


def default_jobs() -> int:
    """Parallel workers: the CPUs this process may run on (at most 8)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def can_fork(backend_name: str, sources) -> bool:
    """Can the steps run in forked worker processes? (The NumPy backend on POSIX, no
    torch or jax thread pools in this process, every input already on disk.)"""
    if backend_name != "reference" or os.name != "posix":
        return False
    # torch and jax run thread pools that do not survive a fork
    if any(m in sys.modules for m in ("torch", "jax")):
        return False
    if "fork" not in multiprocessing.get_all_start_methods():
        return False
    # an input still to be downloaded is fetched once, by this process
    return not any(getattr(s, "remote", False) for s in sources)


def process_pool(workers: int) -> ProcessPoolExecutor | None:
    """A pool of `workers` forked processes (started with the first task, so they inherit
    everything set up until then), or None where this system cannot make one (no fork,
    no POSIX semaphores): the build then uses threads."""
    # numpy and ml_dtypes are imported on first use (start-up of the light commands); load
    # them here, before any fork, so that the workers share them instead of each importing
    # them again (about a second and 30 MiB per worker)
    numpy_dtype("bfloat16")
    try:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_worker_start, initargs=(os.getpid(),))
    except (OSError, ImportError, NotImplementedError, ValueError):
        return None


def _worker_start(parent: int) -> None:
    """Run first in every worker process: make it die with the build process `parent`."""
    # a handler the build process set for SIGTERM is not the worker's: SIGTERM ends it
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()
    if os.getppid() != parent:  # the build process died before the worker got here
        os._exit(1)
    watch_parent(parent)


def die_with_parent() -> bool:
    """Ask the kernel to kill this process when its parent exits (Linux:
    ``prctl(PR_SET_PDEATHSIG, SIGKILL)``). False where the system has no such call."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        return libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def watch_parent(parent: int, interval: float = WATCHDOG_INTERVAL) -> threading.Thread:
    """Start a daemon thread that ends this process as soon as `parent` is no longer its
    parent (an orphan is adopted by init or a subreaper): the portable counterpart of
    :func:`die_with_parent`, for every POSIX system."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    t = threading.Thread(target=watch, name="mergec-watchdog", daemon=True)
    t.start()
    return t


def share(**state) -> None:
    """What forked workers inherit (set before the pool starts its processes)."""
    _FORKED.clear()
    _FORKED.update(state)


def forget() -> None:
    _FORKED.clear()


def forked_step(i: int) -> dict:
    """Run step `i` of the shared state in a worker process."""
    st = _FORKED
    return st["run"](i)


def stop_workers(pool) -> None:
    """Stop a process pool's workers at once (before the writer removes its files)."""
    for p in list(getattr(pool, "_processes", {}).values()):
        p.terminate()


def read_ahead(node, source_of) -> None:
    """Let the operating system start reading the input tensors a tensor needs, so that
    they are in its cache when a worker gets to them."""
    for n in topo(node):
        if n.op in ("load", "copy", "convert"):
            advise = getattr(source_of(n.attr("source")), "advise", None)
            if advise is not None:
                advise(n.attr("tensor"))
