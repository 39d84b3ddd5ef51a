"""`mergec stats`: the statistics of a model on a little data, for Fisher merging and RegMean.

Runs a Hugging Face transformers model (torch) over a data file of texts and writes a
statistics folder (docs/stats.md, :mod:`mergec.io.stats_files`):

* ``kind="gram"`` — a forward pre-hook on every ``nn.Linear`` sums ``x^T x`` over the
  rows of its inputs (one row per token that is not padding, or per example for a layer
  that sees one vector per example, such as a classifier): each batch's in float32, their
  sum in float64; the Gram matrix is that sum divided by the number of rows.
* ``kind="fisher"`` — the diagonal Fisher information: for each example, the gradient of
  the log-likelihood ``log p(y | x)`` of its targets, squared, averaged over the examples.
  The targets are drawn from the model's own predictive distribution (``"sampled"``, the
  Fisher itself, one draw per prediction) or taken from the data (``"empirical"``: the
  labels of a classifier, the next tokens of the text for a causal LM, the tokens
  themselves for a masked LM). A sequence's log-likelihood is the sum over its tokens.

Tensors are named as in the model's checkpoint (module parameter names are matched to the
checkpoint's tensor names, which may lack or add a prefix such as ``transformer.``), and the
folder records the checkpoint's fingerprint. torch and transformers are imported when a
computation starts.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergec.io.errors import CheckpointError

#: the data file cannot be read or has no usable examples
E_DATA = "E451"
#: the model cannot be run for these statistics (libraries, loading, no head for Fisher)
E_MODEL = "E452"
#: an option of `mergec stats` is not valid
E_OPTION = "E453"

KINDS = ("fisher", "gram")
FISHER_MODES = ("sampled", "empirical")
#: longest line or field of a data file read
MAX_FIELD = 1 << 24

ProgressFn = Callable[[int, int], None]  # (examples done, examples in all)


class StatsError(CheckpointError):
    """A problem of `mergec stats`, reported as one diagnostic."""


@dataclass(frozen=True)
class Example:
    text: str
    label: Any = None
    line: int = 0


@dataclass(frozen=True)
class StatsResult:
    out: Path
    kind: str
    examples: int
    tensors: int
    rows: int  # tokens (or examples) the Gram matrices were summed over; 0 for Fisher
    seconds: float


# Data ---------------------------------------------------------------------------------


def read_examples(path: Path, text_field: str = "text", label_field: str = "label",
                  limit: int | None = None) -> list[Example]:
    """The examples of a JSONL file (one object per line) or a CSV file with a header
    row, by its suffix (``.jsonl``/``.json``: JSONL; ``.csv``: CSV)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".csv"):
        raise StatsError(E_DATA, f"data file {path}: unknown format `{path.suffix or '(none)'}`",
                         "use a .jsonl file (one JSON object per line) or a .csv file with "
                         "a header row")
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = _csv_rows(f, path) if suffix == ".csv" else _jsonl_rows(f, path)
            out = []
            for line, row in rows:
                out.append(_example(path, line, row, text_field, label_field))
                if limit is not None and len(out) >= limit:
                    break
    except OSError as e:
        raise StatsError(E_DATA, f"cannot read data file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise StatsError(E_DATA, f"data file {path} is not UTF-8 text") from None
    if not out:
        raise StatsError(E_DATA, f"data file {path} has no examples",
                         f"each line (row) needs a non-empty `{text_field}`")
    return out


def _jsonl_rows(f, path: Path) -> Iterator[tuple[int, dict]]:
    for i, line in enumerate(f, 1):
        if not line.strip():
            continue
        if len(line) > MAX_FIELD:
            raise StatsError(E_DATA, f"{path}:{i}: the line is longer than 16 MiB")
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise StatsError(E_DATA, f"{path}:{i}: not valid JSON ({getattr(e, 'msg', e)})",
                             "a JSONL file has one JSON object per line") from None
        if not isinstance(row, dict):
            raise StatsError(E_DATA, f"{path}:{i}: not a JSON object",
                             'write each example as {"text": "...", "label": ...}')
        yield i, row


def _csv_rows(f, path: Path) -> Iterator[tuple[int, dict]]:
    csv.field_size_limit(MAX_FIELD)
    try:
        reader = csv.DictReader(f)
        for row in reader:
            yield reader.line_num, row
    except csv.Error as e:
        raise StatsError(E_DATA, f"{path}: not valid CSV ({e})") from None


def _example(path: Path, line: int, row: dict, text_field: str, label_field: str) -> Example:
    text = row.get(text_field)
    if not isinstance(text, str) or not text.strip():
        have = ", ".join(f"`{k}`" for k in list(row)[:5] if k is not None) or "none"
        raise StatsError(E_DATA, f"{path}:{line}: no text in `{text_field}` (fields: {have})",
                         "name the text field with `--text-field`")
    label = row.get(label_field)
    if isinstance(label, str) and not label.strip():
        label = None
    return Example(text, label, line)


# The model ------------------------------------------------------------------------------


def _libraries():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise StatsError(E_MODEL, f"`mergec stats` needs torch and transformers ({e})",
                         "install them with `pip install 'mergec[data]'`") from None
    return torch, transformers


def load_model(root: Path, device: str):
    """The model of checkpoint folder ``root`` (its architecture's class when transformers
    has it, else AutoModel), float32, in eval mode, and its tokenizer."""
    torch, transformers = _libraries()
    transformers.utils.logging.disable_progress_bar()  # mergec draws its own
    try:
        config = transformers.AutoConfig.from_pretrained(str(root))
        arch = (getattr(config, "architectures", None) or [None])[0]
        cls = getattr(transformers, arch, None) if arch else None
        cls = cls or transformers.AutoModel
        model = cls.from_pretrained(str(root), dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(root))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise StatsError(E_MODEL, f"cannot load the model in {root} with transformers: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                         "the folder needs config.json, the weights and tokenizer files "
                         "that transformers can load") from None
    model.to(device)
    model.eval()
    return model, tokenizer


def resolve_device(device: str) -> str:
    torch, _ = _libraries()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise StatsError(E_OPTION, f"`--device {device}`: no CUDA device here",
                             "use `--device cpu` (or `auto`)")
        return device
    raise StatsError(E_OPTION, f"unknown device `{device}`", "use cpu, cuda, cuda:N or auto")


def name_map(param_names, tensor_names) -> dict[str, str]:
    """Module parameter name -> checkpoint tensor name: the same name, the name without
    leading components the checkpoint lacks (``transformer.h.0...`` -> ``h.0...``), or the
    one checkpoint name that ends with it (the checkpoint adds a prefix)."""
    tensors = set(tensor_names)
    by_suffix: dict[str, list[str]] = {}
    for t in tensors:
        parts = t.split(".")
        for k in range(1, len(parts)):
            by_suffix.setdefault(".".join(parts[k:]), []).append(t)
    out = {}
    for p in param_names:
        if p in tensors:
            out[p] = p
            continue
        parts = p.split(".")
        hit = next((".".join(parts[k:]) for k in range(1, len(parts))
                    if ".".join(parts[k:]) in tensors), None)
        if hit is None and len(by_suffix.get(p, [])) == 1:
            hit = by_suffix[p][0]
        if hit is not None:
            out[p] = hit
    return out


def _is_causal(model) -> bool:
    cfg = model.config
    arch = ((getattr(cfg, "architectures", None) or [""])[0]) or type(model).__name__
    return bool(getattr(cfg, "is_decoder", False)) or arch.endswith(("ForCausalLM",
                                                                     "LMHeadModel"))


def _label_id(model, ex: Example, path: Path) -> int:
    n = int(getattr(model.config, "num_labels", 0) or 0)
    lab = ex.label
    if lab is None:
        raise StatsError(E_DATA, f"{path}:{ex.line}: no label, which `--fisher empirical` "
                         "needs for a classifier", "add a `label` to every example, name "
                         "its field with `--label-field`, or use `--fisher sampled`")
    if isinstance(lab, str):
        l2i = getattr(model.config, "label2id", None) or {}
        if lab in l2i:
            return int(l2i[lab])
        try:
            lab = int(lab)
        except ValueError:
            raise StatsError(E_DATA, f"{path}:{ex.line}: unknown label `{lab}`",
                             "labels are the model's label names (config.json label2id) "
                             "or class numbers") from None
    if isinstance(lab, bool) or not isinstance(lab, int) or not 0 <= lab < n:
        raise StatsError(E_DATA, f"{path}:{ex.line}: label {json.dumps(lab)} is not a class "
                         f"of this model (0 to {n - 1})")
    return lab


# Statistics ---------------------------------------------------------------------------


def compute(model_source: str, data: Path, kind: str, out: Path, *,
            fisher: str = "sampled", max_examples: int | None = None, batch_size: int = 8,
            device: str = "cpu", max_length: int = 512, text_field: str = "text",
            label_field: str = "label", seed: int = 0, force: bool = False,
            base_dir: Path | None = None, progress: ProgressFn | None = None) -> StatsResult:
    """Compute the statistics of model ``model_source`` (a folder or hub id, as in a
    recipe) on ``data`` and write them to ``out``."""
    import time

    from mergec.io import open_input
    from mergec.io.stats_files import checkpoint_fingerprint, write_stats

    start = time.perf_counter()
    if kind not in KINDS:
        raise StatsError(E_OPTION, f"unknown kind of statistics `{kind}`",
                         "use `--kind fisher` or `--kind gram`")
    if fisher not in FISHER_MODES:
        raise StatsError(E_OPTION, f"unknown Fisher estimate `{fisher}`",
                         "use `--fisher sampled` or `--fisher empirical`")
    for flag, v in (("--max-examples", max_examples), ("--batch-size", batch_size),
                    ("--max-length", max_length)):
        if v is not None and v < 1:
            raise StatsError(E_OPTION, f"`{flag} {v}`: must be at least 1")
    ckpt = open_input(model_source, Path(base_dir or Path.cwd()), download_weights=True)
    fingerprint = checkpoint_fingerprint(ckpt.tensors)
    examples = read_examples(Path(data), text_field, label_field, max_examples)
    torch, _ = _libraries()
    dev = resolve_device(device)
    model, tokenizer = load_model(Path(ckpt.root), dev)
    limit = max_length
    mpe = getattr(model.config, "max_position_embeddings", None)
    if isinstance(mpe, int) and mpe > 0:
        limit = min(limit, mpe)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    names = name_map([n for n, _ in model.named_parameters()], ckpt.tensors)
    torch.manual_seed(seed)
    gen = torch.Generator(device=dev).manual_seed(seed)
    total = len(examples)
    if progress:
        progress(0, total)
    used = total  # examples the statistics average over
    if kind == "gram":
        tensors, rows = _gram(torch, model, tokenizer, examples, names, batch_size, limit,
                              dev, progress, total)
    else:
        tensors, used = _fisher(torch, model, tokenizer, examples, names, fisher, limit, dev,
                                gen, progress, total, Path(data))
        rows = 0
    if not tensors and kind == "gram":
        raise StatsError(E_MODEL, f"the model has no `nn.Linear` layer whose weight is a tensor "
                         f"of {ckpt.name}",
                         "GPT-2's Conv1D layers are not `nn.Linear` and get no Gram matrix "
                         "(docs/stats.md); a tied head has no weight of its own")
    if not tensors:
        raise StatsError(E_MODEL, f"no parameter of the model matches a tensor of {ckpt.name}",
                         "the module's parameter names and the checkpoint's tensor names "
                         "differ beyond a prefix")
    for name, t in tensors.items():
        want = tuple(ckpt.tensors[name].shape)
        want = (want[1], want[1]) if kind == "gram" else want
        if tuple(t.shape) != want:  # e.g. a weight stored [in, out] (GPT-2's Conv1D)
            raise StatsError(E_MODEL, f"`{name}`: statistics of shape {list(t.shape)}, the "
                             f"checkpoint's tensor needs {list(want)}")
    extra = {"data": str(data), "source": model_source, "max_length": limit}
    if kind == "gram":
        extra["rows"] = rows
    else:
        extra["fisher"] = fisher
    written = write_stats(Path(out), kind, used, fingerprint, tensors, extra, force=force)
    return StatsResult(written, kind, used, len(tensors), rows,
                       time.perf_counter() - start)


def _batches(items, n):
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _encode(tokenizer, texts, limit, dev):
    enc = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                    max_length=limit)
    return {k: v.to(dev) for k, v in enc.items()}


