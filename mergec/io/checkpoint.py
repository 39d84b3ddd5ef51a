"""Reading input checkpoints: headers at open time, one tensor at a time afterwards.

``open_checkpoint(root)`` reads ``config.json`` and the weight files' headers only (for
safetensors: the 8-byte length and the JSON header; for ``.bin``: the pickle, with the
data memory-mapped and not touched; both in :mod:`mergec.io.weight_files`). Tensor data is
read later, one tensor per ``Checkpoint.read`` call, and every tensor-data read goes
through ``weight_files.read_span`` (tests replace it to prove that opening reads no tensor
data).

Supported layouts, in order of preference when several are present:
``model.safetensors``; ``model.safetensors.index.json`` + shards; ``pytorch_model.bin``;
``pytorch_model.bin.index.json`` + shards.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import threading
from pathlib import Path

from mergec.io import dtypes, weight_files
from mergec.io.errors import (
    E_CONFIG, E_CORRUPT_HEADER, E_DTYPE, E_HUB_UNAVAILABLE, E_INDEX, E_NO_WEIGHTS,
    E_READ, E_SOURCE_MISSING, E_TRUNCATED, CheckpointError, load_json,
)
from mergec.io.sources import (
    BIN_INDEX, BIN_SINGLE, SAFETENSORS_INDEX, SAFETENSORS_SINGLE, SourceRef, hub_endpoint,
    hub_offline, hub_timeout, map_hub_error, parse_source, resolve, resolve_metadata,
    snapshot_commit, weights_present,
)
from mergec.io.weight_files import REDOWNLOAD, TensorInfo, WeightFile, parse_safetensors_header
from mergec.lazy import lazy_module

np = lazy_module("numpy")  # only reading tensor data needs numpy; headers do not
# torch (only for reading .bin weights) and huggingface_hub (only for hub inputs) are
# imported inside the functions that need them.

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack",
                    ".gguf", ".onnx", ".onnx_data", ".pdparams", ".npz")


# --------------------------------------------------------------------------- checkpoint


class Checkpoint:
    """An opened input checkpoint: config, tensor table, and one-tensor reads.

    ``tensors`` is in on-disk order: shard files in name order (the order their
    numbering gives), then by offset inside each file (``.bin``: state-dict order).
    ``metadata_files`` lists the other top-level files (tokenizer files,
    ``generation_config.json``, README.md, ...), excluding weights, index files and
    ``config.json`` (which is in ``config``).
    """

    def __init__(self, *, ref: SourceRef | None, root: Path, config: dict | None,
                 config_bytes: bytes | None, format: str, tensors: dict[str, TensorInfo],
                 metadata_files: list[Path], files: list[WeightFile], remote: bool = False):
        self.ref = ref
        self.root = root
        self.config = config
        self.format = format
        self.tensors = tensors
        self.metadata_files = metadata_files
        self.remote = remote
        self._config_bytes = config_bytes
        self._files = files
        self._bin_cache: dict[Path, dict] = {}
        self._lock = threading.Lock()
        self._closed = False

    # -- description
    @property
    def name(self) -> str:
        return self.ref.display() if self.ref is not None else str(self.root)

    def __repr__(self) -> str:
        return f"<Checkpoint {self.name} {self.format} {len(self.tensors)} tensors>"

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.tensors), n=1)
            raise CheckpointError(
                E_READ, f"no tensor `{name}` in {self.name}",
                f"did you mean `{close[0]}`?" if close else None) from None

    # -- reads
    def read(self, name: str) -> np.ndarray:
        """Read ONE tensor into a new, writable numpy array owned by the caller.

        bfloat16/float8 arrays use the ``ml_dtypes`` types. The data is read with one
        positioned read into a fresh buffer (no memory map is kept)."""
        info = self.info(name)
        buf = self._read_bytes(info)
        arr = np.frombuffer(buf, dtype=dtypes.numpy_dtype(info.dtype))
        return arr.reshape(info.shape)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one tensor (along its first axis), reading only them."""
        info = self.info(name)
        if not info.shape:
            return self.read(name)
        n = info.shape[0]
        start, stop = max(0, start), min(n, stop)
        row = info.nbytes // n if n else 0
        if self._closed:
            raise CheckpointError(E_READ, f"checkpoint {self.name} is closed")
        if self.remote:
            self.ensure_weights()
            info = self.info(name)
        try:
            if info.offset is not None:
                buf = weight_files.read_span(info.file, info.offset + start * row, (stop - start) * row)
            else:
                tensor = self._bin_state(info.file)[name]
                buf = weight_files.read_span(info.file, None, (stop - start) * row, tensor=tensor[start:stop])
        except CheckpointError:
            raise
        except EOFError:
            raise CheckpointError(
                E_TRUNCATED, f"{info.file} is shorter than when it was opened: cannot read `{name}`",
                REDOWNLOAD) from None
        except OSError as e:
            raise CheckpointError(E_READ, f"cannot read `{name}` from {info.file}: {e.strerror or e}") from None
        arr = np.frombuffer(buf, dtype=dtypes.numpy_dtype(info.dtype))
        return arr.reshape((stop - start,) + tuple(info.shape[1:]))

    def advise(self, name: str) -> None:
        """Ask the operating system to start reading one tensor's bytes into its cache in
        the background (a read-ahead that costs this process neither memory nor time).
        Only for local safetensors files; a no-op where the system has no such call."""
        info = self.tensors.get(name)
        if info is None or info.offset is None or self.remote or self._closed or \
                not hasattr(os, "posix_fadvise"):
            return
        try:
            fd = os.open(info.file, os.O_RDONLY)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, info.offset, info.nbytes, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def read_raw(self, name: str) -> bytes:
        """The exact stored bytes of one tensor (safetensors checkpoints only)."""
        info = self.info(name)
        if self.format != "safetensors":
            raise CheckpointError(E_READ, f"cannot read raw bytes of `{name}` from {self.name}: "
                                          "raw reads need safetensors weights, this checkpoint is .bin",
                                  "use read() instead")
        return bytes(self._read_bytes(info))

    def ensure_weights(self, *, allow_download: bool = True) -> None:
        """Make the weights readable: for a checkpoint opened from remote hub headers,
        fetch the weights (cache first, then download if allowed) and switch to the local
        files. No-op for checkpoints opened from local weights. Raises E403/E404/E405 as
        ``resolve`` does, and E412 if the downloaded tensors differ from the headers seen."""
        if not self.remote:
            return
        with self._lock:
            if not self.remote:
                return
            assert self.ref is not None
            root = resolve(self.ref, allow_download=allow_download)
            local = open_checkpoint(root, self.ref, allow_remote=False)
            before = {n: (t.shape, t.dtype) for n, t in self.tensors.items()}
            after = {n: (t.shape, t.dtype) for n, t in local.tensors.items()}
            if before != after:
                changed = sorted(set(before) ^ set(after)) or sorted(n for n in before if before[n] != after[n])
                raise CheckpointError(
                    E_READ, f"hub model {self.name} changed between check and download "
                            f"(tensor `{changed[0]}` differs)",
                    "pin the source to a commit with `@revision` and run again")
            self.root = local.root
            self.config = local.config
            self._config_bytes = local._config_bytes
            self.format = local.format
            self.tensors.clear()
            self.tensors.update(local.tensors)
            self.metadata_files = local.metadata_files
            self._files = local._files
            self.remote = False

    def _read_bytes(self, info: TensorInfo) -> bytearray:
        if self._closed:
            raise CheckpointError(E_READ, f"checkpoint {self.name} is closed")
        if self.remote:
            self.ensure_weights()
            info = self.info(info.name)
        try:
            if info.offset is not None:
                return weight_files.read_span(info.file, info.offset, info.nbytes)
            state = self._bin_state(info.file)
            try:
                tensor = state[info.name]
            except KeyError:
                raise CheckpointError(E_READ, f"tensor `{info.name}` disappeared from {info.file}",
                                      "the file changed after it was opened") from None
            return weight_files.read_span(info.file, None, info.nbytes, tensor=tensor)
        except CheckpointError:
            raise
        except EOFError:
            raise CheckpointError(
                E_TRUNCATED, f"{info.file} is shorter than when it was opened: cannot read `{info.name}`",
                REDOWNLOAD) from None
        except OSError as e:
            raise CheckpointError(E_READ, f"cannot read `{info.name}` from {info.file}: {e.strerror or e}") from None
        except Exception as e:
            raise CheckpointError(E_READ, f"cannot read `{info.name}` from {info.file}: {e}") from None

    def _bin_state(self, path: Path) -> dict:
        with self._lock:
            state = self._bin_cache.get(path)
            if state is None:
                state = weight_files.load_bin(path)
                self._bin_cache[path] = state
            return state

    # -- identity
    def fingerprint(self) -> str:
        """Short hex id of this checkpoint, computed without reading tensor data.

        Hashes the config.json bytes and, per weight file, its name and header entries
        (tensor names, dtypes, shapes, data offsets) plus the data length (safetensors)
        or file size (``.bin``). A hub checkpoint fingerprinted from remote headers gives
        the same value as the downloaded copy of the same commit.
        """
        h = hashlib.sha256()
        h.update(b"mergec-checkpoint-v1\0")
        h.update(self.format.encode())
        h.update(b"\0config\0")
        h.update(self._config_bytes or b"<none>")
        for f in self._files:
            h.update(f"\0file\0{f.name}\0{f.kind}\0{f.data_length}\0{f.size}\0".encode())
            h.update(json.dumps([list(e) for e in f.entries], separators=(",", ":")).encode())
        return h.hexdigest()[:16]

    def content_fingerprint(self, samples: int = 16, block: int = 1 << 16) -> str:
        """Like ``fingerprint`` but also over tensor bytes: ``samples`` blocks of ``block``
        bytes at evenly spaced places of every weight file (all of a small file). Tells
        apart fine-tunes that share every header; reads at most samples * block bytes per
        file, so it is for build time (the model card), not for checking."""
        if self.remote:
            return self.fingerprint()
        h = hashlib.sha256()
        h.update(self.fingerprint().encode())
        for f in self._files:
            path = self.root / f.name
            size = path.stat().st_size
            if size <= samples * block:
                spans = [(0, size)]
            else:
                step = (size - block) // (samples - 1)
                spans = [(i * step, block) for i in range(samples)]
            for off, n in spans:
                h.update(bytes(weight_files.read_span(path, off, n)))
        return h.hexdigest()[:16]

    # -- lifetime
    def close(self) -> None:
        """Drop memory-mapped .bin state dicts. Reading after close is an error."""
        with self._lock:
            self._bin_cache.clear()
        self._closed = True

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- opening


