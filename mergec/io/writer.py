"""Writing one output checkpoint atomically, one tensor at a time, in any order.

The full list of output tensors is known before the first byte is written, so the
writer plans every shard and every tensor offset up front: each shard file is created
with its final safetensors header and its final size, and tensor data is placed with
positioned writes (``os.pwrite``) as it arrives, in any order, with nothing buffered
beyond the tensor being written.

Everything is written into a temporary folder beside the target
(``.<target-name>.mergec-tmp-<pid>-<random>``, same parent, so the final rename is
atomic). Nothing appears at the target path until ``commit()``; an error or ``abort()``
removes the temporary folder. Leftover temporary folders of dead processes are removed
by ``cleanup_stale_temps`` (called by the constructor).

``commit()`` fsyncs every file before the rename. So that it does not wait for the whole
output to reach the disk at the end, each large write also asks the kernel to start
writing it back at once (Linux ``sync_file_range``, see :func:`start_writeback`): the disk
works while the next tensors are computed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mergec.io import dtypes
from mergec.io.errors import (
    E_DTYPE, E_TARGET_EXISTS, E_WRITE_FAILED, E_WRITER_USAGE, CheckpointError,
)

DEFAULT_SHARD_SIZE = 5 * 10**9
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_TMP_TAG = ".mergec-tmp-"
_OLD_TAG = ".mergec-old-"
_RESERVED = {SINGLE_FILE, INDEX_FILE}


#: writes at least this large start their write-back at once (:func:`start_writeback`)
WRITEBACK_MIN_BYTES = 64 << 10
_SYNC_FILE_RANGE_WRITE = 2
_writeback: list = []  # [libc's sync_file_range, or None where there is none], once looked up


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` at ``offset`` of ``fd`` to the disk now,
    without waiting for it (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, Linux only). It
    changes nothing that a reader sees; it only shortens the final fsync. Elsewhere, or if
    the call fails, the write-back is left to the fsync."""
    if not _writeback:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes
                fn = ctypes.CDLL(None, use_errno=True).sync_file_range  # this process's libc
                fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
                fn.restype = ctypes.c_int
            except (OSError, AttributeError):
                fn = None
        _writeback.append(fn)
    fn = _writeback[0]
    if fn is not None:
        fn(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # a failure only means no head start


def shard_file_name(index: int, count: int) -> str:
    """Name of shard ``index`` (1-based) of ``count``, Hugging Face style."""
    if count == 1:
        return SINGLE_FILE
    return f"model-{index:05d}-of-{count:05d}.safetensors"


# --------------------------------------------------------------------------- target checks


def _nearest_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p):
        if p.parent == p:
            break
        p = p.parent
    return p


def resolve_target(target: Path) -> Path:
    """The folder an output is written to. A symbolic link to a folder is followed: the
    output replaces the folder the link points to, and the link stays as it is (the new
    folder is made beside the one it replaces, so that the final rename is atomic)."""
    t = Path(os.path.abspath(Path(target).expanduser()))
    if t.is_symlink() and t.is_dir():
        return Path(os.path.realpath(t))
    return t


