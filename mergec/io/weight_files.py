"""The weight files of a checkpoint: safetensors headers, ``.bin`` state dicts, and the one
function that reads tensor data.

Every tensor-data read of mergec's input side goes through :func:`read_span` (tests replace
it to prove that opening a checkpoint reads no tensor data). ``.bin`` files need torch,
imported when one is opened.
"""

from __future__ import annotations

import math

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergec.io import dtypes
from mergec.io.errors import (
    E_BIN_LOAD, E_CORRUPT_HEADER, E_DTYPE, E_INDEX, E_READ, E_TRUNCATED, CheckpointError, load_json,
)
from mergec.lazy import lazy_module

np = lazy_module("numpy")  # only reading tensor data needs numpy; headers do not

# The safetensors format itself refuses headers above 100 MB.
MAX_HEADER_BYTES = 100_000_000

REDOWNLOAD = ("the file is damaged or incomplete (interrupted download or copy?): delete it "
              "and download it again")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives. ``offset`` is the absolute byte offset of its data in
    ``file`` (safetensors only; None for ``.bin`` and for hub headers read remotely)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    file: Path
    offset: int | None
    nbytes: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class WeightFile:
    """What the fingerprint needs to know about one weight file (no tensor data)."""

    name: str                      # path relative to the checkpoint root
    kind: str                      # "safetensors" | "bin"
    entries: list[tuple]           # (tensor, dtype, shape, begin, end) in file order
    data_length: int | None        # safetensors: bytes after the header
    size: int | None = None        # bin: file size


# --------------------------------------------------------------------------- raw reads


def read_span(path: Path, offset: int | None, nbytes: int, *, tensor: Any = None) -> bytearray:
    """THE tensor-data read of the input side: ``nbytes`` bytes into a new buffer.

    For safetensors, reads ``nbytes`` at absolute ``offset`` of ``path`` with positioned
    reads straight into the new buffer. For ``.bin``, ``tensor`` is the memory-mapped
    torch tensor of that shard and its bytes are copied (``offset`` is None).
    """
    buf = bytearray(nbytes)
    if nbytes == 0:
        return buf
    if tensor is not None:
        import torch
        flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
        np.frombuffer(buf, dtype=np.uint8)[:] = flat.numpy()
        return buf
    assert offset is not None
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        done = 0
        while done < nbytes:
            if hasattr(os, "preadv"):
                n = os.preadv(fd, [view[done:]], offset + done)
            else:  # pragma: no cover - platforms without preadv
                chunk = os.pread(fd, min(nbytes - done, 1 << 30), offset + done)
                n = len(chunk)
                view[done:done + n] = chunk
            if n == 0:
                raise EOFError(f"{path}: expected {nbytes} bytes at offset {offset}, got {done}")
            done += n
    finally:
        os.close(fd)
    return buf


# --------------------------------------------------------------------------- safetensors


def header_error(path: Path, why: str) -> CheckpointError:
    return CheckpointError(E_CORRUPT_HEADER, f"corrupt safetensors header in {path}: {why}", REDOWNLOAD)


