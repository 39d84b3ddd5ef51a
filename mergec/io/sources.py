"""Model sources: what a recipe writes to name a model, and where its files are.

A source is either a local folder or a Hugging Face Hub repository.

THE RULE. A source string is a *local directory* iff it starts with ``./``, ``../``,
``/`` or ``~`` (or is exactly ``.`` or ``..``). Relative local paths are resolved
against ``base_dir``, the folder holding the recipe file (not the current directory),
and ``~`` is expanded. *Anything else* is a hub repository id, ``name`` or
``owner/name``, optionally followed by ``@revision`` (a branch, tag or commit hash).
So ``ckpt/model`` is the hub repo ``ckpt/model``; write ``./ckpt/model`` for a folder.

Hub repositories are found cache first: if the requested files are already in the
local Hugging Face cache (``HF_HUB_CACHE``), nothing touches the network. Otherwise they
are downloaded when allowed, with short timeouts; every failure (offline, unreachable,
not found, gated) becomes a ``CheckpointError`` naming the repo and revision.
"""

from __future__ import annotations

# huggingface_hub (a few hundred milliseconds to import) is imported inside the functions
# that talk to the hub, so that recipes with local inputs never load it.

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from mergec.io.errors import (
    E_HUB_ACCESS, E_HUB_NOT_FOUND, E_HUB_UNAVAILABLE, E_SOURCE_INVALID, E_SOURCE_MISSING,
    CheckpointError,
)

MAX_REPO_ID_LENGTH = 96

# Files fetched for check-time work: configs, index files, tokenizer and chat template.
METADATA_PATTERNS: tuple[str, ...] = (
    "*.json",
    "tokenizer.model",
    "spiece.model",
    "merges.txt",
    "vocab.txt",
    "*.jinja",
    "*.tiktoken",
)

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