def _gram(torch, model, tokenizer, examples, names, batch_size, limit, dev, progress, total):
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    state: dict[str, Any] = {"mask": None}
    hooks = []

    def hook_for(wname: str):
        def hook(module, args):
            x = args[0].detach()
            mask = state["mask"]
            if mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
                x = x[mask.bool()]
            x = x.reshape(-1, x.shape[-1]).to(torch.float32)
            g = (x.T @ x).to(torch.float64)  # a batch in float32, the sum over batches in 64
            sums[wname] = g if wname not in sums else sums[wname] + g
            counts[wname] = counts.get(wname, 0) + x.shape[0]
        return hook

    for mname, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            pname = f"{mname}.weight" if mname else "weight"
            if pname in names:
                hooks.append(module.register_forward_pre_hook(hook_for(names[pname])))
    done = 0
    try:
        with torch.no_grad():
            for batch in _batches(examples, batch_size):
                enc = _encode(tokenizer, [e.text for e in batch], limit, dev)
                state["mask"] = enc.get("attention_mask")
                model(**enc)
                done += len(batch)
                if progress:
                    progress(done, total)
    finally:
        for h in hooks:
            h.remove()
    out = {n: (sums[n] / counts[n]).to(torch.float32).cpu().numpy() for n in sums
           if counts[n] > 0}
    rows = max(counts.values()) if counts else 0
    return out, rows