def check_target(target: Path, force: bool = False) -> None:
    """Check that ``target`` can receive an output checkpoint, before anything is computed.

    Raises E413 when the target is an existing file, or an existing non-empty folder and
    ``force`` is false; E415 when the folder cannot be created (a parent is a file, no
    write permission). An existing empty folder is fine.
    """
    target = Path(os.path.abspath(Path(target).expanduser()))
    try:
        if os.path.lexists(target):
            if target.is_symlink() and not target.exists():
                raise CheckpointError(E_TARGET_EXISTS, f"output path {target} is a broken symbolic link",
                                      "remove it or choose another output folder")
            if not target.is_dir():
                raise CheckpointError(E_TARGET_EXISTS, f"output path {target} exists and is a file",
                                      "choose another output folder, or remove the file")
            if not force and any(target.iterdir()):
                raise CheckpointError(E_TARGET_EXISTS, f"output folder {target} is not empty",
                                      "re-run with --force to replace it (the old folder is removed only "
                                      "after the new one is complete), or choose another output folder")
        anc = _nearest_existing(target.parent)
        if not anc.is_dir():
            raise CheckpointError(E_WRITE_FAILED, f"cannot create output folder {target}: {anc} is not a directory")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise CheckpointError(E_WRITE_FAILED, f"cannot create output folder {target}: no write permission in {anc}",
                                  "choose an output folder you can write to")
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(E_WRITE_FAILED, f"cannot check output folder {target}: {e.strerror or e}") from None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def cleanup_stale_temps(target: Path, *, max_age_s: float = 7 * 24 * 3600) -> list[Path]:
    """Remove leftover ``.<name>.mergec-tmp-*`` / ``.<name>.mergec-old-*`` folders beside ``target``.

    A folder is removed when the process id encoded in its name is not running (or,
    where process ids cannot be checked, when it is older than ``max_age_s``). Folders
    of live processes, this one included, are kept. Returns the removed paths; errors
    are ignored.
    """
    target = Path(os.path.abspath(Path(target).expanduser()))
    removed: list[Path] = []
    prefixes = (f".{target.name}{_TMP_TAG}", f".{target.name}{_OLD_TAG}")
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    for p in entries:
        prefix = next((x for x in prefixes if p.name.startswith(x)), None)
        if prefix is None:
            continue
        rest = p.name[len(prefix):]
        try:
            pid = int(rest.split("-", 1)[0])
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        stale = not _pid_alive(pid)
        if not stale and os.name == "nt":
            try:
                stale = time.time() - p.stat().st_mtime > max_age_s
            except OSError:
                stale = False
        if stale:
            shutil.rmtree(p, ignore_errors=True)
            if not os.path.lexists(p):
                removed.append(p)
    return removed


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # pragma: no cover - directories cannot be fsynced there
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the writer


@dataclass
class _Slot:
    name: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    shard: int        # index into the shard list
    offset: int       # absolute offset of the data in the shard file


@dataclass
class _Shard:
    file_name: str
    names: list[str]
    header: bytes     # 8-byte length + padded JSON header
    size: int         # final file size


def _plan_error(msg: str) -> CheckpointError:
    return CheckpointError(E_WRITER_USAGE, msg)


