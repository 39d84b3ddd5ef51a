"""Incremental and resumable builds: which tensors of an output must be computed, and
which can be copied from a previous output or from a killed build's staging folder.

Every output tensor has a key (:func:`tensor_keys`): the hash of its IR after the passes
(:mod:`mergec.ir.keys`), with each input named by its location and content fingerprint,
together with mergec's version and the backend. An output folder written by mergec
records the keys in ``mergec-keys.json``, with a key of the whole output (the tensor keys
and the files beside them: config.json, tokenizer files, model card).

* A rebuild reuses every tensor whose key is unchanged, copying its bytes from the
  previous output into the new one (through the atomic writer: the new folder replaces
  the old one whole), and computes the others. An output whose key is unchanged is not
  written at all.
* While an output is written, each finished tensor is appended to a journal in the
  writer's staging folder (with its key). A build killed at any point leaves that folder
  behind; the next build of the same output copies the journaled tensors whose key is
  unchanged from it, and computes the rest. Copied bytes are the bytes the killed build
  wrote, so the result is bit-identical to an uninterrupted build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

from mergec import __version__

KEYS_FILE = "mergec-keys.json"
JOURNAL_FILE = ".mergec-journal"
_RESUME_TAG = ".mergec-resume-"
_TMP_TAG = ".mergec-tmp-"  # the writer's staging folders: .<name>.mergec-tmp-<pid>-<hex>
KEYS_VERSION = 1

Reader = Callable[[], bytes]


def input_identity(src) -> str:
    """An input by location and content fingerprint (sampled bytes of every file)."""
    ref = getattr(src, "ref", None)
    where = ref.display() if ref is not None and not ref.local else \
        str(Path(getattr(src, "root", "")).resolve())
    fp = getattr(src, "content_fingerprint", None) or src.fingerprint
    try:
        return f"{where}#{fp()}"
    except Exception:  # noqa: BLE001 - unreadable: the build reports it; never reuse
        return f"{where}#unreadable-{os.urandom(16).hex()}"


def tensor_keys(lo, checked, backend_name: str) -> dict[str, str]:
    """output tensor -> key."""
    from mergec.ir.keys import tensor_keys as ir_keys

    ids: dict[str, str] = {}

    def source_id(name: str) -> str:
        if name not in ids:
            ids[name] = input_identity(checked.source(name))
        return ids[name]

    salt = f"mergec {__version__} backend {backend_name}\0".encode()
    keys = ir_keys([t.node for t in lo.tensors], source_id)
    return {t.name: hashlib.sha256(salt + k.encode()).hexdigest()
            for t, k in zip(lo.tensors, keys)}


def output_key(keys: dict[str, str], lo, checked) -> str:
    """The key of a whole output: its tensor keys and the files written beside them."""
    from mergec.check.output_config import derive_output_config
    from mergec.io import hf_files
    from mergec.runtime.output_files import model_card

    out = lo.output
    h = hashlib.sha256(f"{KEYS_VERSION}\0{out.name}\0".encode())
    for name, k in keys.items():
        h.update(f"{name}\0{k}\0".encode())
    h.update(json.dumps(derive_output_config(out), sort_keys=True).encode())
    if out.tokenizer_from is not None and out.tokenizer_from.checkpoint is not None:
        for f in hf_files.carry_over_files(out.tokenizer_from.checkpoint.root):
            h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    if out.vocab is not None:
        h.update(out.vocab.tokenizer_json().encode())
    try:
        h.update(model_card(lo, checked).encode())
    except Exception:  # noqa: BLE001 - an unreadable input: the build reports it
        h.update(os.urandom(16))
    return h.hexdigest()


def keys_document(keys: dict[str, str], whole: str) -> str:
    return json.dumps({"version": KEYS_VERSION, "output": whole, "tensors": keys},
                      indent=1, sort_keys=False) + "\n"


def recorded(target: Path) -> dict | None:
    """The keys a previous build recorded in ``target`` (None: not an output mergec
    wrote, or an unreadable record)."""
    try:
        data = json.loads((Path(target) / KEYS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("version") != KEYS_VERSION or \
            not isinstance(data.get("tensors"), dict):
        return None
    return data


def written_by_mergec(target: Path) -> bool:
    return recorded(target) is not None


# --- reading tensors back from safetensors files (a previous output, a staging folder) --


def _tensor_table(folder: Path) -> dict[str, tuple[Path, int, int, str, list[int]]]:
    """name -> (file, absolute offset, nbytes, safetensors dtype, shape) of every
    safetensors file of ``folder``."""
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with open(path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error):
            continue
        for name, v in header.items():
            if name == "__metadata__":
                continue
            b, e = v["data_offsets"]
            out[name] = (path, 8 + n + b, e - b, v["dtype"], v["shape"])
    return out


def _reader(path: Path, offset: int, nbytes: int) -> Reader:
    def read() -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            parts, done = [], 0
            while done < nbytes:
                b = os.pread(fd, min(nbytes - done, 1 << 30), offset + done)
                if not b:
                    raise OSError(f"{path} is shorter than its header says")
                parts.append(b)
                done += len(b)
            return b"".join(parts)
        finally:
            os.close(fd)
    return read


def _matching(folder: Path, names: dict[str, str], lo) -> dict[str, Reader]:
    """Readers for the tensors of ``names`` (name -> key, already matched) whose stored
    dtype and shape are those of the output tensor."""
    from mergec.io import dtypes

    table = _tensor_table(folder)
    out = {}
    for t in lo.tensors:
        if t.name not in names or t.name not in table:
            continue
        path, off, nbytes, st_dtype, shape = table[t.name]
        try:
            same = dtypes.to_safetensors(t.dtype) == st_dtype and list(t.shape) == list(shape)
        except ValueError:
            same = False
        if same:
            out[t.name] = _reader(path, off, nbytes)
    return out


def reusable_from_output(target: Path, keys: dict[str, str], lo) -> dict[str, Reader]:
    """The tensors of the previous output at ``target`` whose key is unchanged."""
    rec = recorded(target)
    if rec is None:
        return {}
    same = {n: k for n, k in keys.items() if rec["tensors"].get(n) == k}
    return _matching(Path(target), same, lo)


# --- resume ----------------------------------------------------------------------------


class Journal:
    """The tensors finished in a staging folder, one ``name<TAB>key`` line each."""

    def __init__(self, folder: Path | None, keys: dict[str, str]):
        self.keys = keys
        self.path = None if folder is None else Path(folder) / JOURNAL_FILE
        self._f = None if self.path is None else open(self.path, "a", encoding="utf-8")

    def done(self, name: str) -> None:
        if self._f is not None:
            self._f.write(f"{name}\t{self.keys.get(name, '')}\n")
            self._f.flush()  # a killed process leaves what it flushed

    def close(self) -> None:
        """Before the commit: the journal is not part of the output."""
        if self._f is not None:
            self._f.close()
            self._f = None
            try:
                self.path.unlink()
            except OSError:
                pass


def _pid_of(name: str, prefix: str) -> int | None:
    try:
        return int(name[len(prefix):].split("-", 1)[0])
    except ValueError:
        return None


def _dead(pid: int | None) -> bool:
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def claim_resumable(target: Path, keys: dict[str, str]) -> Path | None:
    """The staging folder of a killed build of ``target`` with the most journaled tensors
    whose key is unchanged, moved aside (``.<name>.mergec-resume-<pid>-...``) so that the
    writer's clean-up of stale folders keeps it until this build has copied from it.
    Other leftovers are left to that clean-up."""
    target = Path(os.path.abspath(target))
    best, best_n = None, 0
    prefixes = (f".{target.name}{_TMP_TAG}", f".{target.name}{_RESUME_TAG}")
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return None
    for p in entries:
        prefix = next((x for x in prefixes if p.name.startswith(x)), None)
        if prefix is None or not _dead(_pid_of(p.name, prefix)):
            continue
        n = len(journaled(p, keys))
        if n > best_n:
            best, best_n = p, n
    for p in entries:  # older resume folders of dead builds: superseded
        if p != best and p.name.startswith(prefixes[1]) and _dead(_pid_of(p.name, prefixes[1])):
            shutil.rmtree(p, ignore_errors=True)
    if best is None:
        return None
    moved = target.parent / f".{target.name}{_RESUME_TAG}{os.getpid()}-{best.name[-8:]}"
    try:
        os.rename(best, moved)
    except OSError:
        return None
    return moved


def journaled(folder: Path, keys: dict[str, str]) -> dict[str, str]:
    """The journaled tensors of a staging folder whose key is the current one."""
    try:
        lines = (Path(folder) / JOURNAL_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    out = {}
    for line in lines:
        name, _, key = line.partition("\t")
        if key and keys.get(name) == key:
            out[name] = key
    return out


def reusable_from_staging(folder: Path, keys: dict[str, str], lo) -> dict[str, Reader]:
    return _matching(folder, journaled(folder, keys), lo)


def discard(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
