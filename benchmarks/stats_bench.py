"""Time `mergec stats` on a model of all-MiniLM-L6-v2's shape (BERT, 6 layers, hidden 384,
12 heads, MLP 1536, vocabulary 30522; 22.7 M parameters plus a 4-class head), randomly
initialized, on 30-token texts: Gram and Fisher statistics, wall and CPU time, peak memory.

    python benchmarks/stats_bench.py [--examples 64] [--work benchmarks/work/stats]

Runs offline: the model, its tokenizer (a word-level vocabulary) and the data are made
here. The cost depends on the shape and the token count, not on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def make(work: Path, n: int) -> None:
    import torch
    import transformers

    if (work / "mini" / "model.safetensors").is_file():
        return
    words = [f"w{i}" for i in range(2000)]
    (work / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                                              + words) + "\n")
    tok = transformers.BertTokenizer(vocab_file=str(work / "vocab.txt"))
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                                  num_attention_heads=12, intermediate_size=1536,
                                  max_position_embeddings=512, num_labels=4)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(cfg).save_pretrained(work / "mini")
    tok.save_pretrained(work / "mini")
    r = random.Random(0)
    with open(work / "data.jsonl", "w") as f:
        for i in range(max(n, 256)):
            text = " ".join(r.choice(words) for _ in range(30))
            f.write(json.dumps({"text": text, "label": i % 4}) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "stats")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    make(args.work, args.examples)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for kind in ("gram", "fisher"):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mergec.cli", "stats", str(args.work / "mini"),
                        "--data", str(args.work / "data.jsonl"), "--kind", kind, "--out",
                        str(args.work / kind), "--force", "-q", "--max-examples",
                        str(args.examples), "--batch-size", "16"], env=env, check=True)
        wall = time.perf_counter() - t
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        print(f"{kind}: {args.examples} examples, wall {wall:.1f} s, cpu {cpu:.1f} s, "
              f"peak RSS {after.ru_maxrss / 1024:.0f} MiB (largest child so far)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
