"""A tiny sentence-transformers model made by the tests: a BertModel of hidden size 32,
mean pooling and normalization, saved with sentence-transformers' own `save`."""

from __future__ import annotations

from pathlib import Path

WORDS = ["hello", "world", "merge", "model", "tiny", "test", "vector", "space", "cat", "dog"]


def make_st_model(root: Path, seed: int, *, pooling: str = "mean", normalize: bool = True,
                  dense: bool = False, position_ids: bool = True) -> Path:
    import torch
    from safetensors.torch import load_file, save_file
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = Path(root)
    tmp = root.parent / (root.name + "-parts")
    tmp.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (tmp / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp / "vocab.txt"))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=16)
    BertModel(cfg).save_pretrained(tmp / "bert")
    tok.save_pretrained(tmp / "bert")
    word = models.Transformer(str(tmp / "bert"), max_seq_length=16)
    mods = [word, models.Pooling(32, pooling_mode=pooling)]
    if dense:
        mods.append(models.Dense(32, 8, activation_function=torch.nn.Tanh()))
    if normalize:
        mods.append(models.Normalize())
    SentenceTransformer(modules=mods, device="cpu").save(str(root))
    if position_ids:  # as checkpoints saved by older transformers versions hold it
        w = load_file(str(root / "model.safetensors"))
        w["embeddings.position_ids"] = torch.arange(16, dtype=torch.int64)[None, :]
        save_file(w, str(root / "model.safetensors"), metadata={"format": "pt"})
    return root


SENTENCES = ["hello world", "tiny merge model", "cat and dog vector space"]


def encode(folder: Path):
    from sentence_transformers import SentenceTransformer

    m = SentenceTransformer(str(folder), device="cpu")
    return m, m.encode(SENTENCES, convert_to_numpy=True)
