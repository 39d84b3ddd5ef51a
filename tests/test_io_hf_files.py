import sys
import pathlib

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import pytest  # noqa: E402

from mergec.io.errors import CheckpointError  # noqa: E402
from mergec.io.hf_files import (  # noqa: E402
    TOKENIZER_FILES, carry_over_files, derive_config, layer_count, model_card, tokenizer_files,
    vocab_size,
)


def test_tokenizer_files(tmp_path):
    for name in ("vocab.json", "tokenizer.json", "merges.txt", "generation_config.json", "config.json"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in tokenizer_files(tmp_path)] == ["tokenizer.json", "vocab.json", "merges.txt"]
    assert [p.name for p in carry_over_files(tmp_path)] == \
        ["tokenizer.json", "vocab.json", "merges.txt", "generation_config.json"]
    assert "chat_template.jinja" in TOKENIZER_FILES and "tokenizer.model" in TOKENIZER_FILES


def test_derive_config_dtype():
    old = {"model_type": "llama", "num_hidden_layers": 4, "torch_dtype": "float32"}
    new = derive_config(old, dtype="bfloat16")
    assert new == {"model_type": "llama", "num_hidden_layers": 4, "torch_dtype": "bfloat16",
                   "dtype": "bfloat16"}
    assert old["torch_dtype"] == "float32"  # a copy
    assert derive_config({"dtype": "float32"}, dtype="fp16") == {"dtype": "float16"}
    assert derive_config({}, dtype="float32") == {"dtype": "float32"}
    nested = derive_config({"text_config": {"dtype": "float32", "num_hidden_layers": 2}}, dtype="bf16")
    assert nested == {"dtype": "bfloat16", "text_config": {"dtype": "bfloat16", "num_hidden_layers": 2}}


@pytest.mark.parametrize("key", ["num_hidden_layers", "n_layer", "num_layers", "n_layers"])
def test_derive_config_layers(key):
    new = derive_config({key: 4, "layer_types": ["full_attention"] * 4}, dtype="float16", num_layers=6)
    assert new[key] == 6
    assert new["layer_types"] == ["full_attention"] * 6
    assert new["dtype"] == "float16"


def test_derive_config_layers_nested_and_errors():
    cfg = {"text_config": {"num_hidden_layers": 3, "layer_types": ["a", "a", "a"]}, "vision_config": {}}
    new = derive_config(cfg, dtype="bfloat16", num_layers=2)
    assert new["text_config"] == {"num_hidden_layers": 2, "layer_types": ["a", "a"]}
    # unchanged count keeps a mixed list as is
    mixed = {"num_hidden_layers": 4, "layer_types": ["sliding", "sliding", "sliding", "full"]}
    assert derive_config(mixed, dtype="bfloat16", num_layers=4)["layer_types"] == mixed["layer_types"]
    with pytest.raises(CheckpointError) as ei:
        derive_config(mixed, dtype="bfloat16", num_layers=6)
    e = ei.value
    assert e.code == "E418" and "`layer_types`" in e.message and "from 4 to 6" in e.message
    assert "'sliding'" in e.message and "'full'" in e.message
    with pytest.raises(CheckpointError) as ei:
        derive_config({"hidden_size": 4}, dtype="bfloat16", num_layers=2)
    assert ei.value.code == "E418" and "layer-count key" in ei.value.message


def test_layer_count_and_vocab():
    assert layer_count({"num_hidden_layers": 32}) == 32
    assert layer_count({"n_layer": 12}) == 12
    assert layer_count({"text_config": {"num_hidden_layers": 26}, "vision_config": {"num_layers": 4}}) == 26
    assert layer_count({}) is None and layer_count(None) is None
    assert vocab_size({"vocab_size": 32000}) == 32000
    assert vocab_size({"text_config": {"vocab_size": 262144}}) == 262144
    assert vocab_size({"hidden_size": 3}) is None


def test_model_card():
    recipe = "model a = \"org/a\"\nmodel b = \"./local/b\"\noutput m = linear(a, b)\n"
    card = model_card(
        output_name="m", recipe_text=recipe, recipe_path="recipes/demo.merge",
        inputs=[{"name": "a", "source": "org/a@v1", "fingerprint": "0123abcd0123abcd"},
                {"name": "b", "source": "/abs/local/b", "fingerprint": "ffffeeeeddddcccc"}],
        mergec_version="0.1.0", seed=42, base_models=["org/a@v1", "./local/b", "/abs/local/b", "org/a"])
    assert card.startswith("---\nlibrary_name: transformers\ntags:\n- mergec\n- merge\nbase_model:\n- org/a\n---\n")
    front = card.split("---")[1]
    assert "local" not in front
    assert "# m" in card and "mergec 0.1.0" in card and "recipes/demo.merge" in card
    assert "| name | source | fingerprint |" in card
    assert "| a | org/a@v1 | `0123abcd0123abcd` |" in card
    assert "| b | /abs/local/b | `ffffeeeeddddcccc` |" in card
    assert "Random seed: `42`" in card
    assert "```merge\n" + recipe + "```\n" in card


def test_model_card_no_seed_no_hub_and_fences():
    recipe = "# a ``` inside\noutput m = a\n"
    card = model_card(output_name="x", recipe_text=recipe, recipe_path="r.merge", inputs=[],
                      mergec_version="0.1.0", seed=None, base_models=["./a"])
    assert "base_model" not in card and "seed" not in card.lower()
    assert "````merge\n" + recipe + "````\n" in card
