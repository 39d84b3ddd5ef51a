"""`mergec lock`: pin every input of a recipe in ``RECIPE.lock``, and check builds
against it.

The lock file is TOML, written in a stable order (inputs in recipe order, files by
name) so that it diffs well. For each `model` and `adapter` input it records the source
as written and what it resolved to (a local folder, or a hub repository's revision and
commit hash) and, for each file of the input, its size, a content fingerprint and, for
safetensors files, a digest of the header:

* ``sha256``: the sha256 of the file's bytes. For a hub file stored with Git LFS (the
  weights) it is the LFS object id the hub reports in the repository's file metadata, so
  locking a hub model downloads nothing; other files are hashed where they are (local
  folders, the hub cache).
* ``header``: the sha256 of the safetensors header in a canonical form (tensor names,
  dtypes, shapes and data offsets, and the ``__metadata__``), the same whether read from
  the file or from the hub (HTTP range requests).

A build of a recipe that has a lock file uses the locked commit of every hub input (the
revision is pinned), checks the inputs against the lock (sizes and headers) and warns
about any difference (W333); ``build --locked`` also compares the content of every
file and whether each hub revision still points at the locked commit, and stops before
computing anything when something differs (E440, one diagnostic per difference).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from mergec.diagnostics import Diagnostic, MergecError, Span, UsageError

LOCK_VERSION = 1
#: read size for hashing files
CHUNK = 1 << 22


@dataclass
class LockedFile:
    path: str  # relative to the input's folder, "/"-separated
    size: int | None = None
    sha256: str | None = None
    header: str | None = None


@dataclass
class LockedInput:
    name: str
    kind: str  # "model" | "adapter"
    source: str  # as the recipe writes it
    repo: str | None = None  # hub inputs
    revision: str | None = None
    commit: str | None = None
    files: list[LockedFile] = field(default_factory=list)

    @property
    def hub(self) -> bool:
        return self.repo is not None


@dataclass
class Lock:
    recipe: str
    inputs: list[LockedInput]

    def by_name(self) -> dict[str, LockedInput]:
        return {i.name: i for i in self.inputs}


def lock_path(recipe: str | Path) -> Path:
    return Path(str(recipe) + ".lock")


# --- fingerprints ----------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(CHUNK)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _canonical_header(metadata: dict | None, tensors) -> str:
    """tensors: iterable of (name, dtype, shape, (begin, end))."""
    body = {"metadata": dict(metadata or {}),
            "tensors": sorted([str(n), str(d), [int(x) for x in s], [int(b), int(e)]]
                              for n, d, s, (b, e) in tensors)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def header_digest(path: Path) -> str | None:
    """The canonical header digest of a local safetensors file (None when it is not
    one)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                return None
            (n,) = struct.unpack("<Q", raw)
            if n > 100 * 1000**2:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    meta = header.pop("__metadata__", None)
    try:
        return _canonical_header(meta, ((k, v["dtype"], v["shape"], v["data_offsets"])
                                        for k, v in header.items()))
    except (KeyError, TypeError, ValueError):
        return None


def _remote_header(repo: str, fname: str, commit: str) -> str:
    from huggingface_hub import HfApi

    from mergec.io.sources import hub_endpoint, hub_timeout

    meta = HfApi(endpoint=hub_endpoint()).parse_safetensors_file_metadata(
        repo, fname, revision=commit, timeout=hub_timeout())
    return _canonical_header(meta.metadata, ((k, t.dtype, t.shape, t.data_offsets)
                                             for k, t in meta.tensors.items()))


def _hub_files(repo: str, commit: str) -> dict[str, tuple[int | None, str | None]]:
    """rfilename -> (size, LFS sha256 or None) from the hub's file metadata."""
    from huggingface_hub import HfApi

    from mergec.io.sources import hub_endpoint, hub_timeout

    info = HfApi(endpoint=hub_endpoint()).model_info(repo, revision=commit,
                                                     files_metadata=True,
                                                     timeout=hub_timeout())
    out = {}
    for s in info.siblings or []:
        lfs = getattr(s, "lfs", None)
        sha = getattr(lfs, "sha256", None) if lfs is not None and not isinstance(lfs, dict) \
            else (lfs or {}).get("sha256")
        out[s.rfilename] = (getattr(s, "size", None), sha)
    return out


def _top_files(root: Path) -> list[str]:
    try:
        return sorted(p.name for p in root.iterdir()
                      if p.is_file() and not p.name.startswith("."))
    except OSError:
        return []


