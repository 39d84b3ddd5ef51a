"""`mergec stats` on a tiny BERT classifier made by the test: Gram matrices against the
layer inputs computed independently, Fisher against its closed form at the classifier's
bias, the data-file diagnostics, and RegMean/Fisher merges of two such models built from
the statistics and loaded back with transformers."""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import numpy as np
import pytest

from mergec.statistics import StatsError, compute, name_map, read_examples

pytestmark = pytest.mark.torch

WORDS = "the a cat dog sat on mat ran fast slow big small red blue good bad".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Two BERT classifiers (hidden 32, 2 layers, 3 labels), a tokenizer, and data."""
    import torch
    import transformers

    d = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizer(vocab_file=str(d / "vocab.txt"))
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64, num_labels=3)
    for i, name in enumerate(("a", "b")):
        torch.manual_seed(i)
        transformers.BertForSequenceClassification(cfg).save_pretrained(d / name)
        tok.save_pretrained(d / name)
    r = random.Random(0)
    with open(d / "data.jsonl", "w") as f:
        for i in range(12):
            text = " ".join(r.choice(WORDS) for _ in range(r.randint(2, 9)))
            f.write(json.dumps({"text": text, "label": i % 3}) + "\n")
    return d


def load(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


@functools.lru_cache(maxsize=None)
def tokenizer(folder: str):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(folder)


def encode(d: Path, texts):
    return tokenizer(str(d / "a"))(texts, return_tensors="pt", padding=True, truncation=True, max_length=64)


def test_gram_matrices_are_those_of_the_layer_inputs(tiny, tmp_path):
    import torch
    import transformers

    res = compute(str(tiny / "a"), tiny / "data.jsonl", "gram", tmp_path / "g", batch_size=5)
    got = load(tmp_path / "g")
    meta = json.loads((tmp_path / "g" / "stats.json").read_text())
    texts = [e.text for e in read_examples(tiny / "data.jsonl")]
    model = transformers.BertForSequenceClassification.from_pretrained(str(tiny / "a"))
    model.eval()
    enc = encode(tiny, texts)
    with torch.no_grad():
        # the inputs of layer 0's query/key/value: the embeddings of the real tokens
        h = model.bert.embeddings(input_ids=enc["input_ids"],
                                  token_type_ids=enc["token_type_ids"])
        x = h[enc["attention_mask"].bool()].double().numpy()
        # the classifier's input: the pooled output, one row per example
        p = model.bert(**enc).pooler_output.double().numpy()
    q = "bert.encoder.layer.0.attention.self.query.weight"
    np.testing.assert_allclose(got[q], x.T @ x / len(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["bert.encoder.layer.0.attention.self.key.weight"],
                               got[q], rtol=0, atol=0)
    np.testing.assert_allclose(got["classifier.weight"], p.T @ p / len(p), rtol=1e-5,
                               atol=1e-6)
    linears = {f"{n}.weight" for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)}
    assert set(got) == linears
    assert (meta["kind"], meta["examples"], meta["rows"]) == ("gram", 12, len(x))
    assert res.rows == len(x) and res.tensors == len(linears)


def test_fisher_at_the_classifier_bias_is_the_closed_form(tiny, tmp_path):
    import torch
    import transformers

    compute(str(tiny / "a"), tiny / "data.jsonl", "fisher", tmp_path / "f",
            fisher="empirical")
    got = load(tmp_path / "f")
    model = transformers.BertForSequenceClassification.from_pretrained(str(tiny / "a"))
    model.eval()
    want = np.zeros(3)
    exs = read_examples(tiny / "data.jsonl")
    for e in exs:  # d log softmax(z)[y] / d bias = onehot(y) - softmax(z)
        with torch.no_grad():
            z = model(**encode(tiny, [e.text])).logits[0].double()
        g = -torch.softmax(z, -1).numpy()
        g[e.label] += 1.0
        want += g ** 2
    np.testing.assert_allclose(got["classifier.bias"], want / len(exs), rtol=1e-5)
    assert set(got) == {n for n, _ in model.named_parameters()}
    assert all(got[n].shape == tuple(p.shape) for n, p in model.named_parameters())


def test_sampled_fisher_is_seeded(tiny, tmp_path):
    for name in ("s1", "s2"):
        compute(str(tiny / "a"), tiny / "data.jsonl", "fisher", tmp_path / name,
                max_examples=4, seed=3)
    a, b = load(tmp_path / "s1"), load(tmp_path / "s2")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "s1" / "stats.json").read_text())["examples"] == 4


def test_regmean_and_fisher_merges_of_two_models_load_back(tiny, tmp_path):
    import torch
    import transformers

    from mergec.api import build

    for m in ("a", "b"):
        compute(str(tiny / m), tiny / "data.jsonl", "gram", tmp_path / f"g{m}")
        compute(str(tiny / m), tiny / "data.jsonl", "fisher", tmp_path / f"f{m}")
    (tmp_path / "r.merge").write_text(
        f'model a = "{tiny / "a"}"\nmodel b = "{tiny / "b"}"\n'
        'stats ga = "./ga"\nstats gb = "./gb"\nstats fa = "./fa"\nstats fb = "./fb"\n'
        "output rm = regmean(a, b, stats=[ga, gb], reduce=0.9, fallback=linear(a, b))\n"
        "output fm = fisher(a, b, stats=[fa, fb], fallback=linear(a, b))\n")
    res = build(tmp_path / "r.merge", tmp_path / "out")
    enc = encode(tiny, ["the cat sat on the mat"])
    for r in res:
        model = transformers.BertForSequenceClassification.from_pretrained(r.path)
        with torch.no_grad():
            assert torch.isfinite(model(**enc).logits).all()
    rm = load(Path(res[0].path))
    a, b = load(tiny / "a"), load(tiny / "b")
    w = "bert.encoder.layer.1.output.dense.weight"
    assert not np.allclose(rm[w], (a[w] + b[w]) / 2, atol=1e-4)  # not the fallback
    np.testing.assert_allclose(rm["classifier.bias"],
                               (a["classifier.bias"] + b["classifier.bias"]) / 2, rtol=1e-6)


def test_command_line_and_data_diagnostics(tiny, tmp_path, run_cli):
    code, out, err = run_cli("stats", str(tiny / "a"), "--data", str(tiny / "data.jsonl"),
                             "--kind", "gram", "--out", str(tmp_path / "g"), "-q",
                             "--max-examples", "3")
    assert code == 0, err
    assert out.startswith(f"wrote gram statistics: {tmp_path / 'g'} (14 tensors, 3 examples")
    (tmp_path / "bad.jsonl").write_text('{"text": "the cat"}\n[1, 2]\n')
    (tmp_path / "nolabel.csv").write_text("text,label\nthe cat,\n")
    cases = [
        (["--data", str(tmp_path / "bad.jsonl"), "--kind", "gram"],
         f"E451 {tmp_path / 'bad.jsonl'}:2: not a JSON object"),
        (["--data", str(tmp_path / "nolabel.csv"), "--kind", "fisher", "--fisher",
          "empirical"],
         f"E451 {tmp_path / 'nolabel.csv'}:2: no label, which `--fisher empirical` needs "
         "for a classifier"),
        (["--data", str(tiny / "data.jsonl"), "--kind", "hessian"],
         "E453 unknown kind of statistics `hessian`"),
        (["--data", str(tiny / "data.jsonl"), "--kind", "gram", "--text-field", "body"],
         f"E451 {tiny / 'data.jsonl'}:1: no text in `body` (fields: `text`, `label`)"),
    ]
    for args, want in cases:
        code, out, err = run_cli("stats", str(tiny / "a"), *args, "--out",
                                 str(tmp_path / "x"), "-q")
        assert code == 1, err
        assert err.splitlines()[0] == f"mergec: {want}"
        assert not (tmp_path / "x").exists()


def test_parameter_names_are_matched_to_checkpoint_names():
    ckpt = ["h.0.attn.c_attn.weight", "wte.weight", "lm_head.weight", "model.norm.weight"]
    params = ["transformer.h.0.attn.c_attn.weight", "transformer.wte.weight",
              "lm_head.weight", "norm.weight", "extra.weight"]
    assert name_map(params, ckpt) == {
        "transformer.h.0.attn.c_attn.weight": "h.0.attn.c_attn.weight",
        "transformer.wte.weight": "wte.weight", "lm_head.weight": "lm_head.weight",
        "norm.weight": "model.norm.weight"}


def test_examples_from_csv_and_jsonl(tmp_path):
    (tmp_path / "d.csv").write_text('text,label\n"a, b",1\nc,\n')
    assert [(e.text, e.label, e.line) for e in read_examples(tmp_path / "d.csv")] == [
        ("a, b", "1", 2), ("c", None, 3)]
    (tmp_path / "d.txt").write_text("x\n")
    with pytest.raises(StatsError) as info:
        read_examples(tmp_path / "d.txt")
    assert info.value.code == "E451"


def test_a_causal_lm_gram_and_fisher(tiny, tmp_path):
    """A 2-layer Llama (hidden 32): the Gram matrix of layer 0's q_proj is that of the
    normalized embeddings of the real tokens; Fisher covers every parameter, head
    included, with the checkpoint's names and shapes."""
    import torch
    import transformers

    tok = tokenizer(str(tiny / "a"))
    cfg = transformers.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32,
                                   intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    tok.save_pretrained(tmp_path / "llama")
    compute(str(tmp_path / "llama"), tiny / "data.jsonl", "gram", tmp_path / "g",
            batch_size=4)
    compute(str(tmp_path / "llama"), tiny / "data.jsonl", "fisher", tmp_path / "f",
            fisher="empirical", max_examples=3)
    g, f = load(tmp_path / "g"), load(tmp_path / "f")
    ckpt = load(tmp_path / "llama")
    model = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "llama"))
    enc = encode(tiny, [e.text for e in read_examples(tiny / "data.jsonl")])
    with torch.no_grad():
        h = model.model.layers[0].input_layernorm(model.model.embed_tokens(enc["input_ids"]))
    x = h[enc["attention_mask"].bool()].double().numpy()
    np.testing.assert_allclose(g["model.layers.0.self_attn.q_proj.weight"], x.T @ x / len(x),
                               rtol=1e-5, atol=1e-6)
    assert "lm_head.weight" in g and g["lm_head.weight"].shape == (32, 32)
    assert set(f) == set(ckpt) and all(f[k].shape == ckpt[k].shape for k in f)
    assert float(f["lm_head.weight"].sum()) > 0
