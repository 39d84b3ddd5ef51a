"""Output vocabularies: which token every embedding and head row of the output is, and
the inputs' embedding and head tensors read with their rows in that order.

Token identity comes from each input's `tokenizer.json` (read with the `tokenizers`
library): a token is its string. The output vocabulary is one input's (`set vocab =
"NAME"`) or the union of all inputs' (`set vocab = "union"`: the first model's tokens keep
their ids, the tokens it lacks follow in the order of the inputs, then of their ids).
An input is read through a :class:`VocabView`: its embedding and head tensors have one
row per output token, the input's own row where it has the token and a fill row where it
does not (`set vocab_fill`); rows added by `set pad_to_multiple_of` are zero in every
input. Every other tensor is read as stored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mergec import arch
from mergec.io import dtypes

FILLS = ("others", "zero", "mean", "base")


@dataclass
class InputVocab:
    """One input's tokens: token -> id, and its added tokens (content -> special)."""

    ids: dict[str, int]
    added: dict[str, bool]
    tokenizer: object  # tokenizers.Tokenizer


def read_vocab(root: Path) -> InputVocab:
    """The tokens of the tokenizer.json in `root` (raises OSError or ValueError)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(root) / "tokenizer.json"))
    ids = tok.get_vocab(with_added_tokens=True)
    added = {t.content: bool(t.special) for t in tok.get_added_tokens_decoder().values()}
    return InputVocab(ids, added, tok)


def vocab_tensors(tensors: dict) -> list[str]:
    """The tensors with one row per token (embeddings, output heads)."""
    return [n for n, t in tensors.items() if arch.is_vocab_tensor(n) and len(t.shape) == 2]


@dataclass
class VocabPlan:
    """The output vocabulary and how each input's rows map onto it."""

    mode: str  # "union" or the name of the input whose vocabulary the output has
    fill: str
    base: str  # the input whose tokens keep their ids
    tokens: list[str | None]  # the output's tokens by id (before padding; None: a gap)
    size: int  # rows of the output's embedding and head (tokens, padded)
    tokenizer: object  # the output's tokenizers.Tokenizer
    vocabs: dict[str, InputVocab]
    #: input -> output row -> input row (-1: the input lacks the token)
    index: dict[str, np.ndarray] = field(default_factory=dict)
    views: dict[str, "VocabView"] = field(default_factory=dict)
    #: name -> the input's view, where `views` lacks it (a Ray worker opens inputs itself)
    opener: object = None

    def view(self, name: str) -> "VocabView":
        got = self.views.get(name)
        return got if got is not None else self.opener(name)

    def portable(self) -> "VocabPlan":
        """The plan without its tokenizers and opened inputs: what a worker process needs
        to read the inputs' rows (pickled with the inputs' specs)."""
        return VocabPlan(self.mode, self.fill, self.base, self.tokens, self.size, None,
                         {n: InputVocab(v.ids, v.added, None) for n, v in self.vocabs.items()},
                         dict(self.index))

    def missing(self, name: str) -> int:
        """How many of the output's tokens input `name` lacks."""
        real = np.array([t is not None for t in self.tokens], dtype=bool)
        return int((self.index[name][:len(self.tokens)][real] < 0).sum())

    def tokenizer_json(self) -> str:
        return self.tokenizer.to_str(pretty=True)


