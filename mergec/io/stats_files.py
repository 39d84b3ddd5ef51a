"""Statistics folders: the data-dependent inputs of Fisher merging and RegMean.

A statistics folder (``docs/stats.md`` is the specification) holds ``stats.json`` and the
tensors as a safetensors checkpoint (``model.safetensors``, or shards with
``model.safetensors.index.json``), float32:

* ``"kind": "fisher"`` — one tensor per parameter, with the parameter's name and shape
  (the diagonal of the Fisher information);
* ``"kind": "gram"`` — for each linear weight ``X.weight`` of shape ``[out, in]``, a tensor
  ``X.weight`` of shape ``[in, in]``: ``X^T X / n`` over the layer's inputs.

``stats.json`` names the model the statistics were computed on by its fingerprint
(:func:`model_fingerprint`): a digest of the model's tensor names and shapes, which the
checker compares with a model's headers without reading a weight. Opening a folder reads
``stats.json`` and the safetensors headers only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergec.io.errors import CheckpointError

#: the file that describes a statistics folder
STATS_JSON = "stats.json"
#: the kinds of statistics, and what each holds
KINDS = ("fisher", "gram")
#: the version of the folder format written in stats.json ("format")
FORMAT = "mergec-stats/1"
#: a statistics folder that cannot be opened or whose stats.json is not valid
E_STATS = "E450"
#: the largest stats.json read, in bytes (a real one is a few hundred)
MAX_STATS_JSON = 1 << 20


def model_fingerprint(shapes: Iterable[tuple[str, Iterable[int]]]) -> str:
    """The fingerprint of a model from its tensor names and shapes: the sha256, in
    lowercase hex, of the UTF-8 text made of one line ``NAME<TAB>D0,D1,...<LF>`` per
    tensor, sorted by name (a 0-d tensor has an empty shape list). Storage dtypes are left
    out: statistics computed on a float32 copy serve the bfloat16 original."""
    lines = sorted(f"{name}\t{','.join(str(int(d)) for d in shape)}\n" for name, shape in shapes)
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


def checkpoint_fingerprint(tensors: Mapping[str, Any]) -> str:
    """:func:`model_fingerprint` of a tensor table (name -> anything with ``.shape``)."""
    return model_fingerprint((n, t.shape) for n, t in tensors.items())


@dataclass
class StatsFolder:
    """An opened statistics folder: what stats.json says and the tensors' headers."""

    root: Path
    kind: str
    examples: int
    model: str
    meta: dict = field(repr=False)
    checkpoint: Any = field(repr=False)  # mergec.io.checkpoint.Checkpoint

    @property
    def tensors(self) -> dict:
        return self.checkpoint.tensors

    @property
    def name(self) -> str:
        return str(self.root)

    def read(self, name: str):
        return self.checkpoint.read(name)

    def read_rows(self, name: str, start: int, stop: int):
        return self.checkpoint.read_rows(name, start, stop)

    def fingerprint(self) -> str:
        """The folder's tensor files by their headers (as for a checkpoint)."""
        return self.checkpoint.fingerprint()

    def content_fingerprint(self) -> str:
        """Also over sampled tensor bytes: what incremental builds and the model card key
        the statistics by."""
        return self.checkpoint.content_fingerprint()


def _bad(root: Path, why: str, help: str | None = None) -> CheckpointError:
    return CheckpointError(E_STATS, f"statistics folder {root}: {why}",
                           help or "see docs/stats.md for the format; `mergec stats` writes it")


def read_stats_json(root: Path) -> dict:
    """The validated contents of ``root/stats.json``."""
    path = root / STATS_JSON
    try:
        if not root.is_dir():
            raise CheckpointError(E_STATS, f"statistics folder {root} does not exist or is "
                                  "not a directory",
                                  "compute statistics with `mergec stats MODEL --data FILE "
                                  "--kind fisher|gram --out DIR`")
        if not path.is_file():
            raise _bad(root, f"no {STATS_JSON}")
        if path.stat().st_size > MAX_STATS_JSON:
            raise _bad(root, f"{STATS_JSON} is larger than 1 MiB")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise _bad(root, f"cannot read {STATS_JSON}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise _bad(root, f"{STATS_JSON} is not UTF-8 text") from None
    try:
        meta = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise _bad(root, f"{STATS_JSON} is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(meta, dict):
        raise _bad(root, f"{STATS_JSON} is not a JSON object")
    kind = meta.get("kind")
    if kind not in KINDS:
        raise _bad(root, f'{STATS_JSON}: "kind" is {json.dumps(kind)}, expected "fisher" '
                   'or "gram"')
    ex = meta.get("examples")
    if isinstance(ex, bool) or not isinstance(ex, int) or ex < 1:
        raise _bad(root, f'{STATS_JSON}: "examples" is {json.dumps(ex)}, expected a whole '
                   "number >= 1")
    model = meta.get("model")
    if not isinstance(model, str) or len(model) != 64 or any(
            c not in "0123456789abcdef" for c in model):
        raise _bad(root, f'{STATS_JSON}: "model" is not a model fingerprint (64 lowercase '
                   "hex digits)")
    return meta


def open_stats(raw: str, base_dir: Path) -> StatsFolder:
    """Open the statistics folder ``raw`` (a path, relative to ``base_dir``): stats.json
    and the safetensors headers. Raises CheckpointError (E450, or the E4xx of a broken
    safetensors file)."""
    from mergec.io.checkpoint import open_checkpoint  # the checkpoint reader, on first use

    root = Path(raw).expanduser()
    if not root.is_absolute():
        root = Path(base_dir) / root
    meta = read_stats_json(root)
    ckpt = open_checkpoint(root, None, allow_remote=False)
    if ckpt.format != "safetensors":
        raise _bad(root, "the tensors are not in safetensors files")
    for name, info in ckpt.tensors.items():
        if info.dtype != "float32":
            raise _bad(root, f"tensor `{name}` is {info.dtype}; statistics are float32")
    return StatsFolder(root, meta["kind"], int(meta["examples"]), meta["model"], meta, ckpt)


def write_stats(out: Path, kind: str, examples: int, model: str,
                tensors: Mapping[str, Any], extra: Mapping[str, Any] | None = None, *,
                force: bool = False) -> Path:
    """Write a statistics folder atomically: ``tensors`` (name -> float32 numpy array) as
    safetensors and ``stats.json``."""
    import numpy as np

    from mergec.io.writer import OutputWriter  # the atomic writer, on first use

    if kind not in KINDS:
        raise ValueError(f"unknown kind of statistics {kind!r}")
    meta = {"format": FORMAT, "kind": kind, "examples": int(examples), "model": model}
    meta.update(extra or {})
    arrays = {n: np.ascontiguousarray(np.asarray(a, dtype=np.float32))
              for n, a in tensors.items()}
    bad = [n for n, a in arrays.items() if not bool(np.isfinite(a).all())]
    if bad:
        raise CheckpointError(E_STATS, f"statistics of `{bad[0]}` are not finite numbers",
                              "the model produced inf or nan on the data: check the data "
                              "and the model's dtype")
    w = OutputWriter(Path(out), [(n, tuple(a.shape), "float32") for n, a in arrays.items()],
                     force=force)
    try:
        for n, a in arrays.items():
            w.write(n, a)
        w.add_file(STATS_JSON, json.dumps(meta, indent=2, sort_keys=False) + "\n")
        return w.commit()
    except BaseException:
        w.abort()
        raise