def _input_files(src, root: Path) -> list[str]:
    """The files of an input: every top-level file of its folder, and the weight files of
    its tensor table (a hub model whose weights are not downloaded yet)."""
    names = set(_top_files(root))
    for t in getattr(src, "tensors", {}).values():
        f = getattr(t, "file", None)
        if f is not None:
            try:
                names.add(Path(os.path.relpath(f, root)).as_posix())
            except ValueError:
                pass
    return sorted(n for n in names if not n.startswith(".."))


def _inputs(checked):
    """(name, kind, source as written, opened source, span) of each input, in order."""
    from mergec.lang import ast

    out = []
    for st in checked.program.statements:
        if isinstance(st, (ast.ModelStmt, ast.AdapterStmt)) and st.name.name in checked.inputs:
            kind = "model" if isinstance(st, ast.ModelStmt) else "adapter"
            out.append((st.name.name, kind, st.source.value, checked.source(st.name.name),
                        st.source.span))
    return out


def _lock_error(message: str, span: Span | None = None, help: str | None = None):
    return Diagnostic("E442", message, span, help=help)


def make_lock(checked) -> Lock:
    """Fingerprint every input of a checked recipe (raises MergecError E442 when a file
    can be fingerprinted neither from the hub's metadata nor where it is)."""
    from mergec.io.sources import snapshot_commit

    inputs, problems = [], []
    for name, kind, raw, src, span in _inputs(checked):
        ref = getattr(src, "ref", None)
        root = Path(getattr(src, "root"))
        li = LockedInput(name, kind, raw)
        hub_meta: dict = {}
        if ref is not None and not ref.local:
            li.repo, li.revision = ref.repo_id, ref.revision or "main"
            li.commit = snapshot_commit(root)
            if li.commit is None:
                problems.append(_lock_error(f"`{name}`: cannot tell which commit of "
                                            f"`{ref.repo_id}` was used", span))
                continue
            try:
                hub_meta = _hub_files(li.repo, li.commit)
            except Exception:  # noqa: BLE001 - offline or unreachable: hash local copies
                hub_meta = {}
        for fname in _input_files(src, root):
            path = root / fname
            lf = LockedFile(fname)
            size, lfs_sha = hub_meta.get(fname, (None, None))
            if path.is_file():
                lf.size = path.stat().st_size
                lf.sha256 = lfs_sha or file_sha256(path)
                if fname.endswith(".safetensors"):
                    lf.header = header_digest(path)
            elif lfs_sha is not None:
                lf.size, lf.sha256 = size, lfs_sha
                if fname.endswith(".safetensors"):
                    try:
                        lf.header = _remote_header(li.repo, fname, li.commit)
                    except Exception as e:  # noqa: BLE001
                        problems.append(_lock_error(
                            f"`{name}`: cannot read the safetensors header of `{fname}` from "
                            f"the hub ({type(e).__name__})", span))
            else:
                problems.append(_lock_error(
                    f"`{name}`: `{fname}` is neither downloaded nor described by the hub's "
                    "file metadata", span,
                    help="connect to the hub, or download the model once "
                    f"(`hf download {li.repo}`)"))
                continue
            li.files.append(lf)
        inputs.append(li)
    if problems:
        raise MergecError(problems)
    return Lock(Path(checked.file).name, inputs)


# --- the file --------------------------------------------------------------------------


def _q(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)


def dumps(lock: Lock) -> str:
    lines = [f"# mergec lock file for {lock.recipe}: `mergec lock` writes it, builds pin and "
             "check their inputs against it", f"version = {LOCK_VERSION}"]
    for i in lock.inputs:
        lines += ["", "[[input]]", f"name = {_q(i.name)}", f"kind = {_q(i.kind)}",
                  f"source = {_q(i.source)}"]
        if i.hub:
            lines += [f"repo = {_q(i.repo)}", f"revision = {_q(i.revision)}",
                      f"commit = {_q(i.commit)}"]
        for f in i.files:
            lines += ["", "[[input.file]]", f"path = {_q(f.path)}"]
            if f.size is not None:
                lines.append(f"size = {f.size}")
            if f.sha256 is not None:
                lines.append(f"sha256 = {_q(f.sha256)}")
            if f.header is not None:
                lines.append(f"header = {_q(f.header)}")
    return "\n".join(lines) + "\n"


def load(path: Path) -> Lock:
    import tomllib

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != LOCK_VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {LOCK_VERSION}")
        inputs = []
        for d in data.get("input", []):
            files = [LockedFile(f["path"], f.get("size"), f.get("sha256"), f.get("header"))
                     for f in d.get("file", [])]
            inputs.append(LockedInput(d["name"], d["kind"], d["source"], d.get("repo"),
                                      d.get("revision"), d.get("commit"), files))
    except FileNotFoundError:
        raise UsageError(Diagnostic(
            "E441", f"no lock file {path}",
            help=f"write it with `mergec lock {str(path)[:-5]}`")) from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise MergecError(Diagnostic(
            "E441", f"cannot read lock file {path}: {e}",
            help="write it again with `mergec lock`")) from None
    return Lock(path.name[:-5], inputs)


