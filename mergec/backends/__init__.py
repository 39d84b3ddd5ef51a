"""Execution backends: the only place where tensors are computed.

``get_backend(name, device)`` returns the array primitives (:class:`~mergec.backends.base.ArrayOps`) of:

* ``"reference"``: numpy, CPU only; the yardstick every other backend is tested against;
* ``"torch"``: PyTorch on ``"cpu"``, ``"cuda"`` (``"cuda:N"``, alias ``"gpu"``) or ``"auto"``;
* ``"jax"``: JAX on ``"cpu"``, ``"gpu"`` (alias ``"cuda"``, ``"cuda:N"``) or ``"auto"``;
* ``"auto"``: on a CPU the NumPy reference (with the executor's row blocks and threads it
  is the fastest there, and it imports no heavy library); on a GPU torch when it is
  installed, else jax (see :func:`auto_backend`).

Backends are found by convention: module ``mergec.backends.<name>_backend`` (``reference``
for the reference) with one class; the heavy library is imported only when the backend is
asked for, never when this package is imported.
"""

from __future__ import annotations

import importlib
import importlib.util

from .base import ArrayOps, BackendUnavailable

__all__ = ["ArrayOps", "BackendUnavailable", "get_backend", "available_backends",
           "auto_backend", "gpu_present", "BACKEND_NAMES"]

# name -> (module, class, library it needs)
_BACKENDS: dict[str, tuple[str, str, str | None]] = {
    "reference": ("mergec.backends.reference", "ReferenceBackend", None),
    "torch": ("mergec.backends.torch_backend", "TorchBackend", "torch"),
    "jax": ("mergec.backends.jax_backend", "JaxBackend", "jax"),
}
_ALIASES = {"numpy": "reference"}
#: every name a user may give a backend (`--backend`, `set backend`), in the order messages
#: list them: "auto", the backends and their aliases
BACKEND_NAMES: tuple[str, ...] = ("auto", "numpy", "torch", "jax", "reference")
assert set(BACKEND_NAMES) == {"auto", *_BACKENDS, *_ALIASES}
_GPU_ORDER = ("torch", "jax")


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _is_available(name: str) -> bool:
    module, _, lib = _BACKENDS[name]
    return (lib is None or _has_module(lib)) and _has_module(module)


def available_backends() -> list[str]:
    """Names of the backends that can be created here (without importing their libraries)."""
    return [n for n in _BACKENDS if _is_available(n)]


def gpu_present() -> bool:
    """An NVIDIA GPU seems attached (checked without importing any GPU library)."""
    import glob
    import os

    return os.path.isdir("/proc/driver/nvidia/gpus") or bool(glob.glob("/dev/nvidia[0-9]*"))


def auto_backend(device: str = "auto") -> str:
    """The backend ``auto`` stands for on ``device``: the reference on ``cpu`` (or on
    ``auto`` without a GPU); torch, else jax, for a GPU device."""
    if device == "cpu" or (device == "auto" and not gpu_present()):
        return "reference"
    for cand in _GPU_ORDER:
        if _is_available(cand):
            return cand
    return "reference"


def get_backend(name: str = "auto", device: str = "cpu") -> ArrayOps:
    """Create the backend ``name`` on ``device``.

    Raises ValueError for an unknown name and BackendUnavailable when the backend's library
    (or module) is missing or the device cannot be used.
    """
    key = _ALIASES.get(name, name)
    if key == "auto":
        key = auto_backend(device)
    if key not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known: {', '.join(['auto', *_BACKENDS])}")
    module, cls, lib = _BACKENDS[key]
    if lib is not None and not _has_module(lib):
        raise BackendUnavailable(f"backend {key!r} needs the {lib!r} package, which is not "
                                 f"installed (pip install 'mergec[{lib}]')")
    if not _has_module(module):
        raise BackendUnavailable(f"backend {key!r} is not part of this mergec version")
    return getattr(importlib.import_module(module), cls)(device=device)