def _read_config(root: Path) -> tuple[dict | None, bytes | None]:
    path = root / "config.json"
    try:
        if not path.is_file():
            return None, None
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(E_CONFIG, f"cannot read {path}: {e.strerror or e}") from None
    try:
        config = load_json(data.decode("utf-8"), path)
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(E_CONFIG, f"{path} is not valid JSON ({e})",
                              "restore config.json from the original model") from None
    if not isinstance(config, dict):
        raise CheckpointError(E_CONFIG, f"{path} is not a JSON object",
                              "restore config.json from the original model")
    return config, data


def _list_metadata_files(root: Path) -> list[Path]:
    out = []
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError:
        return out
    for p in entries:
        n = p.name
        if n.startswith(".") or n == "config.json" or n.endswith(".index.json"):
            continue
        if n.lower().endswith(_WEIGHT_SUFFIXES):
            continue
        try:
            if p.is_file():
                out.append(p)
        except OSError:
            continue
    return out


def _read_index(path: Path) -> dict[str, str]:
    try:
        data = load_json(path.read_text(encoding="utf-8"), path)
    except OSError as e:
        raise CheckpointError(E_INDEX, f"cannot read index {path}: {e.strerror or e}") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(E_INDEX, f"index {path} is not valid JSON ({e})", REDOWNLOAD) from None
    wm = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wm, dict) or not wm:
        raise CheckpointError(E_INDEX, f"index {path} has no `weight_map`", REDOWNLOAD)
    for k, v in wm.items():
        if not isinstance(v, str) or not v or os.path.isabs(v) or ".." in Path(v).parts:
            raise CheckpointError(E_INDEX, f"index {path} maps `{k}` to an invalid file name {v!r}")
    return wm


