"""Stopping a build from outside: Ctrl-C (SIGINT) and SIGTERM.

Both unwind the build as an exception (a :class:`KeyboardInterrupt`): the worker
processes are stopped, the output being written is discarded with its temporary folder,
and :func:`mergec.api.build` raises :class:`Interrupted`, which says which outputs were
written before and which were not (their targets are as they were).
"""

from __future__ import annotations

import contextlib
import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM received while :func:`sigterm_raises` was on."""


class Interrupted(KeyboardInterrupt):
    """A build stopped by Ctrl-C or SIGTERM. `written`: the results of the outputs that were
    finished before (in the recipe's order); `not_written`: the names of the others."""

    def __init__(self, cause: BaseException, written: list, not_written: list[str]):
        super().__init__(f"{'terminated' if isinstance(cause, Terminated) else 'interrupted'}"
                         f" with {len(written)} output(s) written")
        self.terminated = isinstance(cause, Terminated)
        self.written = list(written)
        self.not_written = list(not_written)


@contextlib.contextmanager
def sigterm_raises():
    """While inside, SIGTERM raises :class:`Terminated` in the main thread, so that the build
    cleans up as after Ctrl-C. Only the first SIGTERM does (more would cut the clean-up
    short); the default action is restored on the way out. A no-op outside the main thread
    or where SIGTERM already has a handler (or is ignored)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return
    hit = []

    def handler(signum, frame):
        if not hit:
            hit.append(signum)
            raise Terminated()

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