def _log_likelihood(torch, model, enc, ex, mode, gen, path):
    """log p(y | x) of one example (a sum over its predictions), as a torch scalar."""
    outputs = model(**enc)
    logits = getattr(outputs, "logits", None)
    if logits is None:
        raise StatsError(E_MODEL, "the model has no head that makes predictions (no logits), "
                         "so it has no Fisher information",
                         "compute Gram statistics (`--kind gram`), or load a model with its "
                         "head (a classifier or a language model)")
    logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
    if logp.dim() == 2:  # a classifier: [1, classes]
        if mode == "sampled":
            y = torch.multinomial(logp.exp()[0].float(), 1, generator=gen)[0]
        else:
            y = torch.tensor(_label_id(model, ex, path), device=logp.device)
        return logp[0, y]
    # a language model: [1, tokens, vocab]
    ids = enc["input_ids"][0]
    lp = logp[0]
    if _is_causal(model):
        lp, ids = lp[:-1], ids[1:]
    if lp.shape[0] == 0:
        return None
    if mode == "sampled":
        y = torch.multinomial(lp.exp().float(), 1, generator=gen)[:, 0]
    else:
        y = ids
    return lp.gather(1, y[:, None]).sum()


def _fisher(torch, model, tokenizer, examples, names, mode, limit, dev, gen, progress,
            total, path):
    params = [(names[n], p) for n, p in model.named_parameters()
              if n in names and p.requires_grad]
    sums = {t: torch.zeros_like(p, dtype=torch.float32) for t, p in params}
    used = 0
    for done, ex in enumerate(examples, 1):
        enc = _encode(tokenizer, [ex.text], limit, dev)
        model.zero_grad(set_to_none=True)
        ll = _log_likelihood(torch, model, enc, ex, mode, gen, path)
        if ll is not None:
            grads = torch.autograd.grad(ll, [p for _, p in params], allow_unused=True)
            for (t, _), g in zip(params, grads):
                if g is not None:
                    sums[t].addcmul_(g, g)  # in place: no temporaries of the model's size
            used += 1
        if progress:
            progress(done, total)
    if used == 0:
        raise StatsError(E_DATA, f"data file {path}: no example has a prediction to score",
                         "a causal LM needs texts of at least two tokens")
    return {t: (s / used).cpu().numpy() for t, s in sums.items()}, used