def _check_index_coverage(index_path: Path, wm: dict[str, str], found: dict[str, set[str]]) -> None:
    missing = [(t, f) for t, f in wm.items() if t not in found.get(f, ())]
    if missing:
        t, f = missing[0]
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(
            E_INDEX, f"index {index_path.name} lists tensor `{t}` in {index_path.parent / f}, "
                     f"but that file does not contain it{more}",
            "the shard and the index do not match: download the checkpoint again")


def _shard_list(root: Path, index_path: Path, wm: dict[str, str]) -> list[str]:
    shards = sorted(set(wm.values()))
    for s in shards:
        if not (root / s).is_file():
            raise CheckpointError(
                E_INDEX, f"shard {root / s} listed in {index_path.name} is missing",
                "the download is incomplete: download the checkpoint again")
    return shards


def _no_weights(root: Path) -> CheckpointError:
    expected = f"{SAFETENSORS_SINGLE}, {SAFETENSORS_INDEX}, {BIN_SINGLE} or {BIN_INDEX}"
    try:
        names = sorted(p.name for p in root.iterdir())
    except OSError:
        names = []
    if "adapter_config.json" in names:
        return CheckpointError(
            E_NO_WEIGHTS, f"no model weights in {root}: it holds a LoRA adapter (adapter_config.json)",
            "declare it with `adapter` (applied to its base model) instead of as a model")
    others = [n for n in names if n.endswith((".safetensors", ".bin", ".pt", ".pth", ".gguf"))]
    help = f"expected {expected}"
    if others:
        help += f"; found only {', '.join(others[:5])}"
        if any(n.endswith(".safetensors") for n in others):
            help += " (sharded safetensors need model.safetensors.index.json)"
    return CheckpointError(E_NO_WEIGHTS, f"no weights file in {root}", help)


