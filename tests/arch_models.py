"""Tiny random-weight transformers models made by the tests (a few thousand parameters
each), saved with `save_pretrained`, and the checks every merged output must pass: it
loads with `from_pretrained` with no missing or unexpected keys and runs a forward pass."""

from __future__ import annotations

from pathlib import Path

TINY = dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, vocab_size=64)


def _configs():
    import transformers as tf

    llama = dict(TINY, num_hidden_layers=4, num_key_value_heads=1, max_position_embeddings=64)
    return {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(llama, tie_word_embeddings=False)),
        "llama_tied": (tf.LlamaConfig, tf.LlamaForCausalLM, dict(llama, tie_word_embeddings=True)),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, dict(llama, sliding_window=8)),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, dict(llama, tie_word_embeddings=False)),
        "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM, dict(llama, pad_token_id=0, bos_token_id=1, eos_token_id=2)),
        "mixtral": (tf.MixtralConfig, tf.MixtralForCausalLM,
                    dict(llama, num_local_experts=2, num_experts_per_tok=1)),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, dict(llama, head_dim=8)),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM,
                   dict(llama, head_dim=8, sliding_window=8,
                        layer_types=["sliding_attention", "full_attention"] * 2)),
        "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel,
                 dict(n_embd=16, n_layer=4, n_head=2, vocab_size=64, n_positions=64,
                      bos_token_id=1, eos_token_id=2)),
        "gpt_neox": (tf.GPTNeoXConfig, tf.GPTNeoXForCausalLM,
                     dict(TINY, num_hidden_layers=4, max_position_embeddings=64,
                          tie_word_embeddings=False)),
        "bert": (tf.BertConfig, tf.BertForMaskedLM,
                 dict(TINY, num_hidden_layers=4, max_position_embeddings=64)),
        "roberta": (tf.RobertaConfig, tf.RobertaForMaskedLM,
                    dict(TINY, num_hidden_layers=4, max_position_embeddings=72, pad_token_id=1)),
        "vit": (tf.ViTConfig, tf.ViTForImageClassification,
                dict(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                     num_hidden_layers=4, image_size=8, patch_size=4, num_labels=3)),
        "t5": (tf.T5Config, tf.T5ForConditionalGeneration,
               dict(d_model=16, d_ff=32, d_kv=8, num_heads=2, num_layers=3,
                    num_decoder_layers=2, vocab_size=64, decoder_start_token_id=0,
                    tie_word_embeddings=False)),
        "whisper": (tf.WhisperConfig, tf.WhisperForConditionalGeneration,
                    dict(d_model=16, encoder_layers=2, decoder_layers=3,
                         encoder_attention_heads=2, decoder_attention_heads=2,
                         encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=64,
                         num_mel_bins=8, max_source_positions=16, max_target_positions=32,
                         decoder_start_token_id=1, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, suppress_tokens=[], begin_suppress_tokens=[])),
        "clip": (tf.CLIPConfig, tf.CLIPModel,
                 dict(text_config=dict(hidden_size=16, intermediate_size=32,
                                       num_attention_heads=2, num_hidden_layers=2,
                                       vocab_size=64, max_position_embeddings=16,
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0),
                      vision_config=dict(hidden_size=16, intermediate_size=32,
                                         num_attention_heads=2, num_hidden_layers=3,
                                         image_size=8, patch_size=4),
                      projection_dim=8)),
        "llava": (tf.LlavaConfig, tf.LlavaForConditionalGeneration,
                  dict(vision_config=dict(model_type="clip_vision_model", hidden_size=16,
                                          intermediate_size=32, num_attention_heads=2,
                                          num_hidden_layers=3, image_size=8, patch_size=4),
                       text_config=dict(llama, model_type="llama"), image_token_index=63,
                       vision_feature_layer=-1)),
    }


KINDS = ("llama", "llama_tied", "mistral", "mixtral", "qwen2", "phi3", "gemma", "gemma2",
         "gpt2", "gpt_neox", "bert", "roberta", "vit", "t5", "whisper", "clip", "llava")


def make_model(kind: str, root: Path, seed: int) -> Path:
    import torch

    cfg_cls, model_cls, kw = _configs()[kind]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**kw)).eval()
    model.save_pretrained(str(root))
    return Path(root)


def model_class(kind: str):
    return _configs()[kind][1]


def example_inputs(kind: str) -> dict:
    import torch

    ids = torch.tensor([[1, 5, 9, 12, 3, 7]])
    if kind == "t5":
        return {"input_ids": ids, "decoder_input_ids": ids[:, :4]}
    if kind == "whisper":
        g = torch.Generator().manual_seed(0)
        return {"input_features": torch.randn(1, 8, 32, generator=g),
                "decoder_input_ids": ids[:, :4]}
    if kind == "clip":
        g = torch.Generator().manual_seed(0)
        return {"input_ids": ids, "pixel_values": torch.randn(1, 3, 8, 8, generator=g)}
    if kind == "vit":
        g = torch.Generator().manual_seed(0)
        return {"pixel_values": torch.randn(1, 3, 8, 8, generator=g)}
    if kind == "llava":  # 4 image tokens: the 2x2 patches of an 8x8 image
        g = torch.Generator().manual_seed(0)
        return {"input_ids": torch.tensor([[1, 63, 63, 63, 63, 5, 9]]),
                "pixel_values": torch.randn(1, 3, 8, 8, generator=g)}
    return {"input_ids": ids}


def load_checked(kind: str, folder: Path):
    """Load an output with `from_pretrained`: no missing, unexpected or mismatched keys."""
    model, info = model_class(kind).from_pretrained(str(folder), output_loading_info=True)
    for key in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        assert not info.get(key), f"{key}: {sorted(info[key])[:5]}"
    return model.eval()


def forward(kind: str, model):
    import torch

    with torch.no_grad():
        out = model(**example_inputs(kind))
    if kind == "clip":
        return out.logits_per_image
    return out.logits