class OutputWriter:
    """Write one output checkpoint atomically (see the module docstring).

    ``tensors`` lists every output tensor as ``(name, shape, canonical dtype)`` in write
    order. Shards are filled greedily in that order: a new shard starts when adding a
    tensor would push the current one past ``shard_size`` bytes of tensor data (unless
    it is empty, so a tensor larger than ``shard_size`` gets a shard of its own). One
    shard is written as ``model.safetensors``; several as
    ``model-0000k-of-0000N.safetensors`` plus ``model.safetensors.index.json``.

    As a context manager, an exception inside the block aborts; leaving it normally
    commits (if ``commit()``/``abort()`` were not called already).
    """

    def __init__(self, target: Path, tensors: list[tuple[str, tuple[int, ...], str]], *,
                 shard_size: int = DEFAULT_SHARD_SIZE, force: bool = False,
                 metadata: dict[str, str] | None = None, single_file: str | None = None):
        self.target = resolve_target(target)
        #: write every tensor into this one file, whatever its size (a PEFT adapter's
        #: `adapter_model.safetensors`); None: `model.safetensors` or shards
        self.single_file = single_file
        self.force = force
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size <= 0:
            raise _plan_error(f"invalid shard size {shard_size!r}: expected a positive number of bytes")
        self.shard_size = shard_size
        meta = {"format": "pt"}
        for k, v in (metadata or {}).items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise _plan_error(f"safetensors metadata must map text to text, got {k!r}: {v!r}")
            meta[k] = v
        meta["format"] = "pt"
        self.metadata = meta
        self._slots: dict[str, _Slot] = {}
        self._shards: list[_Shard] = []
        self._plan(tensors)
        self._written: set[str] = set()
        self._rows_done: dict[str, int] = {}  # tensors written in row chunks, so far
        self._files: set[str] = set()
        self._fds: list[int] = []
        self._lock = threading.Lock()
        self._state = "open"
        self.temp_dir: Path | None = None

        check_target(self.target, force)
        cleanup_stale_temps(self.target)
        self._create()

    # -- planning
    def _plan(self, tensors) -> None:
        groups: list[list[_Slot]] = []
        current: list[_Slot] = []
        current_bytes = 0
        for item in tensors:
            try:
                name, shape, dtype = item
            except (TypeError, ValueError):
                raise _plan_error(f"output tensor entry {item!r} is not (name, shape, dtype)") from None
            if not isinstance(name, str) or not name:
                raise _plan_error(f"invalid output tensor name {name!r}")
            if name in self._slots or name == "__metadata__":
                raise _plan_error(f"output tensor `{name}` is declared twice" if name in self._slots
                                  else "`__metadata__` cannot be a tensor name")
            try:
                shape = tuple(int(d) for d in shape)
            except (TypeError, ValueError):
                raise _plan_error(f"output tensor `{name}` has an invalid shape {shape!r}") from None
            if any(d < 0 for d in shape):
                raise _plan_error(f"output tensor `{name}` has a negative dimension {shape}")
            if not dtypes.is_dtype(dtype):
                try:
                    dtype = dtypes.normalize_dtype(dtype)
                except ValueError as e:
                    raise CheckpointError(E_DTYPE, f"output tensor `{name}`: {e}") from None
            numel = 1
            for d in shape:
                numel *= d
            nbytes = numel * dtypes.itemsize(dtype)
            if current and current_bytes + nbytes > self.shard_size and not self.single_file:
                groups.append(current)
                current, current_bytes = [], 0
            slot = _Slot(name=name, shape=shape, dtype=dtype, nbytes=nbytes, shard=len(groups), offset=0)
            current.append(slot)
            current_bytes += nbytes
            self._slots[name] = slot
        if current or not groups:
            groups.append(current)
        count = len(groups)
        for i, group in enumerate(groups):
            header: dict = {"__metadata__": self.metadata}
            pos = 0
            for slot in group:
                header[slot.name] = {"dtype": dtypes.to_safetensors(slot.dtype), "shape": list(slot.shape),
                                     "data_offsets": [pos, pos + slot.nbytes]}
                pos += slot.nbytes
            text = json.dumps(header, separators=(",", ":")).encode("utf-8")
            text += b" " * (-len(text) % 8)
            head = len(text).to_bytes(8, "little") + text
            rel = 0
            for slot in group:
                slot.offset = len(head) + rel
                rel += slot.nbytes
            self._shards.append(_Shard(file_name=self.single_file or shard_file_name(i + 1, count),
                                       names=[s.name for s in group], header=head, size=len(head) + pos))

    # -- creation
    def _create(self) -> None:
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            tmp = parent / f".{self.target.name}{_TMP_TAG}{os.getpid()}-{secrets.token_hex(4)}"
            os.mkdir(tmp)
            self.temp_dir = tmp
            for shard in self._shards:
                path = tmp / shard.file_name
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
                self._fds.append(fd)
                self._pwrite_all(fd, memoryview(shard.header), 0, path)
                os.ftruncate(fd, shard.size)
        except CheckpointError:
            self.abort()
            raise
        except OSError as e:
            self.abort()
            raise CheckpointError(E_WRITE_FAILED, f"cannot create output files for {self.target}: "
                                                  f"{e.strerror or e}",
                                  "check free disk space and permissions") from None

    @staticmethod
    def _pwrite_all(fd: int, data: memoryview, offset: int, path: Path) -> None:
        done = 0
        total = len(data)
        while done < total:
            n = os.pwrite(fd, data[done:done + (1 << 30)], offset + done)
            if n <= 0:  # pragma: no cover
                raise OSError(f"short write to {path}")
            done += n
        if total >= WRITEBACK_MIN_BYTES:
            start_writeback(fd, offset, total)

    # -- public API
    @property
    def shard_files(self) -> list[str]:
        """The planned weight file names, in order."""
        return [s.file_name for s in self._shards]

    def shard_of(self, name: str) -> str:
        return self._shards[self._slot(name).shard].file_name

    def _slot(self, name: str) -> _Slot:
        try:
            return self._slots[name]
        except KeyError:
            raise _plan_error(f"output tensor `{name}` was not declared for {self.target}") from None

    def _check_open(self) -> None:
        if self._state != "open":
            raise _plan_error(f"output writer for {self.target} is already {self._state}")

    def _claim(self, name: str) -> _Slot:
        self._check_open()
        slot = self._slot(name)
        with self._lock:
            if name in self._written:
                raise _plan_error(f"output tensor `{name}` was written twice")
        return slot

    def _put(self, slot: _Slot, data: memoryview) -> None:
        path = self.temp_dir / self._shards[slot.shard].file_name  # type: ignore[operator]
        try:
            self._pwrite_all(self._fds[slot.shard], data, slot.offset, path)
        except OSError as e:
            raise CheckpointError(E_WRITE_FAILED, f"cannot write tensor `{slot.name}` to {path}: {e.strerror or e}",
                                  "check free disk space") from None
        with self._lock:
            if slot.name in self._written:
                raise _plan_error(f"output tensor `{slot.name}` was written twice")
            self._written.add(slot.name)

    def write(self, name: str, array: np.ndarray) -> None:
        """Write one declared tensor; its shape and dtype must match the declaration."""
        slot = self._claim(name)
        arr = np.asarray(array)
        if tuple(arr.shape) != slot.shape:
            raise _plan_error(f"output tensor `{name}` declared with shape {slot.shape} "
                              f"but written with shape {tuple(arr.shape)}")
        try:
            dtype = dtypes.from_numpy(arr.dtype)
        except ValueError as e:
            raise CheckpointError(E_DTYPE, f"output tensor `{name}`: {e}") from None
        if dtype != slot.dtype:
            raise _plan_error(f"output tensor `{name}` declared as {slot.dtype} but written as {dtype}")
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and np.little_endian is False):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        arr = np.ascontiguousarray(arr)
        data = memoryview(arr.reshape(-1).view(np.uint8))
        self._put(slot, data)

    def write_rows(self, name: str, start: int, array: np.ndarray) -> None:
        """Write rows [start, start + len(array)) of a declared tensor (along its first
        axis). The tensor counts as written once all its rows are; rows are not checked
        for overlap, so write each row once."""
        self._check_open()
        slot = self._slot(name)
        arr = np.ascontiguousarray(np.asarray(array))
        if tuple(arr.shape[1:]) != slot.shape[1:] or not slot.shape or \
                start < 0 or start + arr.shape[0] > slot.shape[0]:
            raise _plan_error(f"rows {start}:{start + arr.shape[0]} of `{name}` do not fit "
                              f"its declared shape {slot.shape}")
        if dtypes.from_numpy(arr.dtype) != slot.dtype:
            raise _plan_error(f"output tensor `{name}` declared as {slot.dtype} but written as "
                              f"{dtypes.from_numpy(arr.dtype)}")
        row = slot.nbytes // slot.shape[0]
        path = self.temp_dir / self._shards[slot.shard].file_name  # type: ignore[operator]
        try:
            self._pwrite_all(self._fds[slot.shard], memoryview(arr.reshape(-1).view(np.uint8)),
                             slot.offset + start * row, path)
        except OSError as e:
            raise CheckpointError(E_WRITE_FAILED, f"cannot write tensor `{name}` to {path}: "
                                  f"{e.strerror or e}", "check free disk space") from None
        with self._lock:
            if name in self._written:
                raise _plan_error(f"output tensor `{name}` was written twice")
            done = self._rows_done.get(name, 0) + arr.shape[0]
            if done >= slot.shape[0]:
                self._rows_done.pop(name, None)
                self._written.add(name)
            else:
                self._rows_done[name] = done

    def write_raw(self, name: str, data: bytes) -> None:
        """Write one declared tensor from its exact little-endian bytes."""
        slot = self._claim(name)
        view = memoryview(data).cast("B")
        if len(view) != slot.nbytes:
            raise _plan_error(f"output tensor `{name}` needs {slot.nbytes} bytes "
                              f"({slot.dtype}, shape {slot.shape}) but got {len(view)}")
        self._put(slot, view)

    def _extra_path(self, relpath: str) -> Path:
        self._check_open()
        rel = str(relpath).replace("\\", "/")
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        if not parts or rel.startswith("/") or ".." in parts or ":" in parts[0]:
            raise _plan_error(f"invalid output file name {relpath!r}: use a path relative to the output folder")
        norm = "/".join(parts)
        if norm in _RESERVED or norm in self.shard_files:
            raise _plan_error(f"output file `{norm}` is written by the weights writer itself")
        with self._lock:
            if norm in self._files:
                raise _plan_error(f"output file `{norm}` was added twice")
            self._files.add(norm)
        path = self.temp_dir.joinpath(*parts)  # type: ignore[union-attr]
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def add_file(self, relpath: str, data: bytes | str) -> None:
        """Add a non-weight file (config.json, README.md, ...) to the output."""
        if isinstance(data, str):
            data = data.encode("utf-8")
        try:
            path = self._extra_path(relpath)
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except CheckpointError:
            raise
        except OSError as e:
            raise CheckpointError(E_WRITE_FAILED, f"cannot write {relpath} for {self.target}: {e.strerror or e}") from None

    def copy_file(self, relpath: str, src: Path) -> None:
        """Copy a file (symbolic links followed, e.g. from the hub cache) into the output."""
        src = Path(src)
        if not src.is_file():
            raise CheckpointError(E_WRITE_FAILED, f"cannot copy {src} into {self.target}: no such file")
        try:
            path = self._extra_path(relpath)
            shutil.copyfile(src, path)
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        except CheckpointError:
            raise
        except OSError as e:
            raise CheckpointError(E_WRITE_FAILED, f"cannot copy {src} into {self.target}: {e.strerror or e}") from None

    def staged(self, names) -> "StagedTensors":
        """Where tensors `names` go in the staging folder: a small picklable view that
        another process (a Ray worker, on this machine or one that mounts the same
        folder) writes them with; the writer then records them with
        :meth:`note_written`, and commits as usual."""
        self._check_open()
        assert self.temp_dir is not None
        table = {}
        for name in names:
            slot = self._slot(name)
            path = str(self.temp_dir / self._shards[slot.shard].file_name)
            table[name] = (path, slot.offset, slot.nbytes, slot.shape, slot.dtype)
        return StagedTensors(table)

    def note_written(self, name: str) -> None:
        """Record a tensor as written by another process sharing this writer's files (a
        forked worker that wrote it with :meth:`write`, :meth:`write_raw` or
        :meth:`write_rows`)."""
        self._slot(name)
        with self._lock:
            self._rows_done.pop(name, None)
            self._written.add(name)

    def missing(self) -> list[str]:
        """Declared tensors not written yet, in declaration order."""
        with self._lock:
            return [n for n in self._slots if n not in self._written]

    def commit(self) -> Path:
        """Finish: check every tensor was written, fsync, and move the folder into place.

        With ``force`` and an existing target, the old folder is first renamed aside and
        deleted only once the new one is in place. If a declared tensor is missing, the
        writer aborts (nothing at the target, temp folder removed) and raises E414.
        """
        if self._state == "committed":
            return self.target
        self._check_open()
        missing = self.missing()
        if missing:
            self.abort()
            shown = ", ".join(f"`{n}`" for n in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise _plan_error(f"output {self.target}: {len(missing)} declared tensor(s) were never written: "
                              f"{shown}{more}")
        tmp = self.temp_dir
        assert tmp is not None
        try:
            if len(self._shards) > 1:
                weight_map = {name: self._shards[slot.shard].file_name for name, slot in self._slots.items()}
                index = {"metadata": {"total_size": sum(s.nbytes for s in self._slots.values())},
                         "weight_map": dict(sorted(weight_map.items()))}
                with open(tmp / INDEX_FILE, "w", encoding="utf-8") as f:
                    json.dump(index, f, indent=2)
                    f.write("\n")
                    f.flush()
                    os.fsync(f.fileno())
            for fd in self._fds:
                os.fsync(fd)
            self._close_fds()
            _fsync_dir(tmp)
            self._install(tmp)
        except CheckpointError:
            self.abort()
            raise
        except OSError as e:
            self.abort()
            raise CheckpointError(E_WRITE_FAILED, f"cannot finish output {self.target}: {e.strerror or e}",
                                  "check free disk space and permissions") from None
        self._state = "committed"
        self.temp_dir = None
        _fsync_dir(self.target.parent)
        return self.target

    def _install(self, tmp: Path) -> None:
        target = self.target
        if not os.path.lexists(target):
            os.rename(tmp, target)
            return
        if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
            os.rmdir(target)
            os.rename(tmp, target)
            return
        if not self.force or not target.is_dir():
            check_target(target, self.force)  # raises with the right message
            raise CheckpointError(E_TARGET_EXISTS, f"output path {target} appeared while writing")
        old = target.parent / f".{target.name}{_OLD_TAG}{os.getpid()}-{secrets.token_hex(4)}"
        os.rename(target, old)
        try:
            os.rename(tmp, target)
        except OSError:
            os.rename(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)

    def _close_fds(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def abort(self) -> None:
        """Discard everything written; nothing is left at the target or beside it."""
        if self._state == "committed":
            return
        self._close_fds()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None
        self._state = "aborted"

    def __enter__(self) -> "OutputWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self.abort()
            return False
        if self._state == "open":
            self.commit()
        return False


class StagedTensors:
    """Tensors of an output being written, as another process writes them: for each name
    its shard file in the staging folder, offset, size, shape and dtype
    (:meth:`OutputWriter.staged`). Writes are positioned, so a write repeated by a retried
    task puts the same bytes at the same place."""

    def __init__(self, table: dict[str, tuple[str, int, int, tuple[int, ...], str]]):
        self.table = table

    def _entry(self, name: str):
        try:
            return self.table[name]
        except KeyError:
            raise _plan_error(f"output tensor `{name}` is not staged here") from None

    def _pwrite(self, name: str, path: str, data: memoryview, offset: int) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | getattr(os, "O_BINARY", 0))
            try:
                OutputWriter._pwrite_all(fd, data, offset, Path(path))
            finally:
                os.close(fd)
        except OSError as e:
            raise CheckpointError(E_WRITE_FAILED, f"cannot write tensor `{name}` to {path}: "
                                  f"{e.strerror or e}", "check free disk space, and that "
                                  "every worker sees the output folder at the same path") \
                from None

    def _check(self, name: str, arr: np.ndarray, shape) -> np.ndarray:
        _, _, _, want_shape, dtype = self._entry(name)
        if tuple(arr.shape) != tuple(shape):
            raise _plan_error(f"output tensor `{name}` declared with shape {want_shape} "
                              f"but written with shape {tuple(arr.shape)}")
        if dtypes.from_numpy(arr.dtype) != dtype:
            raise _plan_error(f"output tensor `{name}` declared as {dtype} but written as "
                              f"{dtypes.from_numpy(arr.dtype)}")
        if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        return np.ascontiguousarray(arr)

    def write(self, name: str, array: np.ndarray) -> None:
        path, offset, _, shape, _ = self._entry(name)
        arr = self._check(name, np.asarray(array), shape)
        self._pwrite(name, path, memoryview(arr.reshape(-1).view(np.uint8)), offset)

    def write_rows(self, name: str, start: int, array: np.ndarray) -> None:
        path, offset, nbytes, shape, _ = self._entry(name)
        arr = np.asarray(array)
        if not shape or start < 0 or start + arr.shape[0] > shape[0]:
            raise _plan_error(f"rows {start}:{start + arr.shape[0]} of `{name}` do not fit "
                              f"its declared shape {shape}")
        arr = self._check(name, arr, (arr.shape[0],) + tuple(shape[1:]))
        row = nbytes // shape[0]
        self._pwrite(name, path, memoryview(arr.reshape(-1).view(np.uint8)),
                     offset + start * row)

    def write_raw(self, name: str, data: bytes) -> None:
        path, offset, nbytes, shape, dtype = self._entry(name)
        view = memoryview(data).cast("B")
        if len(view) != nbytes:
            raise _plan_error(f"output tensor `{name}` needs {nbytes} bytes ({dtype}, shape "
                              f"{shape}) but got {len(view)}")
        self._pwrite(name, path, view, offset)