def pins(lock: Lock) -> dict[str, str]:
    """Recipe source text -> the same hub repository at the locked commit."""
    return {i.source: f"{i.repo}@{i.commit}" for i in lock.inputs
            if i.hub and i.commit and not i.source.endswith("@" + i.commit)}


# --- checking --------------------------------------------------------------------------


def drift(checked, lock: Lock, lock_file: str, *,
          strict: bool) -> list[tuple[str, str, Span | None]]:
    """Every difference between the inputs of ``checked`` and the lock, as (kind, message,
    span): kind "drift" (an input differs) or "moved" (a hub revision points elsewhere
    now; the build uses the locked commit). ``strict`` also hashes every file and asks
    the hub where each revision points."""
    from mergec.io.sources import SourceRef, hub_offline, probe_commit, snapshot_commit

    out: list[tuple[str, str, Span | None]] = []
    locked = lock.by_name()
    seen = set()
    for name, kind, raw, src, span in _inputs(checked):
        seen.add(name)
        li = locked.get(name)
        if li is None:
            out.append(("drift", f"`{name}` is not in {lock_file}", span))
            continue
        if li.source != raw or li.kind != kind:
            out.append(("drift", f"`{name}` was `{li.source}` when {lock_file} was written, "
                        f"it is `{raw}` now", span))
            continue
        root = Path(getattr(src, "root"))
        if li.hub:
            now = snapshot_commit(root)
            if now != li.commit:
                out.append(("drift", f"`{name}` is {li.repo} at commit {now}, the lock has "
                            f"{li.commit}", span))
            if strict and not hub_offline():
                try:
                    head = probe_commit(SourceRef(raw, False, None, li.repo,
                                                  None if li.revision == "main" and "@" not in raw
                                                  else li.revision))
                except Exception as e:  # noqa: BLE001
                    out.append(("drift", f"`{name}`: cannot ask the hub where `{li.repo}@"
                                f"{li.revision}` points ({type(e).__name__})", span))
                else:
                    if head != li.commit:
                        out.append(("moved", f"`{name}`: {li.repo}@{li.revision} has moved to "
                                    f"commit {head}; the lock has {li.commit}", span))
        files = {f.path: f for f in li.files}
        current = _input_files(src, root)
        for fname in current:
            if fname not in files:
                out.append(("drift", f"`{name}`: `{fname}` is new since the lock", span))
        for fname, f in files.items():
            path = root / fname
            if not path.is_file():
                if not li.hub:  # a hub file that is not downloaded yet is not drift
                    out.append(("drift", f"`{name}`: `{fname}` is gone", span))
                continue
            size = path.stat().st_size
            if f.size is not None and size != f.size:
                out.append(("drift", f"`{name}`: `{fname}` has {size} bytes, the lock "
                            f"{f.size}", span))
                continue
            if f.header is not None and header_digest(path) != f.header:
                out.append(("drift", f"`{name}`: the safetensors header of `{fname}` "
                            "changed (tensor names, dtypes, shapes or offsets)", span))
                continue
            if strict and f.sha256 is not None:
                sha = file_sha256(path)
                if sha != f.sha256:
                    out.append(("drift", f"`{name}`: the content of `{fname}` changed "
                                f"(sha256 {sha[:12]}..., the lock {f.sha256[:12]}...)", span))
    for name in locked:
        if name not in seen:
            out.append(("drift", f"`{name}` is in {lock_file} but no longer in the recipe",
                        None))
    return out


def check_build(checked, lock: Lock, lock_file: str, *, locked: bool) -> list[Diagnostic]:
    """The warnings of a build with a lock file; with ``locked``, raises MergecError (E440)
    listing every difference instead."""
    found = drift(checked, lock, lock_file, strict=locked)
    if locked and found:
        raise MergecError([Diagnostic(
            "E440", msg, span,
            help=(f"`mergec lock {checked.file}` moves the lock to the new commit; or write "
                  "the locked commit in the recipe (`repo@COMMIT`)") if k == "moved" else
            f"`mergec lock {checked.file}` records the inputs as they are now, if the change "
            "is meant") for k, msg, span in found])
    return [Diagnostic("W333", msg, span, help=f"`mergec lock {checked.file}` records the "
                       "inputs as they are now; `build --locked` refuses to build",
                       severity="warning")
            for _, msg, span in found]