def open_checkpoint(root: Path, ref: SourceRef | None = None, *, allow_remote: bool = True) -> Checkpoint:
    """Open the checkpoint in folder ``root``, reading config.json and weight headers only.

    If ``root`` lacks a complete set of weight files but ``ref`` is a hub source
    (typically ``root`` came from ``resolve_metadata``), the safetensors headers are read
    from the hub instead (``open_remote_headers``) unless ``allow_remote`` is false.
    Raises CheckpointError only.
    """
    try:
        return _open_checkpoint(Path(root), ref, allow_remote)
    except CheckpointError:
        raise
    except OSError as e:
        where = e.filename or root
        raise CheckpointError(E_READ, f"cannot read {where}: {e.strerror or e}") from None
    except (KeyError, ValueError) as e:  # defensive: malformed files not caught above
        raise CheckpointError(E_CORRUPT_HEADER, f"cannot open checkpoint {root}: {e}") from None


def _open_checkpoint(root: Path, ref: SourceRef | None, allow_remote: bool) -> Checkpoint:
    try:
        if not root.is_dir():
            raise CheckpointError(E_SOURCE_MISSING, f"model folder {root} does not exist or is not a directory")
    except OSError as e:
        raise CheckpointError(E_SOURCE_MISSING, f"cannot access model folder {root}: {e.strerror or e}") from None
    if ref is not None and not ref.local and allow_remote and not weights_present(root):
        # a hub snapshot without (complete) weights: read the headers from the hub
        return open_remote_headers(ref, root)
    config, config_bytes = _read_config(root)
    metadata_files = _list_metadata_files(root)
    tensors: dict[str, TensorInfo] = {}
    files: list[WeightFile] = []

    def add(infos: list[TensorInfo], where: Path) -> None:
        for info in infos:
            if info.name in tensors:
                raise CheckpointError(
                    E_INDEX, f"tensor `{info.name}` appears in both {tensors[info.name].file.name} "
                             f"and {where.name} in {root}",
                    "the checkpoint's shards overlap: download it again")
            tensors[info.name] = info

    if (root / SAFETENSORS_SINGLE).is_file():
        fmt = "safetensors"
        infos, rec = parse_safetensors_header(root / SAFETENSORS_SINGLE, SAFETENSORS_SINGLE)
        add(infos, root / SAFETENSORS_SINGLE)
        files.append(rec)
    elif (root / SAFETENSORS_INDEX).is_file():
        fmt = "safetensors"
        index_path = root / SAFETENSORS_INDEX
        wm = _read_index(index_path)
        found: dict[str, set[str]] = {}
        for shard in _shard_list(root, index_path, wm):
            infos, rec = parse_safetensors_header(root / shard, shard)
            found[shard] = {i.name for i in infos}
            add([i for i in infos if wm.get(i.name) == shard], root / shard)
            rec.entries = [e for e in rec.entries if wm.get(e[0]) == shard]
            files.append(rec)
        _check_index_coverage(index_path, wm, found)
    elif (root / BIN_SINGLE).is_file() or (root / BIN_INDEX).is_file():
        fmt = "bin"
        if (root / BIN_SINGLE).is_file():
            shards, wm, index_path = [BIN_SINGLE], None, None
        else:
            index_path = root / BIN_INDEX
            wm = _read_index(index_path)
            shards = _shard_list(root, index_path, wm)
        found = {}
        for shard in shards:
            path = root / shard
            state = weight_files.load_bin(path)
            infos = weight_files.bin_infos(path, state)
            del state  # reopened lazily on the first read
            found[shard] = {i.name for i in infos}
            if wm is not None:
                infos = [i for i in infos if wm.get(i.name) == shard]
            add(infos, path)
            try:
                size = path.stat().st_size
            except OSError:
                size = None
            files.append(WeightFile(name=shard, kind="bin",
                                     entries=[(i.name, i.dtype, i.shape) for i in infos],
                                     data_length=None, size=size))
        if wm is not None:
            _check_index_coverage(index_path, wm, found)
    else:
        raise _no_weights(root)

    return Checkpoint(ref=ref, root=root, config=config, config_bytes=config_bytes, format=fmt,
                      tensors=tensors, metadata_files=metadata_files, files=files)