def parse_safetensors_header(path: Path, rel: str | None = None) -> tuple[list[TensorInfo], WeightFile]:
    """Parse and validate the header of one safetensors file (reads only the header).

    Returns the tensors sorted by offset and a record for the fingerprint. Raises E407
    (corrupt header), E408 (file shorter than the header says), E417 (unknown dtype),
    E412 (cannot read the file).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise CheckpointError(
                    E_TRUNCATED, f"{path} is truncated: {size} bytes, too small for a safetensors file",
                    REDOWNLOAD)
            (hlen,) = struct.unpack("<Q", f.read(8))
            if hlen == 0 or hlen > MAX_HEADER_BYTES:
                raise header_error(path, f"impossible header length {hlen}")
            if 8 + hlen > size:
                raise CheckpointError(
                    E_TRUNCATED,
                    f"{path} is truncated: its header needs {8 + hlen} bytes but the file has {size}",
                    REDOWNLOAD)
            raw = f.read(hlen)
    except CheckpointError:
        raise
    except OSError as e:
        raise CheckpointError(E_READ, f"cannot read {path}: {e.strerror or e}") from None
    if len(raw) != hlen:
        raise CheckpointError(E_TRUNCATED, f"{path} is truncated while reading its header", REDOWNLOAD)
    try:
        header = load_json(raw.decode("utf-8"), path)
    except (UnicodeDecodeError, ValueError) as e:
        raise header_error(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise header_error(path, "header is not a JSON object")
    data_start = 8 + hlen
    data_length = size - data_start
    infos: list[TensorInfo] = []
    entries: list[tuple] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not name:
            raise header_error(path, "a tensor has an empty name")
        if not isinstance(entry, dict):
            raise header_error(path, f"entry for tensor `{name}` is not an object")
        code = entry.get("dtype")
        shape = entry.get("shape")
        offs = entry.get("data_offsets")
        if not isinstance(code, str):
            raise header_error(path, f"tensor `{name}` has no dtype")
        if (not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise header_error(path, f"tensor `{name}` has an invalid shape {shape!r}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offs)
                or offs[0] > offs[1]):
            raise header_error(path, f"tensor `{name}` has invalid data_offsets {offs!r}")
        try:
            dtype = dtypes.from_safetensors(code)
        except ValueError:
            raise CheckpointError(
                E_DTYPE, f"tensor `{name}` in {path} has dtype {code}, which mergec does not support",
                f"supported dtypes: {', '.join(dtypes.DTYPES)}") from None
        numel = 1
        for d in shape:
            numel *= d
        nbytes = numel * dtypes.itemsize(dtype)
        begin, end = offs
        if end - begin != nbytes:
            raise header_error(
                path, f"tensor `{name}` ({code}, shape {shape}) needs {nbytes} bytes but its "
                      f"data_offsets span {end - begin}")
        if end > data_length:
            raise CheckpointError(
                E_TRUNCATED,
                f"{path} is truncated: tensor `{name}` ends at byte {data_start + end} "
                f"but the file has {size} bytes",
                REDOWNLOAD)
        infos.append(TensorInfo(name=name, shape=tuple(shape), dtype=dtype, file=path,
                                offset=data_start + begin, nbytes=nbytes))
        entries.append((name, dtype, tuple(shape), begin, end))
    order = sorted(range(len(infos)), key=lambda i: (entries[i][3], entries[i][4]))
    infos = [infos[i] for i in order]
    entries = [entries[i] for i in order]
    prev_end = 0
    prev_name = None
    for e in entries:
        if e[3] < prev_end:
            raise header_error(path, f"data of tensors `{prev_name}` and `{e[0]}` overlap")
        if e[4] > e[3]:
            prev_end, prev_name = e[4], e[0]
    record = WeightFile(name=rel or path.name, kind="safetensors", entries=entries, data_length=data_length)
    return infos, record


# --------------------------------------------------------------------------- .bin


def torch_module():
    try:
        import torch
    except Exception as e:  # torch is optional: only .bin weights need it
        raise CheckpointError(E_BIN_LOAD, f"PyTorch is needed to read .bin weights but cannot be imported ({e})",
                              "install it (`pip install 'mergec[torch]'`), or convert the "
                              "checkpoint to safetensors") from None
    return torch


def load_bin(path: Path) -> dict:
    """``torch.load`` one .bin shard: weights only, memory-mapped, on the CPU."""
    torch = torch_module()
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            # Files from the pre-zip torch format cannot be memory-mapped: load them fully.
            if "mmap" not in str(e) and "zipfile" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(E_INDEX, f"weights file {path} is missing", REDOWNLOAD) from None
    except Exception as e:
        text = str(e).strip().splitlines()
        why = text[0] if text else type(e).__name__
        if len(why) > 200:
            why = why[:197] + "..."
        raise CheckpointError(
            E_BIN_LOAD, f"cannot load PyTorch weights {path}: {why}",
            "the file may be truncated or corrupt (download it again), or hold objects other than "
            "tensors (convert the checkpoint to safetensors)") from None
    if not isinstance(obj, dict):
        raise CheckpointError(E_BIN_LOAD, f"{path} does not hold a state dict (found {type(obj).__name__})",
                              "convert the checkpoint to a safetensors or state-dict .bin checkpoint")
    return obj


def bin_infos(path: Path, state: dict) -> list[TensorInfo]:
    torch = torch_module()
    infos = []
    for name, t in state.items():
        if not isinstance(name, str) or not isinstance(t, torch.Tensor):
            continue
        try:
            dtype = dtypes.from_torch_name(str(t.dtype))
        except ValueError:
            raise CheckpointError(
                E_DTYPE, f"tensor `{name}` in {path} has dtype {t.dtype}, which mergec does not support",
                f"supported dtypes: {', '.join(dtypes.DTYPES)}") from None
        shape = tuple(int(d) for d in t.shape)
        infos.append(TensorInfo(name=name, shape=shape, dtype=dtype, file=path, offset=None,
                                nbytes=int(t.numel()) * dtypes.itemsize(dtype)))
    return infos
