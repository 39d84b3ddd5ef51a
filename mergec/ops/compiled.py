"""Whether the compiled kernels (:mod:`mergec.ops.jit`, numba) are used, loading them once.

They are optional (``pip install 'mergec[fast]'``) and make exactly the numbers the NumPy
code makes, only faster. Loading them imports numba and reads their cached machine code,
about 0.8 s (numba's own start-up) and 50 MiB, so they are loaded by the first call that has at least
:data:`JIT_MIN_VALUES` values of work and used by every call after that. Where numba is
missing, fails, or the kernels do not reproduce NumPy on a short check, NumPy is used.
``MERGEC_NO_JIT=1`` in the environment forces NumPy (tests of the fallback use it).
"""

from __future__ import annotations

import os

__all__ = ["JIT_MIN_VALUES", "kernels"]

#: the smallest amount of work (values) that loads the compiled kernels: loading costs about
#: what NumPy takes to draw a mask of 2**26 values, so a model whose largest tensor is
#: smaller (under about 100M parameters) keeps to NumPy
JIT_MIN_VALUES = 1 << 24

_loaded: list = []  # [the kernel module, or None where it is unavailable], once tried


def kernels(count: int | None = None):
    """The compiled kernel module for a call with ``count`` values of work (None: load them
    whatever the work), or None: NumPy
    is used (forced by ``MERGEC_NO_JIT``, numba not installed or failing, or too little
    work to be worth loading numba for while it is not loaded yet)."""
    if os.environ.get("MERGEC_NO_JIT", "") not in ("", "0"):
        return None
    if not _loaded:
        if count is not None and count < JIT_MIN_VALUES:
            return None
        _loaded.append(_load())
    return _loaded[0]


def _load():
    try:
        from mergec.ops import jit  # optional and heavy (numba): only when work asks for it
        if jit.self_check():
            return jit
    except Exception:  # noqa: BLE001 - not installed, cannot compile: NumPy does the work
        pass
    return None