_NAME_PART = re.compile(r"^[A-Za-z0-9_.\-]+$")
_REVISION = re.compile(r"^[A-Za-z0-9_.\-/]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class SourceRef:
    """A parsed model source. ``local`` sources have ``path``; hub ones ``repo_id``."""

    raw: str
    local: bool
    path: Path | None
    repo_id: str | None
    revision: str | None
    # A folder that exists where the text would point if it were written as ``./raw``:
    # used only to suggest the ``./`` spelling in hub error messages.
    local_candidate: Path | None = field(default=None, compare=False, repr=False)

    def display(self) -> str:
        if self.local:
            return str(self.path)
        if self.revision:
            return f"{self.repo_id}@{self.revision}"
        return str(self.repo_id)

    def hub_label(self) -> str:
        """``owner/name@revision`` with the default branch spelled out."""
        return f"{self.repo_id}@{self.revision or 'main'}"


def is_local_spelling(raw: str) -> bool:
    """True when ``raw`` names a local directory under THE RULE (see module doc)."""
    return raw in (".", "..") or raw.startswith(("./", "../", "/", "~"))


def _invalid(raw: str, why: str, looks_like_path: bool) -> CheckpointError:
    if looks_like_path:
        fixed = raw.strip().replace("\\", "/")
        if not fixed.startswith("./"):
            fixed = "./" + fixed
        help = (f"to use a local folder, write `{fixed}` (local paths must start "
                f"with `./`, `../`, `/` or `~`; anything else is a Hugging Face Hub repo id)")
    else:
        help = ("a hub repo id is `name` or `owner/name` with letters, digits, `-`, `_`, `.`, "
                "optionally followed by `@revision`; local folders start with `./`, `../`, `/` or `~`")
    return CheckpointError(E_SOURCE_INVALID, f"invalid model source `{raw}`: {why}", help)


def _check_part(part: str) -> str | None:
    if not part:
        return "empty name"
    if not _NAME_PART.match(part):
        bad = sorted({c for c in part if not re.match(r"[A-Za-z0-9_.\-]", c)})
        return f"character(s) {' '.join(repr(c) for c in bad)} not allowed in a repo id"
    if "--" in part or ".." in part:
        return "`--` and `..` are not allowed in a repo id"
    if part[0] in "-." or part[-1] in "-.":
        return "a repo id part cannot start or end with `-` or `.`"
    return None


def parse_source(raw: str, base_dir: Path) -> SourceRef:
    """Parse a source string under THE RULE (see the module docstring).

    * ``./x``, ``../x``, ``/x``, ``~/x``, ``.``, ``..`` -> local folder; relative paths
      are resolved against ``base_dir`` (the recipe's folder), ``~`` is expanded.
    * otherwise -> hub repo ``name`` / ``owner/name`` with optional ``@revision``.

    Raises ``CheckpointError`` (E402) for an invalid repo id; when the text looks like a
    relative path (``ckpt/a/b``, backslashes) the help suggests writing ``./ckpt/a/b``.
    The folder's existence is not checked here (see ``resolve``).
    """
    if not isinstance(raw, str):
        raise CheckpointError(E_SOURCE_INVALID, f"invalid model source {raw!r}: expected text")
    text = raw.strip()
    if not text:
        raise CheckpointError(E_SOURCE_INVALID, "empty model source",
                              "write a hub repo id such as `owner/name` or a local folder such as `./model`")
    if is_local_spelling(text):
        p = Path(text).expanduser()
        if not p.is_absolute():
            p = Path(base_dir).expanduser() / p
        return SourceRef(raw=raw, local=True, path=Path(os.path.abspath(p)), repo_id=None, revision=None)

    for prefix in ("https://huggingface.co/", "http://huggingface.co/", "hf://", "https://hf.co/"):
        if text.startswith(prefix):
            rest = text[len(prefix):].strip("/")
            repo = "/".join(rest.split("/")[:2])
            raise CheckpointError(E_SOURCE_INVALID, f"invalid model source `{raw}`: a URL is not a repo id",
                                  f"write the hub repo id `{repo}` (optionally `{repo}@revision`)")
    repo_text, sep, revision = text.partition("@")
    looks_like_path = ("\\" in text or repo_text.count("/") > 1 or repo_text.endswith("/")
                       or repo_text.startswith(".") or ":" in repo_text)
    if sep:
        if not revision:
            raise _invalid(raw, "empty revision after `@`", False)
        if (not _REVISION.match(revision) or ".." in revision or revision.startswith("/")
                or revision.endswith("/") or "//" in revision):
            raise _invalid(raw, f"invalid revision `{revision}`", looks_like_path)
    if len(repo_text) > MAX_REPO_ID_LENGTH:
        raise _invalid(raw, f"repo id is longer than {MAX_REPO_ID_LENGTH} characters", looks_like_path)
    if "\\" in repo_text:
        raise _invalid(raw, "backslashes are not allowed in a repo id", True)
    parts = repo_text.split("/")
    if len(parts) > 2:
        raise _invalid(raw, "a repo id has at most one `/` (owner/name)", True)
    for part in parts:
        why = _check_part(part)
        if why:
            raise _invalid(raw, why, looks_like_path)
    candidate = None
    try:
        cand = Path(base_dir).expanduser() / repo_text
        if cand.is_dir():
            candidate = Path(os.path.abspath(cand))
    except OSError:
        candidate = None
    return SourceRef(raw=raw, local=False, path=None, repo_id=repo_text,
                     revision=revision if sep else None, local_candidate=candidate)


# --------------------------------------------------------------------------- hub plumbing


def _env_true(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether hub access is disabled (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``), read now."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        flag = _env_true(name)
        if flag is not None:
            return flag
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache folder, honouring the environment as it is now."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(name)
        if value:
            return Path(os.path.expandvars(os.path.expanduser(value)))
    home = os.environ.get("HF_HOME")
    if home:
        return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"
    try:
        from huggingface_hub import constants
        return Path(constants.HF_HUB_CACHE)
    except Exception:  # pragma: no cover
        return Path.home() / ".cache" / "huggingface" / "hub"


def hub_endpoint() -> str | None:
    value = os.environ.get("HF_ENDPOINT")
    return value.rstrip("/") if value else None


def hub_timeout() -> float:
    """Seconds to wait for the hub before giving up (``HF_HUB_ETAG_TIMEOUT``, default 10)."""
    try:
        value = float(os.environ.get("HF_HUB_ETAG_TIMEOUT", ""))
        if value > 0:
            return value
    except ValueError:
        pass
    return 10.0


def _download_hint(ref: SourceRef) -> str:
    rev = f" --revision {ref.revision}" if ref.revision else ""
    hint = (f"download it once while online (`hf download {ref.repo_id}{rev}`), "
            f"or point the recipe at a local copy (`./path`)")
    if ref.local_candidate is not None:
        hint = (f"did you mean the local folder? write `./{ref.raw}` (local paths start with "
                f"`./`); otherwise " + hint)
    return hint


def not_cached(ref: SourceRef, reason: str, what: str = "files") -> CheckpointError:
    """The error for hub files that are not cached and may not be fetched (`reason`:
    "offline", "no-download" or a short description of the hub failure)."""
    help = _download_hint(ref)
    if reason == "offline":
        msg = (f"hub model `{ref.hub_label()}`: {what} not in the local cache ({hub_cache_dir()}) "
               f"and hub access is disabled (HF_HUB_OFFLINE)")
        if ref.local_candidate is None:
            help = "unset HF_HUB_OFFLINE to allow downloads, or " + help
    elif reason == "no-download":
        msg = (f"hub model `{ref.hub_label()}`: {what} not in the local cache ({hub_cache_dir()}) "
               f"and downloads are disabled")
    else:
        msg = (f"hub model `{ref.hub_label()}`: {what} not in the local cache ({hub_cache_dir()}) "
               f"and the Hugging Face Hub cannot be reached ({reason})")
        help = "check the network connection, or " + help
    return CheckpointError(E_HUB_UNAVAILABLE, msg, help)


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0] if text else ""
    if len(first) > 160:
        first = first[:157] + "..."
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def map_hub_error(ref: SourceRef, error: BaseException, what: str = "files") -> CheckpointError:
    """Turn any exception from huggingface_hub into a CheckpointError."""
    if isinstance(error, CheckpointError):
        return error
    try:
        from huggingface_hub import errors as hf_errors
    except Exception:  # pragma: no cover
        hf_errors = None
    if hf_errors is not None:
        if isinstance(error, hf_errors.OfflineModeIsEnabled):
            return not_cached(ref, "offline", what)
        if isinstance(error, hf_errors.GatedRepoError):
            return CheckpointError(
                E_HUB_ACCESS, f"hub model `{ref.hub_label()}` is gated: access was refused",
                f"accept the model's conditions on its hub page, then log in with `hf auth login` "
                f"or set HF_TOKEN; or {_download_hint(ref)}")
        if isinstance(error, hf_errors.RevisionNotFoundError):
            return CheckpointError(
                E_HUB_NOT_FOUND,
                f"revision `{ref.revision or 'main'}` not found in hub repo `{ref.repo_id}`",
                "check the branch, tag or commit after `@`")
        if isinstance(error, hf_errors.RepositoryNotFoundError):
            help = ("check the spelling of the repo id; a private repo also needs `hf auth login` "
                    "or HF_TOKEN; local folders must start with `./`")
            if ref.local_candidate is not None:
                help = f"a local folder `{ref.raw}` exists next to the recipe: write `./{ref.raw}` to use it"
            return CheckpointError(
                E_HUB_NOT_FOUND, f"hub repo `{ref.repo_id}` not found (revision {ref.revision or 'main'})",
                help)
        if isinstance(error, hf_errors.HfHubHTTPError):
            status = getattr(getattr(error, "response", None), "status_code", None)
            if status in (401, 403):
                return CheckpointError(
                    E_HUB_ACCESS,
                    f"hub model `{ref.hub_label()}`: access refused (HTTP {status})",
                    "log in with `hf auth login` or set HF_TOKEN with access to this repo")
            if status == 404:
                return CheckpointError(
                    E_HUB_NOT_FOUND, f"hub repo `{ref.hub_label()}`: not found (HTTP 404)",
                    "check the repo id and revision")
            return not_cached(ref, _short(error), what)
    return not_cached(ref, _short(error), what)


def snapshot_cached(ref: SourceRef, patterns) -> Path | None:
    """The cached snapshot folder for ``ref`` (no network), or None."""
    try:
        from huggingface_hub import snapshot_download
        folder = snapshot_download(
            ref.repo_id, revision=ref.revision, cache_dir=str(hub_cache_dir()),
            local_files_only=True, allow_patterns=list(patterns))
    except Exception:
        return None
    p = Path(folder)
    return p if p.is_dir() else None


def probe_commit(ref: SourceRef) -> str:
    """Ask the hub (with a short timeout) which commit the revision points to."""
    from huggingface_hub import HfApi
    api = HfApi(endpoint=hub_endpoint())
    info = api.repo_info(ref.repo_id, revision=ref.revision, timeout=hub_timeout())
    sha = getattr(info, "sha", None)
    if not sha:
        raise CheckpointError(E_HUB_UNAVAILABLE,
                              f"hub model `{ref.hub_label()}`: the hub did not report a commit",
                              _download_hint(ref))
    return sha


def download(ref: SourceRef, commit: str, patterns) -> Path:
    """Fetch the files of ``ref`` at ``commit`` matching ``patterns`` into the hub cache."""
    from huggingface_hub import snapshot_download
    folder = snapshot_download(
        ref.repo_id, revision=commit, cache_dir=str(hub_cache_dir()),
        allow_patterns=list(patterns), etag_timeout=hub_timeout(), endpoint=hub_endpoint())
    return Path(folder)


def _read_weight_map(path: Path) -> list[str] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["weight_map"].values()
        return sorted({str(f) for f in files})
    except Exception:
        return None


def weights_present(folder: Path) -> bool:
    """Whether ``folder`` holds a complete set of weight files mergec can open."""
    try:
        if (folder / SAFETENSORS_SINGLE).is_file():
            return True
        for index in (SAFETENSORS_INDEX, BIN_INDEX):
            if (folder / index).is_file():
                shards = _read_weight_map(folder / index)
                return bool(shards) and all((folder / s).is_file() for s in shards)
        return (folder / BIN_SINGLE).is_file()
    except OSError:
        return False


def _weight_patterns(ref: SourceRef, folder: Path, commit: str) -> list[str]:
    """Exact weight file names to fetch, chosen from the index files or the repo listing."""
    listing: set[str] | None = None
    try:
        from huggingface_hub import get_cached_repo_tree
        listing = {f.path for f in get_cached_repo_tree(
            ref.repo_id, revision=commit, cache_dir=str(hub_cache_dir()))}
    except Exception:
        listing = None
    if listing is not None:
        if SAFETENSORS_SINGLE in listing:
            return [SAFETENSORS_SINGLE]
        if SAFETENSORS_INDEX in listing:
            return _read_weight_map(folder / SAFETENSORS_INDEX) or ["model-*-of-*.safetensors"]
        if BIN_SINGLE in listing:
            return [BIN_SINGLE]
        if BIN_INDEX in listing:
            return _read_weight_map(folder / BIN_INDEX) or ["pytorch_model-*-of-*.bin"]
        return []
    if (folder / SAFETENSORS_INDEX).is_file():
        return _read_weight_map(folder / SAFETENSORS_INDEX) or ["model-*-of-*.safetensors"]
    if (folder / BIN_INDEX).is_file():
        return _read_weight_map(folder / BIN_INDEX) or ["pytorch_model-*-of-*.bin"]
    return [SAFETENSORS_SINGLE]


def local_folder(ref: SourceRef) -> Path:
    """The folder of a local source; raises CheckpointError when it cannot be used."""
    path = ref.path
    assert path is not None
    try:
        if not path.exists():
            raise CheckpointError(
                E_SOURCE_MISSING, f"model folder {path} does not exist (from source `{ref.raw}`)",
                "relative paths are resolved against the recipe file's folder; "
                "point the source at the folder that holds config.json and the weights")
        if not path.is_dir():
            raise CheckpointError(
                E_SOURCE_MISSING, f"model source {path} is not a directory",
                "point the source at the folder that holds config.json and the weights, not a file")
    except OSError as e:
        raise CheckpointError(E_SOURCE_MISSING, f"cannot access model folder {path}: {e.strerror or e}") from None
    return path


def resolve(ref: SourceRef, *, allow_download: bool = True) -> Path:
    """The folder holding ``ref``'s config and weights.

    Local: the folder itself (E401 if missing or not a directory). Hub: the snapshot
    folder in the Hugging Face cache. The cache is tried first without any network
    access; only if the weights are not cached, and ``allow_download`` is true and
    ``HF_HUB_OFFLINE`` is not set, the config/tokenizer files and then the weight files
    (only one format: safetensors if the repo has them, else ``.bin``) are downloaded.
    Errors: E403 (not cached and offline/unreachable/downloads disabled), E404 (repo or
    revision not found), E405 (gated/private).
    """
    if ref.local:
        return local_folder(ref)
    cached = snapshot_cached(ref, METADATA_PATTERNS)
    if cached is not None and weights_present(cached):
        return cached
    if hub_offline():
        raise not_cached(ref, "offline", "weights")
    if not allow_download:
        raise not_cached(ref, "no-download", "weights")
    try:
        commit = probe_commit(ref)
        folder = download(ref, commit, METADATA_PATTERNS)
        patterns = _weight_patterns(ref, folder, commit)
        if patterns:
            folder = download(ref, commit, patterns)
    except CheckpointError:
        raise
    except Exception as e:  # anything from huggingface_hub or the network
        raise map_hub_error(ref, e, "weights") from None
    return folder


def resolve_metadata(ref: SourceRef, *, allow_download: bool = True) -> Path:
    """The folder holding ``ref``'s config.json, index and tokenizer files (no weights).

    For check-time use. Local sources behave like ``resolve``. Hub sources come from the
    cache when ``config.json`` is cached there, else are downloaded (config, ``*.json``,
    tokenizer files only) under the same rules and errors as ``resolve``. The returned
    snapshot folder also holds the weights when they happen to be cached.
    """
    if ref.local:
        return local_folder(ref)
    cached = snapshot_cached(ref, METADATA_PATTERNS)
    if cached is not None and (cached / "config.json").is_file():
        return cached
    if hub_offline():
        raise not_cached(ref, "offline", "config")
    if not allow_download:
        raise not_cached(ref, "no-download", "config")
    try:
        commit = probe_commit(ref)
        return download(ref, commit, METADATA_PATTERNS)
    except CheckpointError:
        raise
    except Exception as e:
        raise map_hub_error(ref, e, "config") from None


def snapshot_commit(folder: Path) -> str | None:
    """The commit hash of a hub cache snapshot folder (``.../snapshots/<hash>``), else None."""
    if folder.parent.name == "snapshots" and _COMMIT.match(folder.name):
        return folder.name
    return None