class _NotSafetensorsRepo(CheckpointError):
    """The hub repo has no safetensors weights (headers cannot be read remotely)."""


def open_remote_headers(ref: SourceRef, root: Path | None = None) -> Checkpoint:
    """Open a hub checkpoint whose weights are not downloaded, from remote headers.

    ``root`` is the metadata folder (``resolve_metadata(ref)`` when omitted). The
    safetensors headers are fetched with ``huggingface_hub``'s
    ``get_safetensors_metadata`` (HTTP range requests, a few KB per shard) at the commit
    of the cached snapshot. The result has ``remote=True``: tensor infos have
    ``offset=None``; the first ``read``/``read_raw`` (or ``ensure_weights()``) fetches the
    weights (cache first, then a download) and switches to them. ``fingerprint()`` matches
    the one of the downloaded checkpoint. Hub repos with only ``.bin`` weights cannot be
    inspected this way (E406: their weights must be downloaded).
    """
    if ref.local:
        raise CheckpointError(E_NO_WEIGHTS, f"{ref.display()} is a local folder: remote headers need a hub source")
    if root is None:
        root = resolve_metadata(ref)
    root = Path(root)
    if hub_offline():
        raise CheckpointError(
            E_HUB_UNAVAILABLE,
            f"hub model `{ref.hub_label()}`: weights not in the local cache and hub access is disabled "
            "(HF_HUB_OFFLINE)",
            f"unset HF_HUB_OFFLINE, or download the model once while online (`hf download {ref.repo_id}`)")
    config, config_bytes = _read_config(root)
    revision = snapshot_commit(root) or ref.revision
    try:
        from huggingface_hub import HfApi
        api = HfApi(endpoint=hub_endpoint())
        meta = api.get_safetensors_metadata(ref.repo_id, revision=revision, timeout=hub_timeout())
    except Exception as e:
        name = type(e).__name__
        if name == "NotASafetensorsRepoError":
            raise _NotSafetensorsRepo(
                E_NO_WEIGHTS,
                f"hub model `{ref.hub_label()}` has no safetensors weights, so its headers cannot be read "
                "without downloading (it may have only .bin weights)",
                "allow downloads so the weights can be fetched, or download it once "
                f"(`hf download {ref.repo_id}`)") from None
        if name == "SafetensorsParsingError":
            raise CheckpointError(E_CORRUPT_HEADER,
                                  f"hub model `{ref.hub_label()}`: cannot parse a safetensors header ({e})") from None
        raise map_hub_error(ref, e, "weights") from None
    tensors: dict[str, TensorInfo] = {}
    files: list[WeightFile] = []
    try:
        weight_map = dict(meta.weight_map)
        for fname in sorted(meta.files_metadata):
            fmeta = meta.files_metadata[fname]
            entries = []
            infos = []
            for tname, t in fmeta.tensors.items():
                if meta.sharded and weight_map.get(tname) != fname:
                    continue
                try:
                    dtype = dtypes.from_safetensors(t.dtype)
                except ValueError:
                    raise CheckpointError(
                        E_DTYPE, f"tensor `{tname}` in `{ref.hub_label()}` ({fname}) has dtype {t.dtype}, "
                                 "which mergec does not support") from None
                shape = tuple(int(d) for d in t.shape)
                begin, end = (int(x) for x in t.data_offsets)
                numel = 1
                for d in shape:
                    numel *= d
                if end - begin != numel * dtypes.itemsize(dtype):
                    raise CheckpointError(
                        E_CORRUPT_HEADER, f"hub model `{ref.hub_label()}` ({fname}): tensor `{tname}` "
                                          "has data_offsets that do not match its shape and dtype")
                entries.append((tname, dtype, shape, begin, end))
                infos.append(TensorInfo(name=tname, shape=shape, dtype=dtype, file=root / fname,
                                        offset=None, nbytes=end - begin))
            order = sorted(range(len(entries)), key=lambda i: (entries[i][3], entries[i][4]))
            for i in order:
                tensors[infos[i].name] = infos[i]
            entries = [entries[i] for i in order]
            data_length = max((e[4] for e in entries), default=0)
            files.append(WeightFile(name=fname, kind="safetensors", entries=entries, data_length=data_length))
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(E_CORRUPT_HEADER,
                              f"hub model `{ref.hub_label()}`: unexpected safetensors metadata ({e})") from None
    return Checkpoint(ref=ref, root=root, config=config, config_bytes=config_bytes, format="safetensors",
                      tensors=tensors, metadata_files=_list_metadata_files(root), files=files, remote=True)


def open_input(raw: str, base_dir: Path, *, allow_download: bool = True,
               download_weights: bool = False) -> Checkpoint:
    """Parse a recipe's source string and open it: ``parse_source`` + resolve + open.

    Local folders are opened directly. Hub repos: with ``download_weights`` the weights
    are resolved (cache first, download if needed) before opening; otherwise only the
    config/index/tokenizer files are resolved and, when the weights are not cached, the
    headers are read remotely, so checking a recipe downloads no safetensors weights (the
    first ``read`` then fetches them); a hub repo with only ``.bin`` weights is downloaded
    here, since its tensor table cannot be read remotely. Raises CheckpointError.
    """
    ref = parse_source(raw, Path(base_dir))
    if ref.local or download_weights:
        return open_checkpoint(resolve(ref, allow_download=allow_download), ref, allow_remote=False)
    root = resolve_metadata(ref, allow_download=allow_download)
    try:
        return open_checkpoint(root, ref, allow_remote=True)
    except _NotSafetensorsRepo:
        if not allow_download:
            raise
        # only .bin weights (or none): their tensor table needs the files themselves
        return open_checkpoint(resolve(ref, allow_download=True), ref, allow_remote=False)