def plan_vocab(mode: str, fill: str, multiple: int, vocabs: dict[str, InputVocab]) -> VocabPlan:
    """The output vocabulary of the inputs `vocabs` (in recipe order)."""
    from tokenizers import AddedToken

    base = next(iter(vocabs)) if mode == "union" else mode
    bv = vocabs[base]
    tok = type(bv.tokenizer).from_str(bv.tokenizer.to_str())
    if mode == "union":
        have = set(bv.ids)
        for name, v in vocabs.items():
            for t, _ in sorted(v.ids.items(), key=lambda kv: kv[1]):
                if t not in have:
                    have.add(t)
                    tok.add_tokens([AddedToken(t, special=v.added.get(t, False),
                                               normalized=not v.added.get(t, False))])
    inv = {i: t for t, i in tok.get_vocab(with_added_tokens=True).items()}
    # by id; an id no token has (a gap) is None: a fill row in every input
    tokens = [inv.get(i) for i in range(max(inv) + 1)] if inv else []
    n = len(tokens)
    size = -(-n // multiple) * multiple
    plan = VocabPlan(mode, fill, base, tokens, size, tok, vocabs)
    for name, v in vocabs.items():
        idx = np.full(size, -1, dtype=np.int64)
        for row, t in enumerate(tokens):
            idx[row] = v.ids.get(t, -1) if t is not None else -1
        plan.index[name] = idx
    return plan


class VocabView:
    """An input checkpoint whose embedding and head tensors have the output's rows; every
    other attribute and tensor is the checkpoint's own."""

    def __init__(self, ckpt, name: str, plan: VocabPlan):
        self._ckpt, self._name, self._plan = ckpt, name, plan
        self.remapped = set(vocab_tensors(ckpt.tensors))
        self.tensors = {n: (replace(t, shape=(plan.size,) + tuple(t.shape[1:]), offset=None,
                                    nbytes=t.nbytes // t.shape[0] * plan.size)
                            if n in self.remapped else t)
                        for n, t in ckpt.tensors.items()}
        self._cache: dict[str, np.ndarray] = {}
        plan.views[name] = self

    @property
    def vocab_plan(self) -> VocabPlan:
        return self._plan

    def __getattr__(self, attr):
        if attr.startswith("__") or attr in ("_ckpt", "_name", "_plan", "_cache"):
            raise AttributeError(attr)  # not set yet (while unpickling)
        return getattr(self._ckpt, attr)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __len__(self) -> int:
        return len(self.tensors)

    def info(self, name: str):
        return self.tensors[name] if name in self.remapped else self._ckpt.info(name)

    def own_rows(self, name: str) -> np.ndarray:
        """The input's stored rows as float32 (cached: a head is also read as a fill)."""
        a = self._cache.get(name)
        if a is None:
            a = self._cache[name] = self._ckpt.read(name).astype(np.float32)
        return a

    def remapped_float32(self, name: str) -> np.ndarray:
        p = self._plan
        idx = p.index[self._name]
        own = self.own_rows(name)
        out = np.zeros((p.size,) + own.shape[1:], dtype=np.float32)
        has = idx >= 0
        out[has] = own[idx[has]]
        lack = np.flatnonzero(~has[:len(p.tokens)])
        if lack.size and p.fill == "mean":
            real = np.array(sorted(p.vocabs[self._name].ids.values()), dtype=np.int64)
            out[lack] = own[real].mean(axis=0, dtype=np.float64).astype(np.float32)
        elif lack.size and p.fill in ("others", "base"):
            names = [p.base] if p.fill == "base" else [n for n in p.index if n != self._name]
            acc = np.zeros((lack.size,) + own.shape[1:], dtype=np.float64)
            count = np.zeros(lack.size, dtype=np.int64)
            for other in names:
                oidx = p.index[other][lack]
                ok = oidx >= 0
                if not ok.any():
                    continue
                rows = p.view(other).own_rows(name)[oidx[ok]]
                acc[ok] += rows
                count[ok] += 1
            got = count > 0
            out[lack[got]] = (acc[got] / count[got][:, None]).astype(np.float32)
        return out

    def read(self, name: str) -> np.ndarray:
        if name not in self.remapped:
            return self._ckpt.read(name)
        dt = dtypes.numpy_dtype(self.tensors[name].dtype)
        return self.remapped_float32(name).astype(dt)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        if name not in self.remapped:
            return self._ckpt.read_rows(name, start, stop)
        return self.read(name)[start:stop]

    def read_raw(self, name: str) -> bytes:
        if name not in self.remapped:
            return self._ckpt.read_raw(name)
        return self.read(name).tobytes()

    def content_fingerprint(self) -> str:
        """The input's fingerprint and the vocabulary plan (every input's row map and the
        fill: a fill row is read from the other inputs), so an incremental build does
        not reuse embeddings read with another vocabulary."""
        import hashlib

        p = self._plan
        h = hashlib.sha256(f"{self._ckpt.content_fingerprint()}\0{self._name}\0{p.fill}"
                           f"\0{p.size}\0".encode())
        for name in p.index:
            h.update(name.encode() + b"\0" + p.index[name].tobytes())
            h.update(p.view(name)._ckpt.content_fingerprint().encode())
        return h.hexdigest()

    def advise(self, name: str) -> None:
        if name not in self.remapped:
            self._ckpt.advise(name)


def tokenizer_config(plan: VocabPlan, source: Path | None) -> str:
    """tokenizer_config.json of the output: the one of `source` (the output's tokenizer
    input: chat template, special tokens, class), with the added tokens of the output."""
    cfg = {}
    p = Path(source) / "tokenizer_config.json" if source is not None else None
    if p is not None and p.is_file():
        cfg = json.loads(p.read_text(encoding="utf-8"))
    dec = {}
    for i, t in sorted(plan.tokenizer.get_added_tokens_decoder().items()):
        dec[str(i)] = {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized,
                       "rstrip": t.rstrip, "single_word": t.single_word, "special": t.special}
    cfg["added_tokens_decoder"] = dec
    return json.dumps(cfg, indent=2, ensure_ascii=False) + "\n"
